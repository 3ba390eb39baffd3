"""Each loss against a NumPy reference written from the paper/reference description, on tiny cases."""

import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf import losses
from mirrorgan_tf.models import damsm, stream

rng = np.random.default_rng(42)


def softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def bce(logit, target):  # -[t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))]
    return target * softplus(-logit) + (1 - target) * softplus(logit)


def log_softmax(x, axis=-1):
    x = x - x.max(axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis, keepdims=True))


class StubD:
    """A 'discriminator' whose logits are simple functions of its inputs."""

    def encode(self, images, training=None):
        return tf.convert_to_tensor(images)

    def uncond_logits(self, h, training=None):
        return h[:, 0]

    def cond_logits(self, h, sentence, training=None):
        return h[:, 0] * 0.5 + tf.convert_to_tensor(sentence)[:, 0]

    def __call__(self, images, sentence, training=None):
        h = self.encode(images)
        return self.uncond_logits(h), self.cond_logits(h, sentence)


def test_discriminator_loss():
    real = rng.normal(size=(4, 1)).astype("float32")
    fake = rng.normal(size=(4, 1)).astype("float32")
    sent = rng.normal(size=(4, 1)).astype("float32")
    loss, terms = losses.discriminator_loss(StubD(), real, fake, sent)
    r, f, s = real[:, 0], fake[:, 0], sent[:, 0]
    expected = (bce(r, 1).mean() + bce(0.5 * r + s, 1).mean()) / 2 + (
        bce(f, 0).mean() + bce(0.5 * f + s, 0).mean() + bce(0.5 * r[:-1] + s[1:], 0).mean()) / 3
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(terms["cond_wrong"]), bce(0.5 * r[:-1] + s[1:], 0).mean(), rtol=1e-5)


def test_generator_adversarial_loss():
    fake = rng.normal(size=(3, 1)).astype("float32")
    sent = rng.normal(size=(3, 1)).astype("float32")
    loss = losses.generator_adversarial_loss(StubD(), fake, sent)
    f, s = fake[:, 0], sent[:, 0]
    np.testing.assert_allclose(float(loss), bce(f, 1).mean() + bce(0.5 * f + s, 1).mean(), rtol=1e-5)


def test_kl_loss():
    mu = rng.normal(size=(3, 5)).astype("float32")
    logvar = rng.normal(size=(3, 5)).astype("float32")
    expected = np.mean(-0.5 * (1 + logvar - mu**2 - np.exp(logvar)))
    np.testing.assert_allclose(float(losses.kl_loss(mu, logvar)), expected, rtol=1e-5)
    assert float(losses.kl_loss(np.zeros((2, 3)), np.zeros((2, 3)))) == 0.0


def test_stream_caption_loss_covers_words_and_the_end_token():
    V, T = 6, 4
    logits = rng.normal(size=(2, T + 1, V)).astype("float32")
    ids = np.array([[3, 4, 0, 0], [5, 2, 2, 3]], "int32")
    lengths = np.array([2, 4], "int32")
    got = stream.caption_loss(logits, ids, lengths).numpy()
    lp = log_softmax(logits)
    expected = [
        -(lp[0, 0, 3] + lp[0, 1, 4] + lp[0, 2, 0]) / 3,  # two words, then <end>
        -(lp[1, 0, 5] + lp[1, 1, 2] + lp[1, 2, 2] + lp[1, 3, 3] + lp[1, 4, 0]) / 5,
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_stream_label_smoothing_is_szegedys_target_and_stops_at_one_minus_eps():
    V, T, eps = 6, 4, 0.1
    logits = rng.normal(size=(2, T + 1, V)).astype("float32")
    ids = np.array([[3, 4, 0, 0], [5, 2, 2, 3]], "int32")
    lengths = np.array([2, 4], "int32")
    lp = log_softmax(logits)
    targets = np.concatenate([ids, np.zeros((2, 1), "int32")], axis=1)
    smooth = (1 - eps) * np.eye(V)[targets] + eps / V  # Szegedy et al. 2016, section 7
    valid = np.arange(T + 1)[None, :] <= lengths[:, None]
    expected = -(smooth * lp).sum(-1) * valid
    got = stream.caption_word_losses(logits, ids, lengths, label_smoothing=eps).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stream.caption_loss(logits, ids, lengths, eps).numpy(),
                               expected.sum(1) / (lengths + 1), rtol=1e-5)
    # Logits whose softmax is the smoothed target: the smoothed loss is at its minimum (no gradient),
    # the one-hot loss still pulls the word's probability towards 1.
    at_target = tf.Variable(np.log(smooth).astype("float32"))
    for eps_, zero in ((eps, True), (0.0, False)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(stream.caption_loss(at_target, ids, lengths, eps_))
        grad = np.abs(tape.gradient(loss, at_target).numpy()).max()
        assert (grad < 1e-6) == zero, (eps_, grad)


def _cos(a, b):
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-8)


