"""Networks on small configs: shapes, dtypes, attention properties, gradients, mixed precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf import losses
from mirrorgan_tf.config import load_config
from mirrorgan_tf.models.attention import SentenceAttention, WordAttention
from mirrorgan_tf.models.networks import build_networks
from tests.conftest import CONFIGS

VOCAB = 30
B, T = 4, 16


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIGS / "shapes_smoke.yaml")


@pytest.fixture(scope="module")
def nets(cfg):
    keras.utils.set_random_seed(0)
    return build_networks(cfg, VOCAB, batch=B)


def _captions(lengths=(3, 16, 7, 1)):
    rng = np.random.default_rng(0)
    ids = rng.integers(2, VOCAB, size=(B, T)).astype("int32")
    lengths = np.array(lengths, "int32")
    ids[np.arange(T)[None, :] >= lengths[:, None]] = 0
    return ids, lengths


def _forward(cfg, nets):
    ids, lengths = _captions()
    words, sentence, mask = nets.stem(ids, lengths)
    z = np.random.default_rng(1).normal(size=(B, cfg.model.z_dim)).astype("float32")
    return ids, lengths, words, sentence, mask, nets.glam(z, sentence, words, mask)


def test_every_output_has_its_shape_and_dtype(cfg, nets):
    ids, lengths, words, sentence, mask, out = _forward(cfg, nets)
    d = cfg.model.embedding_dim
    assert (tuple(words.shape), tuple(sentence.shape), tuple(mask.shape)) == ((B, T, d), (B, d), (B, T))
    assert words.dtype == sentence.dtype == "float32" and mask.dtype == "bool"
    assert [tuple(i.shape) for i in out["images"]] == [(B, s, s, 3) for s in cfg.image_sizes]
    assert all(i.dtype == "float32" and float(tf.reduce_max(tf.abs(i))) <= 1.0 for i in out["images"])
    assert [tuple(a.shape) for a in out["word_attention"]] == [(B, s, s, T) for s in cfg.image_sizes[:-1]]
    assert [tuple(a.shape) for a in out["sentence_attention"]] == [(B, s, s, cfg.model.gf_dim) for s in cfg.image_sizes[:-1]]
    assert tuple(out["mu"].shape) == tuple(out["logvar"].shape) == (B, cfg.model.condition_dim)
    regions, code = nets.damsm_image_encoder(out["images"][-1])
    assert regions.dtype == code.dtype == "float32" and tuple(code.shape) == (B, d)
    assert regions.shape[-1] == d and regions.shape[1] == cfg.damsm.image_size // 8
    for disc, image in zip(nets.discriminators, out["images"]):
        uncond, cond = disc(image, sentence)
        assert tuple(uncond.shape) == tuple(cond.shape) == (B,) and uncond.dtype == cond.dtype == "float32"
    features = nets.stream_encoder(out["images"][-1])
    assert tuple(features.shape) == (B, cfg.stream.embedding_dim) and features.dtype == "float32"
    logits = nets.stream_decoder(features, ids)
    assert tuple(logits.shape) == (B, T + 1, VOCAB) and logits.dtype == "float32"
    greedy = nets.stream_decoder.greedy(features)
    assert tuple(greedy.shape) == (B, cfg.stream.max_len) and greedy.dtype == "int32"


def test_stem_ignores_padding(nets):
    ids, lengths = _captions()
    words, sentence, _ = nets.stem(ids, lengths)
    assert float(tf.reduce_max(tf.abs(words[0, 3:]))) == 0.0
    # Same caption without its padding: same features (the backward LSTM starts at the last word).
    w1, s1, _ = nets.stem(ids[:1, :3], lengths[:1])
    np.testing.assert_allclose(s1.numpy(), sentence[:1].numpy(), atol=1e-6)
    np.testing.assert_allclose(w1.numpy(), words[:1, :3].numpy(), atol=1e-6)


def test_padded_words_get_exactly_zero_attention_and_rows_sum_to_one(cfg, nets):
    _, lengths, _, _, mask, out = _forward(cfg, nets)
    for attn in out["word_attention"]:
        a = attn.numpy()
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)  # over words, at every pixel
        for i, n in enumerate(lengths):
            assert (a[i, ..., n:] == 0.0).all()
            assert (a[i, ..., :n] > 0).all()
    for attn in out["sentence_attention"]:  # paper: over positions, for each channel
        np.testing.assert_allclose(attn.numpy().sum(axis=(1, 2)), 1.0, atol=1e-4)


def test_original_code_softmax_runs_over_channels():
    h = tf.random.normal((2, 5, 6, 8))
    sentence = tf.random.normal((2, 10))
    context, attn = SentenceAttention(8, "channels")(h, sentence)
    np.testing.assert_allclose(attn.numpy().sum(-1), 1.0, atol=1e-5)
    assert tuple(context.shape) == (2, 5, 6, 8)
    with pytest.raises(ValueError, match="softmax_over"):
        SentenceAttention(8, "pixels")


def test_word_attention_matches_numpy():
    layer = WordAttention(3)
    h = np.random.default_rng(2).normal(size=(1, 2, 2, 3)).astype("float32")
    words = np.random.default_rng(3).normal(size=(1, 4, 5)).astype("float32")
    mask = np.array([[True, True, True, False]])
    context, attn = layer(h, words, mask)
    e = words[0] @ layer.project.kernel.numpy()  # T x C
    logits = h[0].reshape(4, 3) @ e.T
    logits[:, 3] = -np.inf
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(attn.numpy().reshape(4, 4), expected, atol=1e-6)
    np.testing.assert_allclose(context.numpy().reshape(4, 3), expected @ e, atol=1e-5)


def test_stream_loss_trains_glam_and_leaves_stream_unchanged(cfg, nets):
    nets.stream_encoder.trainable = False
    nets.stream_decoder.trainable = False
    before = [w.numpy().copy() for w in nets.stream_encoder.weights + nets.stream_decoder.weights]
    glam_before = [w.numpy().copy() for w in nets.glam.trainable_weights]
    ids, lengths = _captions()
    words, sentence, mask = nets.stem(ids, lengths)
    z = tf.random.normal((B, cfg.model.z_dim))
    with tf.GradientTape() as tape:
        images = nets.glam(z, sentence, words, mask, training=True)["images"]
        loss = losses.stream_loss(nets.stream_encoder, nets.stream_decoder, images[-1], ids, lengths)
    grads = tape.gradient(loss, nets.glam.trainable_weights)
    # Everything on the path to the final image gets a gradient; only the lower stages' image
    # heads do not lie on it.
    lower_heads = {id(w) for head in nets.glam.heads[:-1] for w in head.trainable_weights}
    missing = [w.path for w, g in zip(nets.glam.trainable_weights, grads) if g is None and id(w) not in lower_heads]
    assert missing == []
    grads = [g if g is not None else tf.zeros_like(w) for w, g in zip(nets.glam.trainable_weights, grads)]
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads) > 0
    opt = keras.optimizers.Adam(1e-3)
    opt.apply_gradients(zip(grads, nets.glam.trainable_weights))
    assert not nets.stream_encoder.trainable_weights and not nets.stream_decoder.trainable_weights
    for b, w in zip(before, nets.stream_encoder.weights + nets.stream_decoder.weights):
        np.testing.assert_array_equal(b, w.numpy())  # BN moving statistics included
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(glam_before, nets.glam.trainable_weights))
    nets.stream_encoder.trainable = True
    nets.stream_decoder.trainable = True


def test_stream_floor_counts_only_what_is_above_each_examples_floor(cfg, nets):
    """train.stream_floor=real: each example counts max(0, CE - floor); examples at or under their
    floor add nothing and send no gradient to the generator, those above it the same gradient as
    the published loss gives them (a quarter of it here, the mean being over all four).
    real_words: the same word by word."""
    ids, lengths = _captions()
    words, sentence, mask = nets.stem(ids, lengths)
    z = tf.random.normal((B, cfg.model.z_dim))
    eps = tf.random.normal((B, cfg.model.condition_dim))  # fixed: GLAM draws its own on every call otherwise

    def loss_and_grads(floor):
        with tf.GradientTape() as tape:
            image = nets.glam(z, sentence, words, mask, eps=eps)["images"][-1]
            loss = losses.stream_loss(nets.stream_encoder, nets.stream_decoder, image, ids, lengths, floor=floor)
        grads = tape.gradient(loss, nets.glam.trainable_weights)
        return float(loss), [g for g in grads if g is not None]

    image = nets.glam(z, sentence, words, mask, eps=eps)["images"][-1]
    ce = losses.stream_caption_losses(nets.stream_encoder, nets.stream_decoder, image, ids, lengths).numpy()
    assert ce.shape == (B,) and (ce > 0).all()
    published, _ = loss_and_grads(None)
    np.testing.assert_allclose(published, ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(loss_and_grads(np.zeros(B, "float32"))[0], published, rtol=1e-5)
    at_floor, grads = loss_and_grads(ce + 0.5)  # every example under its floor
    assert at_floor == 0.0 and all(float(tf.reduce_max(tf.abs(g))) == 0.0 for g in grads)
    floor = np.array([ce[0] - 0.25, ce[1] + 1, ce[2] + 1, ce[3] + 1], "float32")  # the first example above
    one, grads = loss_and_grads(floor)
    np.testing.assert_allclose(one, 0.25 / B, rtol=1e-4)
    with tf.GradientTape() as tape:  # the first example alone, unfloored, weighted as in the mean over B
        image = nets.glam(z, sentence, words, mask, eps=eps)["images"][-1]
        first = losses.stream_caption_losses(nets.stream_encoder, nets.stream_decoder, image, ids, lengths)[0] / B
    expected = [g for g in tape.gradient(first, nets.glam.trainable_weights) if g is not None]
    # Tiny elements differ in their last bits (a sum of four examples against one): compare each
    # tensor's difference with its size.
    assert len(grads) == len(expected)
    for g, e in zip(grads, expected):
        assert float(tf.norm(g - e)) <= 1e-3 * float(tf.norm(e)) + 1e-12
    # real_words: a floor per word. At each word's own loss, nothing; one word of the first caption
    # 0.25 above its floor: 0.25 over that caption's words and end token, over the batch.
    words_ce = losses.stream_caption_losses(nets.stream_encoder, nets.stream_decoder, image, ids, lengths,
                                            per_word=True).numpy()
    assert words_ce.shape == (B, T + 1) and (words_ce[np.arange(T + 1)[None, :] > lengths[:, None]] == 0).all()
    np.testing.assert_allclose(words_ce.sum(1) / (lengths + 1), ce, rtol=1e-5)
    assert loss_and_grads(words_ce + 1e-3)[0] == 0.0
    per_word = words_ce + 1e-3
    per_word[0, 1] -= 0.25 + 1e-3
    np.testing.assert_allclose(loss_and_grads(per_word)[0], 0.25 / (lengths[0] + 1) / B, rtol=1e-3)


def test_all_networks_run_under_mixed_float16(cfg):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        nets = build_networks(cfg, VOCAB, batch=B)
        ids, lengths, words, sentence, mask, out = _forward(cfg, nets)
        assert words.dtype == "float16"
        assert all(i.dtype == "float32" for i in out["images"])
        assert out["mu"].dtype == out["logvar"].dtype == "float32"
        assert all(a.dtype == "float32" for a in out["word_attention"] + out["sentence_attention"])
        regions, code = nets.damsm_image_encoder(out["images"][-1])
        assert regions.dtype == code.dtype == "float32"
        uncond, cond = nets.discriminators[-1](out["images"][-1], sentence)
        assert uncond.dtype == cond.dtype == "float32"
        logits = nets.stream_decoder(nets.stream_encoder(out["images"][-1]), ids)
        assert logits.dtype == "float32"
        values = [
            losses.discriminator_loss(nets.discriminators[-1], out["images"][-1], out["images"][-1], sentence)[0],
            losses.generator_adversarial_loss(nets.discriminators[-1], out["images"][-1], sentence),
            losses.kl_loss(out["mu"], out["logvar"]),
            losses.stream_loss(nets.stream_encoder, nets.stream_decoder, out["images"][-1], ids, lengths),
            losses.damsm_loss(nets.damsm_image_encoder, out["images"][-1], words, sentence, mask, None, (4.0, 5.0, 10.0)),
        ]
        for v in values:
            assert v.dtype == "float32" and np.isfinite(float(v))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_checkpoints_hold_every_weight_of_every_network(nets, tmp_path):
    # Keras 3 tracks Python lists of layers for its own weights, but tf.train.Checkpoint follows
    # attributes only: a list of layers would silently drop out of checkpoints.
    for name, model in nets.named().items():
        prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / name))
        saved = [n for n, _ in tf.train.list_variables(prefix) if n != "_CHECKPOINTABLE_OBJECT_GRAPH"]
        assert len(saved) == len({id(w) for w in model.weights}), name


def test_the_small_cnn_code_knows_where_the_object_is():
    # Shifting an interior pattern by a multiple of the total stride (16) leaves a plain
    # conv + average-pool code unchanged; the coordinate channels must make it differ.
    from mirrorgan_tf.models.backbones import SmallCNN

    keras.utils.set_random_seed(0)
    cnn = SmallCNN(8)
    left = np.zeros((1, 128, 128, 3), "float32")
    left[:, 56:72, 40:56] = 1.0
    right = np.roll(left, 32, axis=2)
    code_left, code_right = cnn(left)[1].numpy(), cnn(right)[1].numpy()
    assert np.abs(code_left - code_right).max() > 1e-3


def test_text_norm_rms_gives_unit_scale_and_keeps_padding_zero():
    from mirrorgan_tf.models.glam import GLAM
    from mirrorgan_tf.models.stem import normalize_text

    rng = np.random.default_rng(0)
    words = (0.1 * rng.normal(size=(B, T, 8))).astype("float32")
    words[:, 5:] = 0.0
    out = np.asarray(normalize_text(words, "rms"))
    np.testing.assert_allclose(np.sqrt((out[:, :5] ** 2).mean(-1)), 1.0, rtol=1e-4)
    assert not out[:, 5:].any()
    ratio = out[:, :5] / words[:, :5]  # one positive factor per vector: the direction is kept
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[..., :1], ratio.shape), rtol=1e-5)
    assert np.all(ratio > 0)
    assert normalize_text(words, "none") is words
    with pytest.raises(ValueError, match="model.text_norm"):
        GLAM(text_norm="unit")


def test_text_norm_makes_the_generator_and_discriminators_blind_to_text_scale(cfg):
    from dataclasses import replace

    def build(text_norm):
        keras.utils.set_random_seed(0)
        return build_networks(replace(cfg, model=replace(cfg.model, text_norm=text_norm)), VOCAB, batch=B)

    ids, lengths = _captions()
    z = np.random.default_rng(1).normal(size=(B, cfg.model.z_dim)).astype("float32")
    eps = np.random.default_rng(2).normal(size=(B, cfg.model.condition_dim)).astype("float32")

    def outputs(n):
        words, sentence, mask = n.stem(ids, lengths)
        images = [n.glam(z, k * sentence, k * words, mask, eps=eps)["images"][-1] for k in (1.0, 7.0)]
        logits = [n.discriminators[-1](images[0], k * sentence)[1] for k in (1.0, 7.0)]
        return images, logits

    (a, b), (la, lb) = outputs(build("rms"))
    np.testing.assert_allclose(a, b, atol=1e-4)  # float32 round-off of the rescaling only
    np.testing.assert_allclose(la, lb, atol=1e-4)
    (a, b), (la, lb) = outputs(build("none"))  # the original: the scale reaches the outputs
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-2
    assert np.abs(np.asarray(la) - np.asarray(lb)).max() > 1e-2


def test_minibatch_std_appends_each_groups_std_in_karras_layout():
    from mirrorgan_tf.models.discriminators import minibatch_std

    # 8 images, groups of 4 -> M = 2 groups: images 0, 2, 4, 6 and 1, 3, 5, 7. One feature of
    # 2 x 2 x 3 = 12 varies; the other 11 are equal within the group (std sqrt(1e-8) = 1e-4).
    h = np.zeros((8, 2, 2, 3), "float32")
    h[:, 0, 0, 0] = [0, 0, 2, 0, 4, 0, 6, 4]  # group 0: 0 2 4 6 (std sqrt 5); group 1: 0 0 0 4 (std sqrt 3)
    out = minibatch_std(h, 4).numpy()
    assert out.shape == (8, 2, 2, 4)
    np.testing.assert_array_equal(out[..., :3], h)
    expected = {0: (np.sqrt(5.0) + 11e-4) / 12, 1: (np.sqrt(3.0) + 11e-4) / 12}
    for i in range(8):
        np.testing.assert_allclose(out[i, ..., 3], expected[i % 2], rtol=1e-5)
    # A batch that group size does not divide uses the largest common divisor: 6 images in 2
    # groups of 2... here gcd(4, 6) = 2, so M = 3 groups: (0, 3), (1, 4), (2, 5).
    h6 = np.zeros((6, 1, 1, 1), "float32")
    h6[:, 0, 0, 0] = [0, 0, 0, 2, 0, 0]
    np.testing.assert_allclose(minibatch_std(h6, 4).numpy()[:, 0, 0, 1],
                               [1.0, 1e-4, 1e-4, 1.0, 1e-4, 1e-4], rtol=1e-5)


def _widen(source, target, at=None):
    """Copy `source`'s weights into `target`, whose kernels may take extra input channels (axis
    -2, inserted at index `at`, None = at the end); those rows get zeros, so the extra input
    does nothing. Returns the number of kernels widened."""
    widened = 0
    for t, s in zip(target.weights, source.weights):
        s = np.asarray(s)
        if tuple(t.shape) != s.shape:
            extra = t.shape[-2] - s.shape[-2]
            assert extra > 0 and tuple(t.shape[:-2]) == s.shape[:-2], (t.path, t.shape, s.shape)
            k = s.shape[-2] if at is None else at
            rows = np.zeros(s.shape[:-2] + (extra,) + s.shape[-1:], s.dtype)
            s = np.concatenate([s[..., :k, :], rows, s[..., k:, :]], axis=-2)
            widened += 1
        t.assign(s)
    return widened


def test_stage_noise_and_minibatch_std_switched_off_are_the_published_networks(cfg):
    """Off (the defaults), the networks have the published weights; on, each widens one input
    (z beside the contexts; the std map beside D's features) and nothing else, so with zeros
    there the switched-on networks compute exactly what the published ones do."""
    from dataclasses import replace

    from mirrorgan_tf.models.discriminators import Discriminator
    from mirrorgan_tf.models.networks import build_glam, build_stem

    for published in ("cub.yaml", "coco.yaml"):
        m = load_config(CONFIGS / published).model
        assert m.stage_noise is False and m.minibatch_std == 0
    # Two stages show it (and build in half the time); off as published, whatever shapes' default.
    cfg = replace(cfg, model=replace(cfg.model, stages=2, stage_noise=False, minibatch_std=0))
    on = replace(cfg, model=replace(cfg.model, stage_noise=True))
    m = cfg.model
    keras.utils.set_random_seed(0)
    glam_off, glam_on = build_glam(cfg, batch=B), build_glam(on, batch=B)
    # GLAM: only the later stage's joint 1x1 conv grows, by z_dim input channels (z comes last).
    assert _widen(glam_off, glam_on) == 1
    ids, lengths = _captions()
    words, sentence, mask = build_stem(cfg, VOCAB, batch=B)(ids, lengths)
    z = np.random.default_rng(1).normal(size=(B, m.z_dim)).astype("float32")
    eps = np.random.default_rng(2).normal(size=(B, m.condition_dim)).astype("float32")
    a = glam_off(z, sentence, words, mask, eps=eps)["images"]
    for x, y in zip(a, glam_on(z, sentence, words, mask, eps=eps)["images"]):
        np.testing.assert_allclose(x, y, atol=1e-6)
    # D (the first stage's, the same code as the others'): the heads' first layers take one more
    # channel, the std map, after the encoder's features (in the conditional head, before the
    # sentence).
    d_off = Discriminator(0, m.df_dim, m.base_size, m.text_norm)
    d_on = Discriminator(0, m.df_dim, m.base_size, m.text_norm, minibatch_std=2)
    d_off(a[0], sentence), d_on(a[0], sentence)
    width = d_off.encoder.output_shape[-1]
    assert _widen(d_off, d_on, at=width) == 2  # uncond out conv, cond joint conv
    for x, y in zip(d_off(a[0], sentence), d_on(a[0], sentence)):
        np.testing.assert_allclose(x, y, atol=1e-5)
    # And the switches are live: weights on z's rows of stage 2's joint conv change stage 2 (not
    # stage 1), and a weight on the std map changes D's logits.
    kernel = np.asarray(glam_on.next_stage1.joint.kernel)
    kernel[..., -m.z_dim:, :] = 0.5
    glam_on.next_stage1.joint.kernel.assign(kernel)
    c = glam_on(z, sentence, words, mask, eps=eps)["images"]
    np.testing.assert_allclose(a[0], c[0], atol=1e-6)
    assert np.abs(np.asarray(a[1]) - np.asarray(c[1])).max() > 1e-3
    grown = np.asarray(d_on.uncond.out.kernel)
    grown[..., width, :] = 100.0
    d_on.uncond.out.kernel.assign(grown)
    assert np.abs(np.asarray(d_on(a[0], sentence)[0]) - np.asarray(d_off(a[0], sentence)[0])).max() > 1e-3
