"""The transpose-free attention (models/attention.py) against the plain formulas in NumPy."""

import numpy as np
import tensorflow as tf

from mirrorgan_tf.models.attention import SentenceAttention, WordAttention, softmax_not_last


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_softmax_not_last_equals_softmax_and_its_gradient():
    x = tf.constant(np.random.default_rng(0).normal(0, 5, size=(3, 50, 7)), tf.float32)
    np.testing.assert_allclose(softmax_not_last(x, 1).numpy(), _softmax(x.numpy(), 1), rtol=1e-5, atol=1e-7)
    w = tf.constant(np.random.default_rng(1).normal(size=(3, 50, 7)), tf.float32)
    grads = []
    for fn in (lambda v: softmax_not_last(v, 1), lambda v: tf.nn.softmax(v, axis=1)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(fn(x) * w)
        grads.append(tape.gradient(loss, x).numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_sentence_attention_over_positions_matches_numpy():
    layer = SentenceAttention(4, "positions")
    h = np.random.default_rng(2).normal(size=(2, 3, 5, 4)).astype("float32")
    sentence = np.random.default_rng(3).normal(size=(2, 6)).astype("float32")
    context, attn = layer(h, sentence)
    s = sentence @ layer.project.kernel.numpy() + layer.project.bias.numpy()  # B, C
    logits = (h * s[:, None, None, :]).reshape(2, 15, 4) @ layer.visual.kernel.numpy()[0, 0]
    expected = _softmax(logits, 1).reshape(2, 3, 5, 4)
    np.testing.assert_allclose(attn.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(context.numpy(), s[:, None, None, :] * expected, rtol=1e-5, atol=1e-6)


def test_word_attention_logits_without_transpose_match_batched_numpy():
    layer = WordAttention(6)
    h = np.random.default_rng(4).normal(size=(3, 4, 4, 6)).astype("float32")
    words = np.random.default_rng(5).normal(size=(3, 5, 8)).astype("float32")
    mask = np.array([[True] * 5, [True, True, False, False, False], [True] * 4 + [False]])
    context, attn = layer(h, words, mask)
    e = words @ layer.project.kernel.numpy()  # B, T, C
    logits = np.einsum("bqc,btc->bqt", h.reshape(3, 16, 6), e)
    logits = np.where(mask[:, None, :], logits, -np.inf)
    expected = _softmax(logits, -1)
    np.testing.assert_allclose(attn.numpy().reshape(3, 16, 5), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(context.numpy().reshape(3, 16, 6), expected @ e, rtol=1e-5, atol=1e-5)