def _ce_both_ways(scores, class_ids, hard=None, hard_weight=None):
    """scores [images, captions]; hard [images]: each image's own hard negative, one more caption
    for that image only (absent where hard_weight is 0)."""
    scores = scores.copy()
    n = len(scores)
    if class_ids is not None:
        for i in range(n):
            for j in range(n):
                if i != j and class_ids[i] == class_ids[j] and class_ids[i] >= 0:
                    scores[i, j] = -np.inf
    rows = [scores[i] if hard is None or not hard_weight[i] else np.append(scores[i], hard[i]) for i in range(n)]
    loss0 = -np.mean([log_softmax(rows[i])[i] for i in range(n)])
    loss1 = -np.mean([log_softmax(scores[:, i])[i] for i in range(n)])
    return loss0, loss1


@pytest.mark.parametrize("class_ids", [None, np.array([1, 2, 1, -1, -1])])
def test_sentence_loss(class_ids):
    code = rng.normal(size=(5, 8)).astype("float32")
    sent = rng.normal(size=(5, 8)).astype("float32")
    got = damsm.sentence_loss(code, sent, class_ids, gamma3=10.0)
    scores = np.array([[_cos(code[i], sent[j]) for j in range(5)] for i in range(5)]) * 10.0
    np.testing.assert_allclose([float(g) for g in got], _ce_both_ways(scores, class_ids), rtol=1e-4)


def _word_score_reference(r, w, g1, g2):
    """R(image regions r [regions, D], caption words w [n, D]), AttnGAN's algorithm -> (R, attention)."""
    attn = r @ w.T  # regions x words
    attn = np.exp(log_softmax(attn, axis=1))  # over words
    attn = np.exp(log_softmax(attn.T * g1, axis=1))  # words x regions, over regions
    context = attn @ r  # n x D
    return np.log(np.exp(g2 * _cos(w, context)).sum()), attn


def _word_loss_reference(regions, words, lengths, class_ids, g1, g2, g3, hard=None, hard_weight=None):
    """AttnGAN's algorithm, caption by caption, with each caption cut to its length; hard: (words,
    lengths) of each image's own hard negative caption."""
    b = len(words)
    r = regions.reshape(b, -1, regions.shape[-1])  # images x regions x D
    sims = np.zeros((b, b))  # image j, caption i
    own_attn = []
    for i in range(b):
        w = words[i, : lengths[i]]  # n x D
        for j in range(b):
            sims[j, i], attn = _word_score_reference(r[j], w, g1, g2)
            if i == j:
                own_attn.append(attn)
    scores = None
    if hard is not None:
        scores = np.array([_word_score_reference(r[j], hard[0][j, : hard[1][j]], g1, g2)[0] for j in range(b)]) * g3
    return (*_ce_both_ways(sims * g3, class_ids, scores, hard_weight), own_attn)


