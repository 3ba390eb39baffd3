"""AttnGAN's discriminators, one per generator stage, unchanged by MirrorGAN.

Image encoder: conv4x4/2 (3 -> ndf, LeakyReLU, no BN), then three conv4x4/2 + BN + LeakyReLU to
8 ndf channels at 1/16 of the size. Stage i adds i down blocks (to 16, 32, ... ndf) and i 3x3
blocks back to 8 ndf, so every stage ends at base_size / 16 (4 x 4 for the published 64 px).
Heads: unconditional, a conv over the whole map (kernel = stride = base_size / 16) -> 1 logit;
conditional, concat(h, tiled sentence) -> 3x3 block (-> 8 ndf) -> the same conv.

The original ends each head in a sigmoid and trains with BCELoss; we return logits (float32) and
use the equivalent, numerically stable BCE on logits.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from mirrorgan_tf.models.layers import Block3x3LeakyReLU, DownBlock, batch_norm, conv
from mirrorgan_tf.models.stem import check_text_norm, normalize_text


def _encode_x16(df_dim: int, sync_batch_norm: bool = False) -> keras.Sequential:
    def bn():
        return batch_norm(sync_batch_norm=sync_batch_norm)

    return keras.Sequential([
        conv(df_dim, 4, strides=2), layers.LeakyReLU(0.2),
        conv(df_dim * 2, 4, strides=2), bn(), layers.LeakyReLU(0.2),
        conv(df_dim * 4, 4, strides=2), bn(), layers.LeakyReLU(0.2),
        conv(df_dim * 8, 4, strides=2), bn(), layers.LeakyReLU(0.2),
    ], name="img_code_s16")


def minibatch_std(h, group_size: int):
    """Karras et al.'s minibatch standard deviation (ICLR 2018, "Progressive Growing of GANs",
    section 3): h float [B, H, W, C] -> [B, H, W, C + 1], the extra map the standard deviation of
    each feature over a group of images, averaged over features and positions (one scalar per
    group, the same for each of its images and positions). Group g holds images g, g + M, g + 2M,
    ... with M = B / G (Karras' layout), so adjacent images (mode seeking's pairs of one caption,
    `losses.mode_seeking_pairs`) never share a group when M >= 2. G = gcd(group_size, B) for a
    static B (a batch of 6 with group 4 uses groups of 2), group_size otherwise (B must divide)."""
    b = h.shape[0]
    g = math.gcd(group_size, b) if b is not None else group_size
    x = ops.cast(h, "float32")
    shape = ops.shape(x)
    grouped = ops.reshape(x, (g, -1, shape[1], shape[2], shape[3]))  # [G, M, H, W, C]
    std = ops.sqrt(ops.var(grouped, axis=0) + 1e-8)  # [M, H, W, C], population variance as Karras
    per_group = ops.mean(std, axis=(1, 2, 3))  # [M]
    feature = ops.tile(per_group, (g,))[:, None, None, None]  # image i belongs to group i mod M
    feature = ops.broadcast_to(feature, (shape[0], shape[1], shape[2], 1))
    return ops.concatenate([h, ops.cast(feature, h.dtype)], axis=-1)


def pair_features(h):
    """The encoded images h float [B, H, W, C] (B even) as pairs (rows 2i, 2i + 1) -> [B / 2, H, W,
    2C]: each pair's sum and absolute difference, so the head reads what the two share and how far
    apart they are, whichever comes first (`model.pair_discriminator`)."""
    first, second = h[0::2], h[1::2]
    return ops.concatenate([first + second, ops.abs(first - second)], axis=-1)


class Logits(layers.Layer):
    def __init__(self, df_dim: int, kernel: int, conditional: bool, name: str, text_norm: str = "none",
                 sync_batch_norm: bool = False):
        super().__init__(name=name)
        self.text_norm = check_text_norm(text_norm)
        self.joint = (Block3x3LeakyReLU(df_dim * 8, name="joint_conv", sync_batch_norm=sync_batch_norm)
                      if conditional else None)
        # PyTorch's default Conv2d has a bias here (and only here in D).
        self.out = layers.Conv2D(1, kernel, strides=kernel, padding="valid", use_bias=True,
                                 kernel_initializer=keras.initializers.Orthogonal(), name="outlogits")

    def call(self, h, sentence=None, training=None):
        if self.joint is not None:
            s = ops.cast(normalize_text(sentence, self.text_norm), h.dtype)[:, None, None, :]
            s = ops.broadcast_to(s, (ops.shape(h)[0], ops.shape(h)[1], ops.shape(h)[2], s.shape[-1]))
            h = self.joint(ops.concatenate([h, s], axis=-1), training=training)
        return ops.cast(ops.reshape(self.out(h), (-1,)), "float32")


class Discriminator(keras.Model):
    """call(images, sentence) -> (unconditional logits [B], conditional logits [B]).

    For the "wrong pair" term, encode once with `encode` and apply `cond_logits` with other
    sentences. `minibatch_std` > 0 (ours, `model.minibatch_std`) appends Karras et al.'s
    minibatch standard deviation over groups of that many images to the encoded map, before
    both heads (`minibatch_std`); 0 is the published network. `pair` (ours, `model.pair_discriminator`)
    adds a third head, `pair_logits`: conditional like `cond_logits`, on `pair_features` of two
    encoded images of one caption (PacGAN's packing, Lin et al., NeurIPS 2018, after the shared
    encoder and with the caption)."""

    def __init__(self, stage: int, df_dim: int = 64, base_size: int = 64, text_norm: str = "none", name=None,
                 sync_batch_norm: bool = False, minibatch_std: int = 0, pair: bool = False, **kwargs):
        super().__init__(name=name or f"d{base_size * 2**stage}", **kwargs)
        self.minibatch_std = minibatch_std
        sync = sync_batch_norm
        blocks = [_encode_x16(df_dim, sync)]
        blocks += [DownBlock(df_dim * 16 * 2**i, name=f"img_code_s{32 * 2**i}", sync_batch_norm=sync)
                   for i in range(stage)]
        blocks += [Block3x3LeakyReLU(df_dim * 8 * 2 ** (stage - 1 - i), name=f"img_code_down{i + 1}",
                                     sync_batch_norm=sync) for i in range(stage)]
        self.encoder = keras.Sequential(blocks, name="encoder")
        kernel = base_size // 16
        self.uncond = Logits(df_dim, kernel, conditional=False, name="uncond_dnet")
        self.cond = Logits(df_dim, kernel, conditional=True, name="cond_dnet", text_norm=text_norm,
                           sync_batch_norm=sync)
        self.pair = (Logits(df_dim, kernel, conditional=True, name="pair_dnet", text_norm=text_norm,
                            sync_batch_norm=sync) if pair else None)

    def encode(self, images, training=None):
        h = self.encoder(images, training=training)
        return minibatch_std(h, self.minibatch_std) if self.minibatch_std else h

    def uncond_logits(self, h, training=None):
        return self.uncond(h, training=training)

    def cond_logits(self, h, sentence, training=None):
        return self.cond(h, sentence, training=training)

    def pair_logits(self, h, sentence, training=None):
        """h float [B, H, W, C] from `encode`, rows 2i and 2i + 1 two images of one caption; sentence
        float [B / 2, D], each pair's caption -> float32 logits [B / 2] (1 = a real pair)."""
        return self.pair(pair_features(h), sentence, training=training)

    def call(self, images, sentence, training=None):
        h = self.encode(images, training=training)
        return self.uncond_logits(h, training=training), self.cond_logits(h, sentence, training=training)

