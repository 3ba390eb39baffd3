"""GLAM, the global-local collaborative attentive cascaded generator, with its conditioning
augmentation.

Stage 1: concat(c, z) -> Dense -> BN -> GLU -> 4 x 4 map -> upsampling blocks -> h1 at base size.
Stage i > 1: local word attention and global sentence attention on h_{i-1}; concat(h, word
context, sentence context) -> 1x1 conv -> residual blocks -> upsampling block -> h_i at twice the
size. Every stage has an image head (conv3x3 -> tanh).
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from mirrorgan_tf.models.attention import SentenceAttention, WordAttention
from mirrorgan_tf.models.layers import LayerSequence, ResBlock, UpBlock, batch_norm, conv, dense, glu
from mirrorgan_tf.models.stem import check_text_norm, normalize_text


class ConditioningAugmentation(layers.Layer):
    """Sentence s -> (c, mu, logvar): Dense(4 x c_dim) -> GLU -> (mu, logvar); c = mu + eps * std.

    `eps` may be given (e.g. zeros for the mean, or fixed noise for reproducible serving);
    otherwise it is drawn."""

    def __init__(self, condition_dim: int, seed=None, name: str = "ca_net"):
        super().__init__(name=name)
        self.condition_dim = condition_dim
        self.fc = dense(condition_dim * 4, name="fc")
        self.seed = keras.random.SeedGenerator(seed)

    def call(self, sentence, eps=None):
        x = glu(self.fc(sentence))
        mu, logvar = x[:, : self.condition_dim], x[:, self.condition_dim:]
        if eps is None:
            eps = keras.random.normal(ops.shape(mu), dtype=mu.dtype, seed=self.seed)
        c = mu + ops.cast(eps, mu.dtype) * ops.exp(logvar * 0.5)
        return c, ops.cast(mu, "float32"), ops.cast(logvar, "float32")


class InitStage(layers.Layer):
    def __init__(self, gf_dim: int, base_size: int, name: str = "h_net1", sync_batch_norm: bool = False):
        super().__init__(name=name)
        ups = int(math.log2(base_size // 4))
        if 4 * 2**ups != base_size:
            raise ValueError(f"base_size must be 4 x a power of two, got {base_size}")
        self.channels = gf_dim * 2**ups  # 16 x gf at 64 px, as the original
        self.fc = dense(self.channels * 4 * 4 * 2, use_bias=False, name="fc")
        self.bn = batch_norm(name="fc_bn", sync_batch_norm=sync_batch_norm)
        self.ups = LayerSequence(self, "upsample", [
            UpBlock(self.channels // 2 ** (i + 1), name=f"upsample{i + 1}", sync_batch_norm=sync_batch_norm)
            for i in range(ups)])

    def call(self, z, c, training=None):
        x = glu(self.bn(self.fc(ops.concatenate([c, ops.cast(z, c.dtype)], axis=-1)), training=training))
        # The original reshapes NCHW (C, 4, 4); keep that layout so the mapping is the same.
        x = ops.transpose(ops.reshape(x, (-1, self.channels, 4, 4)), (0, 2, 3, 1))
        for up in self.ups:
            x = up(x, training=training)
        return x


class NextStage(layers.Layer):
    def __init__(self, gf_dim: int, r_num: int, softmax_over: str, name: str, sync_batch_norm: bool = False):
        super().__init__(name=name)
        self.word_attention = WordAttention(gf_dim)
        self.sentence_attention = SentenceAttention(gf_dim, softmax_over)
        self.joint = conv(gf_dim * 2, 1, name="conv")
        self.residual = LayerSequence(self, "residual", [
            ResBlock(gf_dim * 2, name=f"residual{i + 1}", sync_batch_norm=sync_batch_norm) for i in range(r_num)])
        self.up = UpBlock(gf_dim, name="upsample", sync_batch_norm=sync_batch_norm)

    def call(self, h, sentence, words, mask, z=None, training=None):
        """z: None (the published stage), or the noise [B, z_dim] to tile over the map and feed
        to the joint 1x1 conv beside h and the two contexts (`model.stage_noise`)."""
        word_context, word_attn = self.word_attention(h, words, mask)
        sentence_context, sentence_attn = self.sentence_attention(h, sentence)
        parts = [h, word_context, sentence_context]
        if z is not None:
            z = ops.cast(z, h.dtype)[:, None, None, :]
            parts.append(ops.broadcast_to(z, (ops.shape(h)[0], ops.shape(h)[1], ops.shape(h)[2], z.shape[-1])))
        x = self.joint(ops.concatenate(parts, axis=-1))
        for block in self.residual:
            x = block(x, training=training)
        return self.up(x, training=training), word_attn, sentence_attn


class ImageHead(layers.Layer):
    """conv3x3 (-> 3) -> tanh; images come out in float32 whatever the compute dtype."""

    def __init__(self, name: str):
        super().__init__(name=name)
        self.conv = conv(3, 3, name="conv")

    def call(self, h):
        return ops.cast(ops.tanh(self.conv(h)), "float32")


class GLAM(keras.Model):
    """The whole generator, conditioning augmentation included.

    call(z, sentence, words, mask) -> dict with
        images           list of float32 [B, s, s, 3] in [-1, 1], smallest first
        word_attention   list (one per stage after the first) of float32 [B, H, W, T]
        sentence_attention  likewise, float32 [B, H, W, C]
        mu, logvar       float32 [B, condition_dim], for the KL term

    `stage_noise` (ours, `model.stage_noise`; off in the paper): z also enters every stage after
    the first, tiled over the map beside its word and sentence contexts, so that what a later
    stage paints (an object's colour, through its word attention) can depend on the noise and
    not only on h_{i-1}. Off, the network and its weights are the published ones.
    `seed` seeds the conditioning augmentation's own noise (drawn when no eps is given);
    `sync_batch_norm` all-reduces every BatchNorm's statistics across replicas. Build it from a
    config with `models.networks.build_glam`.
    """

    def __init__(self, stages: int = 3, base_size: int = 64, gf_dim: int = 32, z_dim: int = 100,
                 condition_dim: int = 100, r_num: int = 2, global_attention_softmax: str = "positions",
                 global_attention_input: str = "condition", text_norm: str = "none", seed=None,
                 sync_batch_norm: bool = False, stage_noise: bool = False, name: str = "glam", **kwargs):
        super().__init__(name=name, **kwargs)
        if global_attention_input not in ("condition", "sentence"):
            raise ValueError(f"global_attention_input must be 'condition' or 'sentence', got {global_attention_input!r}")
        self.z_dim = z_dim
        self.stage_noise = stage_noise
        self.global_attention_input = global_attention_input
        self.text_norm = check_text_norm(text_norm)
        self.ca = ConditioningAugmentation(condition_dim, seed=seed)
        self.init_stage = InitStage(gf_dim, base_size, sync_batch_norm=sync_batch_norm)
        self.next_stages = LayerSequence(self, "next_stage", [
            NextStage(gf_dim, r_num, global_attention_softmax, name=f"h_net{i + 2}", sync_batch_norm=sync_batch_norm)
            for i in range(stages - 1)])
        self.heads = LayerSequence(self, "img_net", [ImageHead(name=f"img_net{i + 1}") for i in range(stages)])

    def call(self, z, sentence, words, mask, eps=None, training=None):
        words, sentence = normalize_text(words, self.text_norm), normalize_text(sentence, self.text_norm)
        c, mu, logvar = self.ca(sentence, eps=eps)
        attend_with = c if self.global_attention_input == "condition" else ops.cast(sentence, c.dtype)
        h = self.init_stage(z, c, training=training)
        images = [self.heads[0](h)]
        word_maps, sentence_maps = [], []
        for stage, head in zip(self.next_stages, self.heads[1:]):
            h, word_attn, sentence_attn = stage(h, attend_with, words, mask, z=z if self.stage_noise else None,
                                                training=training)
            images.append(head(h))
            word_maps.append(word_attn)
            sentence_maps.append(sentence_attn)
        return {"images": images, "word_attention": word_maps, "sentence_attention": sentence_maps,
                "mu": mu, "logvar": logvar}