@pytest.mark.parametrize("class_ids", [None, np.array([7, 7, 3, -1])])
def test_word_loss(class_ids):
    regions = rng.normal(size=(4, 3, 3, 6)).astype("float32")
    words = rng.normal(size=(4, 5, 6)).astype("float32")
    lengths = np.array([5, 2, 3, 1])
    words[np.arange(5)[None, :] >= lengths[:, None]] = 0.0
    mask = np.arange(5)[None, :] < lengths[:, None]
    loss0, loss1, attn = damsm.word_loss(regions, words, mask, class_ids, 4.0, 5.0, 10.0)
    ref0, ref1, ref_attn = _word_loss_reference(regions, words, lengths, class_ids, 4.0, 5.0, 10.0)
    np.testing.assert_allclose([float(loss0), float(loss1)], [ref0, ref1], rtol=1e-4)
    assert tuple(attn.shape) == (4, 5, 3, 3)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(attn.numpy()[i, :n].reshape(n, 9), ref_attn[i], atol=1e-5)
        np.testing.assert_allclose(attn.numpy()[i, :n].reshape(n, 9).sum(-1), 1.0, atol=1e-5)  # over regions


@pytest.mark.parametrize("class_ids", [None, np.array([7, 7, 3, -1])])
def test_damsm_hard_negatives_add_each_images_swapped_caption_to_its_row_only(class_ids):
    """damsm.word_swap_negatives: image i's own swapped caption is one more caption in row i of the
    image -> caption direction (none where the caption had no word to swap); the caption -> image
    direction is the published one."""
    regions = rng.normal(size=(4, 3, 3, 6)).astype("float32")
    code = rng.normal(size=(4, 6)).astype("float32")
    words, hard_words = rng.normal(size=(2, 4, 5, 6)).astype("float32")
    lengths = np.array([5, 2, 3, 1])
    mask = np.arange(5)[None, :] < lengths[:, None]
    for w in (words, hard_words):
        w[~mask] = 0.0
    sentence, hard_sentence = rng.normal(size=(2, 4, 6)).astype("float32")
    weight = np.array([1.0, 0.0, 1.0, 1.0], "float32")
    got = damsm.sentence_loss(code, sentence, class_ids, 10.0, hard_sentence=hard_sentence, hard_weight=weight)
    scores = np.array([[_cos(code[i], sentence[j]) for j in range(4)] for i in range(4)]) * 10.0
    hard = _cos(code, hard_sentence) * 10.0
    np.testing.assert_allclose([float(g) for g in got], _ce_both_ways(scores, class_ids, hard, weight), rtol=1e-4)
    plain = damsm.sentence_loss(code, sentence, class_ids, 10.0)
    assert float(got[0]) > float(plain[0]) and float(got[1]) == pytest.approx(float(plain[1]))
    loss0, loss1, _ = damsm.word_loss(regions, words, mask, class_ids, 4.0, 5.0, 10.0,
                                      hard_words=hard_words, hard_mask=mask, hard_weight=weight)
    ref0, ref1, _ = _word_loss_reference(regions, words, lengths, class_ids, 4.0, 5.0, 10.0,
                                         (hard_words, lengths), weight)
    np.testing.assert_allclose([float(loss0), float(loss1)], [ref0, ref1], rtol=1e-4)
    # No swap anywhere: exactly the published losses.
    none = np.zeros(4, "float32")
    np.testing.assert_allclose(
        [float(x) for x in damsm.word_loss(regions, words, mask, class_ids, hard_words=hard_words, hard_mask=mask,
                                           hard_weight=none)[:2]],
        [float(x) for x in damsm.word_loss(regions, words, mask, class_ids)[:2]], rtol=1e-6)
    # The paired score is the diagonal of the all-pairs one.
    all_pairs, _ = damsm.word_scores(regions, hard_words, mask)
    np.testing.assert_allclose(damsm.paired_word_score(regions, hard_words, mask).numpy(),
                               np.diag(all_pairs.numpy()), rtol=1e-5)


