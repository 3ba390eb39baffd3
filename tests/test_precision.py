"""Mixed precision keeps the numerics: every loss on a fixed batch, computed with the same weights
under `mixed_bfloat16` and `mixed_float16`, stays within a stated tolerance of float32.

Tolerances (relative to the float32 value, absolute floor 0.02 for losses near zero): bfloat16
has an 8-bit mantissa (relative rounding 2^-8 = 0.4 %) and float16 a 11-bit one (0.05 %), so
each conv's output carries ~0.4 % / 0.05 % error that layers compound; measured on this batch the
largest deviations are printed by the test on failure."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf import losses
from mirrorgan_tf.config import load_config
from mirrorgan_tf.models.networks import build_networks
from tests.conftest import CONFIGS

VOCAB, B, T = 30, 4, 16
TOLERANCE = {"mixed_bfloat16": 0.05, "mixed_float16": 0.01}


def _all_losses(cfg, nets):
    rng = np.random.default_rng(0)
    ids = rng.integers(2, VOCAB, size=(B, T)).astype("int32")
    lengths = np.array([3, 16, 7, 9], "int32")
    ids[np.arange(T)[None, :] >= lengths[:, None]] = 0
    words, sentence, mask = nets.stem(ids, lengths)
    z = rng.normal(size=(B, cfg.model.z_dim)).astype("float32")
    eps = rng.normal(size=(B, cfg.model.condition_dim)).astype("float32")
    out = nets.glam(z, sentence, words, mask, eps=eps, training=False)
    fake = out["images"][-1]
    real = tf.constant(rng.uniform(-1, 1, size=fake.shape), tf.float32)
    d = nets.discriminators[-1]
    return {
        "d": losses.discriminator_loss(d, real, fake, sentence, training=False)[0],
        "g_adv": losses.generator_adversarial_loss(d, fake, sentence, training=False),
        "kl": losses.kl_loss(out["mu"], out["logvar"]),
        "stream": losses.stream_loss(nets.stream_encoder, nets.stream_decoder, fake, ids, lengths),
        "damsm": losses.damsm_loss(nets.damsm_image_encoder, fake, words, sentence, mask, None, (4.0, 5.0, 10.0)),
        "image_mean_abs": tf.reduce_mean(tf.abs(fake)),
    }


@pytest.mark.parametrize("policy", sorted(TOLERANCE))
def test_losses_under_mixed_precision_stay_near_float32(policy):
    cfg = load_config(CONFIGS / "shapes_smoke.yaml")
    keras.utils.set_random_seed(0)
    reference_nets = build_networks(cfg, VOCAB, batch=B)
    reference = {k: float(v) for k, v in _all_losses(cfg, reference_nets).items()}
    keras.mixed_precision.set_global_policy(policy)
    try:
        nets = build_networks(cfg, VOCAB, batch=B)
        for name, net in nets.named().items():
            source = reference_nets.named()[name]
            # Same layout (Keras numbers the second build's layer names, so compare shapes).
            assert [tuple(w.shape) for w in net.weights] == [tuple(w.shape) for w in source.weights]
            for target, w in zip(net.weights, source.weights):
                target.assign(w)
        values = _all_losses(cfg, nets)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(v.dtype == "float32" for v in values.values())
    errors = {k: abs(float(v) - reference[k]) / max(abs(reference[k]), 0.02) for k, v in values.items()}
    print(policy, {k: round(v, 5) for k, v in errors.items()})
    assert max(errors.values()) <= TOLERANCE[policy], (policy, errors, reference)


@pytest.fixture
def gpu_claimed(monkeypatch):
    """Keras' TensorFlow backend believes a GPU is visible (its `_is_gpu_available`, which decides
    whether an LSTM takes the cuDNN op), so the cuDNN branch runs on this CPU-only machine. The
    module is taken from sys.modules: `keras.src.backend.tensorflow.rnn` as an attribute is a
    function of the same name."""
    import importlib

    rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")
    monkeypatch.setattr(rnn, "_is_gpu_available", lambda: True)


def test_lstms_leave_cudnn_under_bfloat16_on_a_gpu(gpu_claimed):
    """STEM's bi-LSTM and STREAM's decoder LSTM under mixed bfloat16, where Keras sees a GPU:
    they take the generic loop (use_cudnn=False) and run inside a tf.function. The control, a plain
    Keras LSTM under the same conditions, reaches the cuDNN op (no CPU kernel: it fails here;
    on a GPU it is the bfloat16 cuDNN RNN the issue saw fail), so the fake is in effect."""
    from mirrorgan_tf.models.stem import STEM
    from mirrorgan_tf.models.stream import StreamDecoder

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        stem, decoder = STEM(VOCAB, 16, 12), StreamDecoder(VOCAB, 16, 24, max_len=T)
        lstms = [stem.rnn.forward_layer, stem.rnn.backward_layer, decoder.lstm]
        assert [layer.use_cudnn for layer in lstms] == [False] * 3
        ids = tf.constant(np.random.default_rng(0).integers(2, VOCAB, size=(B, T)), tf.int32)
        lengths = tf.constant([3, 16, 7, 9], tf.int32)
        words, sentence, _ = tf.function(lambda i, n: stem(i, n))(ids, lengths)
        logits = tf.function(lambda f, i: decoder(f, i))(sentence, ids)
        assert words.dtype == "bfloat16" and logits.shape == (B, T + 1, VOCAB)
        assert bool(tf.reduce_all(tf.math.is_finite(logits)))

        control = keras.layers.LSTM(8, return_sequences=True)
        with pytest.raises(tf.errors.InvalidArgumentError, match="CudnnRNN"):
            tf.function(lambda x: control(x))(tf.zeros([B, T, 4]))
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_lstms_keep_cudnn_where_it_has_the_dtype(policy):
    """float32 and float16 keep Keras' automatic choice (cuDNN on a GPU)."""
    from mirrorgan_tf.models.stem import STEM
    from mirrorgan_tf.models.stream import StreamDecoder

    keras.mixed_precision.set_global_policy(policy)
    try:
        stem, decoder = STEM(VOCAB, 16, 12), StreamDecoder(VOCAB, 16, 24)
        assert [layer.use_cudnn for layer in (stem.rnn.forward_layer, stem.rnn.backward_layer, decoder.lstm)] \
            == ["auto"] * 3
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_lstms_leave_cudnn_inside_an_xla_step_on_a_gpu(gpu_claimed):
    """train.xla compiles the GAN step, STEM and STREAM's decoder included, and XLA has no kernel for
    the cuDNN op: the networks built for it (`xla=True`, as the GAN stage builds them) take the
    generic loop and compile, in float32 too; those built without keep cuDNN."""
    from mirrorgan_tf.models.networks import build_stem, build_stream

    cfg = load_config(CONFIGS / "shapes_smoke.yaml")
    stem = build_stem(cfg, VOCAB, xla=True)
    _, decoder = build_stream(cfg, VOCAB, xla=True)
    assert [layer.use_cudnn for layer in (stem.rnn.forward_layer, stem.rnn.backward_layer, decoder.lstm)] \
        == [False] * 3
    ids = tf.constant(np.random.default_rng(0).integers(2, VOCAB, size=(B, T)), tf.int32)
    lengths = tf.constant([3, 16, 7, 9], tf.int32)
    cudnn_stem = build_stem(cfg, VOCAB)  # the control: the cuDNN op, which XLA cannot compile
    assert cudnn_stem.rnn.forward_layer.use_cudnn == "auto"
    with pytest.raises(tf.errors.InvalidArgumentError, match="CudnnRNN"):
        tf.function(lambda i, n: cudnn_stem(i, n), jit_compile=True)(ids, lengths)
    words, sentence, _ = tf.function(lambda i, n: stem(i, n), jit_compile=True)(ids, lengths)
    logits = tf.function(lambda f, i: decoder(f, i), jit_compile=True)(tf.zeros([B, cfg.stream.embedding_dim]), ids)
    assert words.shape == (B, T, cfg.model.embedding_dim) and logits.shape == (B, T + 1, VOCAB)
