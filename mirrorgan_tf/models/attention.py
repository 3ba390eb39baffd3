"""GLAM's two attentions on an image feature map h (B, H, W, C).

Local word attention (AttnGAN's): words are projected to C channels (a 1x1 convolution, here a
bias-free Dense over the word axis, the same parameters), every pixel attends over the caption's
words (padded words get exactly zero weight), and each pixel receives the weighted sum of word
features.

Global sentence attention (MirrorGAN's): the sentence vector is projected to C channels and tiled,
multiplied with h, passed through a 1x1 convolution and a softmax, and the result weighs the
projected sentence. The softmax runs over image positions (the paper) or over channels at each
position (the released code, `model.global_attention_softmax: channels`).

Attention logits and softmaxes are computed in float32 whatever the layer's compute dtype.
"""

from __future__ import annotations

from keras import layers, ops

from mirrorgan_tf.models.layers import conv, dense

_MASKED = -1e9  # exp(-1e9 - max) is exactly 0 in float32


def softmax_not_last(x, axis: int):
    """softmax over `axis` written out (exp(x - max) / sum): tf.nn.softmax over any axis but the
    last transposes it to the end and back, forward and backward; this reads x in place."""
    e = ops.exp(x - ops.stop_gradient(ops.max(x, axis=axis, keepdims=True)))
    return e / ops.sum(e, axis=axis, keepdims=True)


class WordAttention(layers.Layer):
    def __init__(self, channels: int, name: str = "word_attention"):
        super().__init__(name=name)
        self.project = dense(channels, use_bias=False, name="conv_context")

    def call(self, h, words, mask):
        """h [B, H, W, C], words [B, T, D], mask bool [B, T] ->
        context [B, H, W, C], attention float32 [B, H, W, T] (sums to 1 over T)."""
        b, height, width, c = ops.shape(h)[0], ops.shape(h)[1], ops.shape(h)[2], h.shape[-1]
        e = self.project(words)  # B, T, C
        query = ops.reshape(h, (b, height * width, c))
        # einsum contracts C of both operands in place (a batch matmul with the second operand
        # adjointed): no transposed copy of the projected words.
        logits = ops.einsum("bqc,btc->bqt", ops.cast(query, "float32"), ops.cast(e, "float32"))  # B, HW, T
        logits = ops.where(mask[:, None, :], logits, _MASKED)
        attn = ops.softmax(logits, axis=-1)
        context = ops.matmul(ops.cast(attn, e.dtype), e)
        return (ops.reshape(context, (b, height, width, c)),
                ops.reshape(attn, (b, height, width, ops.shape(words)[1])))


class SentenceAttention(layers.Layer):
    def __init__(self, channels: int, softmax_over: str = "positions", name: str = "sentence_attention"):
        super().__init__(name=name)
        if softmax_over not in ("positions", "channels"):
            raise ValueError(f"softmax_over must be 'positions' or 'channels', got {softmax_over!r}")
        self.softmax_over = softmax_over
        self.project = dense(channels, name="linear")
        self.visual = conv(channels, 1, name="conv_sentence_vis")

    def call(self, h, sentence):
        """h [B, H, W, C], sentence [B, S] -> context [B, H, W, C], attention float32 [B, H, W, C]
        (sums to 1 over H x W for each channel, or over C at each position)."""
        s = self.project(sentence)[:, None, None, :]  # B, 1, 1, C: tiled by broadcasting
        logits = ops.cast(self.visual(h * s), "float32")
        if self.softmax_over == "positions":
            b, height, width, c = ops.shape(logits)[0], ops.shape(logits)[1], ops.shape(logits)[2], logits.shape[-1]
            flat = ops.reshape(logits, (b, height * width, c))
            attn = ops.reshape(softmax_not_last(flat, axis=1), (b, height, width, c))
        else:
            attn = ops.softmax(logits, axis=-1)
        return s * ops.cast(attn, s.dtype), attn