def test_discriminator_loss_with_one_word_swaps_averages_both_kinds_of_wrong_pairs():
    real = rng.normal(size=(4, 1)).astype("float32")
    fake = rng.normal(size=(4, 1)).astype("float32")
    sent = rng.normal(size=(4, 1)).astype("float32")
    swapped_sent = rng.normal(size=(4, 1)).astype("float32")
    r, s, w = real[:, 0], sent[:, 0], swapped_sent[:, 0]
    plain, plain_terms = losses.discriminator_loss(StubD(), real, fake, sent)
    # Images 0 and 2 had a swappable word: their pairs average into half the wrong-pair term.
    weights, share = losses.swapped_pairs_across_replicas(np.array([1, 0, 1, 0], "float32"))
    np.testing.assert_allclose(weights, [0.5, 0, 0.5, 0])
    assert float(share) == 0.5
    loss, terms = losses.discriminator_loss(StubD(), real, fake, sent, swapped=(swapped_sent, weights, share))
    reference_wrong = bce(0.5 * r[:-1] + s[1:], 0).mean()
    swapped_wrong = bce(0.5 * r[[0, 2]] + w[[0, 2]], 0).mean()
    np.testing.assert_allclose(float(terms["cond_swapped"]), swapped_wrong, rtol=1e-5)
    np.testing.assert_allclose(float(loss) - float(plain),
                               ((reference_wrong + swapped_wrong) / 2 - reference_wrong) / 3, rtol=1e-4, atol=1e-6)
    assert float(plain_terms["cond_wrong"]) == pytest.approx(float(terms["cond_wrong"]))
    # No swappable caption in the batch: the published loss, exactly.
    weights, share = losses.swapped_pairs_across_replicas(np.zeros(4, "float32"))
    assert float(share) == 0.0 and not np.any(weights)
    none, _ = losses.discriminator_loss(StubD(), real, fake, sent, swapped=(swapped_sent, weights, share))
    assert float(none) == pytest.approx(float(plain), rel=1e-6)


def test_mode_seeking_pairs_adjacent_examples_and_refuses_an_odd_batch():
    np.testing.assert_array_equal(losses.mode_seeking_pairs(6).numpy(), [0, 0, 2, 2, 4, 4])
    with pytest.raises(ValueError, match="even, got 5"):
        losses.mode_seeking_pairs(5)


def _two_pairs():
    """Pair 0: images differ by 0.5 everywhere, latents by 2 -> ratio 0.25. Pair 1: images differ by
    0.1 on a quarter of the pixels (mean 0.025), latents by 1 on half the dims (mean 0.5) -> 0.05."""
    images = np.zeros((4, 2, 2, 3), np.float32)
    images[1] = 0.5
    images[3, 0, 0, :] = 0.1
    latents = np.zeros((4, 4), np.float32)
    latents[1] = 2.0
    latents[3, :2] = 1.0
    return images, latents


def test_mode_seeking_loss_by_hand():
    images, latents = _two_pairs()
    eps = 1e-5
    want = (1 / (0.25 + eps) + 1 / (0.05 + eps)) / 2
    assert float(losses.mode_seeking_loss(images, latents)) == pytest.approx(want, rel=1e-5)
    # One picture whatever the noise: the term is 1 / eps, its largest value.
    same = np.repeat(images[:1], 4, axis=0)
    assert float(losses.mode_seeking_loss(same, latents)) == pytest.approx(1 / eps, rel=1e-5)
    # Per-pair ratios: a batch's term is the mean of its halves' terms (as replicas split it).
    halves = [float(losses.mode_seeking_loss(images[k:k + 2], latents[k:k + 2])) for k in (0, 2)]
    assert float(losses.mode_seeking_loss(images, latents)) == pytest.approx(np.mean(halves), rel=1e-6)
    # It falls as the samples of a caption move apart: its gradient pushes them apart.
    x = tf.Variable(images)
    with tf.GradientTape() as tape:
        loss = losses.mode_seeking_loss(x, latents)
    grad = tape.gradient(loss, x).numpy()
    assert (grad[1] < 0).all() and (grad[0] > 0).all()  # image 1 above image 0: up, and 0 down


def test_diversity_sensitive_loss_by_hand_and_no_push_past_its_bound():
    images, latents = _two_pairs()  # ratios 0.25 and 0.05
    np.testing.assert_allclose(losses.pair_distance_ratios(images, latents).numpy(), [0.25, 0.05], rtol=1e-6)
    assert float(losses.diversity_sensitive_loss(images, latents, 1.0)) == pytest.approx(-(0.25 + 0.05) / 2)
    assert float(losses.diversity_sensitive_loss(images, latents, 0.1)) == pytest.approx(-(0.1 + 0.05) / 2)
    # One picture whatever the noise: 0, its largest value.
    same = np.repeat(images[:1], 4, axis=0)
    assert float(losses.diversity_sensitive_loss(same, latents, 0.1)) == 0.0
    # Pair 0 (0.25) is past tau = 0.1: no gradient reaches it; pair 1 (0.05) is pushed apart, with
    # the same strength at any ratio below tau (mode seeking's push would grow as the pair closes).
    x = tf.Variable(images)
    with tf.GradientTape() as tape:
        loss = losses.diversity_sensitive_loss(x, latents, 0.1)
    grad = tape.gradient(loss, x).numpy()
    assert not grad[:2].any()
    moved = grad[3, 0, 0]  # the pixel of image 3 that differs from image 2: pushed further up
    assert (moved < 0).all() and (grad[2, 0, 0] > 0).all()
    # d(-ratio / 2) / d pixel = -1 / (2 x pixels x d_latent) = -1 / (2 x 12 x 0.5)
    np.testing.assert_allclose(moved, -1 / 12, rtol=1e-5)


def test_discriminator_scores_fakes_against_the_captions_they_were_drawn_from():
    real = rng.normal(size=(4, 3)).astype(np.float32)
    fake = rng.normal(size=(4, 3)).astype(np.float32)
    sentence = rng.normal(size=(4, 2)).astype(np.float32)
    drawn_from = sentence[[0, 0, 2, 2]]
    _, terms = losses.discriminator_loss(StubD(), real, fake, sentence, fake_sentence=drawn_from)
    want = bce(fake[:, 0] * 0.5 + drawn_from[:, 0], 0.0).mean()
    assert float(terms["cond_fake"]) == pytest.approx(want, rel=1e-5)
    _, plain = losses.discriminator_loss(StubD(), real, fake, sentence)
    for k in ("real", "cond_real", "fake", "cond_wrong"):  # only the fakes' condition changes
        assert float(terms[k]) == pytest.approx(float(plain[k]), rel=1e-6)


def test_mode_seeking_noise_z_shares_each_pairs_condition_and_measures_z_alone():
    z = rng.normal(size=(4, 3)).astype(np.float32)
    eps = rng.normal(size=(4, 2)).astype(np.float32)
    pair = losses.mode_seeking_pairs(4)
    # "both" (Mao et al., the default): the noises as drawn, the latent all of them.
    ca, latent = losses.mode_seeking_noises(z, eps, pair, "both")
    np.testing.assert_array_equal(ca, eps)
    np.testing.assert_array_equal(latent, np.concatenate([z, eps], axis=1))
    # "z": examples 1 and 3 take the epsilon of 0 and 2; the latent is z alone.
    ca, latent = losses.mode_seeking_noises(z, eps, pair, "z")
    np.testing.assert_array_equal(ca, eps[[0, 0, 2, 2]])
    np.testing.assert_array_equal(latent, z)
    with pytest.raises(ValueError, match="'both' or 'z', got 'c'"):
        losses.mode_seeking_noises(z, eps, pair, "c")


def test_joint_batch_norm_computes_the_same_terms_on_a_discriminator_without_batch_statistics():
    """train.d_batch_norm=joint changes only which images D's BatchNorm layers see together: with a
    D whose logits are per image (StubD), every term and G's loss equal the separate passes'."""
    real, fake = (rng.normal(size=(4, 3)).astype(np.float32) for _ in range(2))
    sentence = rng.normal(size=(4, 2)).astype(np.float32)
    drawn_from = sentence[[0, 0, 2, 2]]
    loss, terms = losses.discriminator_loss(StubD(), real, fake, sentence, fake_sentence=drawn_from)
    joint_loss, joint_terms = losses.discriminator_loss(StubD(), real, fake, sentence, fake_sentence=drawn_from,
                                                        joint_batch_norm=True)
    assert float(joint_loss) == pytest.approx(float(loss), rel=1e-6) and set(joint_terms) == set(terms)
    for k in terms:
        assert float(joint_terms[k]) == pytest.approx(float(terms[k]), rel=1e-6), k
    g = losses.generator_adversarial_loss(StubD(), fake, drawn_from)
    assert float(losses.generator_adversarial_loss(StubD(), fake, drawn_from, real=(real, sentence))) == \
        pytest.approx(float(g), rel=1e-6)


def test_a_discriminator_sees_a_gain_on_the_generated_batch_only_with_joint_batch_norm():
    """The published discriminator in training mode (the mode of both GAN losses) gives the same
    unconditional logits for a batch x and the batch g * x: its convolutions have no bias, LeakyReLU
    is positively homogeneous, and its BatchNorm divides the gain out. Passed with real images as
    one batch (`losses.joint_logits`), the scaled batch is judged on the real images' scale."""
    from mirrorgan_tf.models.discriminators import Discriminator

    d = Discriminator(0, df_dim=4, base_size=16, text_norm="rms")
    images = lambda n: tf.constant(rng.uniform(-0.9, 0.9, size=(n, 16, 16, 3)).astype(np.float32))  # noqa: E731
    real, fake = images(8), images(8)
    sentence = tf.constant(rng.normal(size=(8, 6)).astype(np.float32))
    uncond, _ = d(fake, sentence, training=True)
    stretched, _ = d(1.2 * fake, sentence, training=True)
    np.testing.assert_allclose(stretched.numpy(), uncond.numpy(), rtol=1e-3, atol=1e-3)
    _, _, (joint, _) = losses.joint_logits(d, real, sentence, fake, sentence)
    _, _, (joint_stretched, _) = losses.joint_logits(d, real, sentence, 1.2 * fake, sentence)
    assert np.abs(joint_stretched.numpy() - joint.numpy()).mean() > 0.01


def test_a_gain_invariant_pair_distance_keeps_its_value_and_has_no_gradient_along_a_gain():
    """train.mode_seeking_gain_invariant: the ratio both terms raise is the plain one in value, but
    scaling every pixel of the generated images by g earns it nothing (its derivative in g is 0),
    where the plain distance grows with g (derivative d_I / d_z at g = 1)."""
    images = tf.constant(rng.uniform(-0.9, 0.9, size=(4, 8, 8, 3)).astype(np.float32))
    latents = tf.constant(rng.normal(size=(4, 5)).astype(np.float32))
    plain = losses.pair_distance_ratios(images, latents)
    np.testing.assert_allclose(losses.pair_distance_ratios(images, latents, gain_invariant=True).numpy(),
                               plain.numpy(), rtol=1e-6)
    gain = tf.Variable(1.0)
    for invariant, want in ((False, plain.numpy()), (True, np.zeros(2))):
        with tf.GradientTape(persistent=True) as tape:
            ratios = losses.pair_distance_ratios(gain * images, latents, gain_invariant=invariant)
            pairs = [ratios[0], ratios[1]]
            ms = losses.mode_seeking_loss(gain * images, latents, gain_invariant=invariant)
            ds = losses.diversity_sensitive_loss(gain * images, latents, 10.0, gain_invariant=invariant)
        slopes = [float(tape.gradient(pair, gain)) for pair in pairs]
        np.testing.assert_allclose(slopes, want, rtol=1e-4, atol=1e-5)  # 0 up to float32 rounding
        for term in (ms, ds):
            slope = float(tape.gradient(term, gain))
            assert (abs(slope) < 1e-4) if invariant else (slope < -1e-3)


def test_wrong_pairs_with_offset_2_skip_the_same_class_neighbour():
    sentence = np.arange(6, dtype=np.float32)[:, None]
    wrong, weight = losses.wrong_pairs(sentence, offset=2)
    assert np.asarray(wrong)[:, 0].tolist() == [2, 3, 4, 5, 0, 1]
    np.testing.assert_allclose(np.asarray(weight), [0.25, 0.25, 0.25, 0.25, 0, 0])


def _pair_d():
    from mirrorgan_tf.models.discriminators import Discriminator

    d = Discriminator(0, df_dim=4, base_size=16, text_norm="rms", pair=True)
    images = tf.zeros((4, 16, 16, 3))
    sentence = tf.zeros((4, 6))
    d.pair_logits(d.encode(images), sentence[0::2])  # first, as networks.build_discriminators
    d(images, sentence)
    return d


def test_the_pair_head_reads_each_pair_in_either_order_and_sees_a_pair_that_is_one_image_twice():
    from mirrorgan_tf.models.discriminators import pair_features

    d = _pair_d()
    x = tf.constant(rng.uniform(-0.9, 0.9, size=(8, 16, 16, 3)).astype(np.float32))
    sentence = tf.constant(rng.normal(size=(4, 6)).astype(np.float32))
    h = d.encode(x, training=False)
    swapped = tf.gather(h, [1, 0, 3, 2, 5, 4, 7, 6])
    np.testing.assert_allclose(d.pair_logits(h, sentence).numpy(), d.pair_logits(swapped, sentence).numpy(),
                               rtol=1e-5, atol=1e-6)
    twice = pair_features(tf.gather(h, [0, 0, 2, 2])).numpy()
    assert twice.shape[0] == 2 and (twice[..., h.shape[-1]:] == 0).all()  # no difference between the two


def test_pair_terms_add_to_both_losses_as_their_mean_and_g_wants_its_pairs_called_real():
    d = _pair_d()
    real = tf.constant(rng.uniform(-0.9, 0.9, size=(4, 16, 16, 3)).astype(np.float32))
    fake = tf.constant(rng.uniform(-0.9, 0.9, size=(4, 16, 16, 3)).astype(np.float32))
    sentence = tf.constant(rng.normal(size=(4, 6)).astype(np.float32))
    drawn_from = tf.gather(sentence, [0, 0, 2, 2])
    plain, _ = losses.discriminator_loss(d, real, fake, sentence, fake_sentence=drawn_from)
    loss, terms = losses.discriminator_loss(d, real, fake, sentence, fake_sentence=drawn_from, pairs=True)
    # Training mode: each pass normalises by its own batch, so the head's logits are reproducible here.
    real_logits = d.pair_logits(d.encode(real, training=True), sentence[0::2], training=True).numpy()
    fake_logits = d.pair_logits(d.encode(fake, training=True), drawn_from[0::2], training=True).numpy()
    assert float(terms["pair_real"]) == pytest.approx(np.mean(bce(real_logits, 1.0)), rel=1e-5)
    assert float(terms["pair_fake"]) == pytest.approx(np.mean(bce(fake_logits, 0.0)), rel=1e-5)
    assert float(loss) == pytest.approx(float(plain) + (float(terms["pair_real"]) + float(terms["pair_fake"])) / 2,
                                        rel=1e-5)
    g_plain = float(losses.generator_adversarial_loss(d, fake, drawn_from))
    g = float(losses.generator_adversarial_loss(d, fake, drawn_from, pairs=True))
    assert g == pytest.approx(g_plain + np.mean(bce(fake_logits, 1.0)), rel=1e-5)
    with pytest.raises(ValueError, match="pairs needs real=None"):
        losses.generator_adversarial_loss(d, fake, drawn_from, real=(real, sentence), pairs=True)
    with pytest.raises(ValueError, match="pairs needs joint_batch_norm=False"):
        losses.discriminator_loss(d, real, fake, sentence, fake_sentence=drawn_from, pairs=True, joint_batch_norm=True)
