"""One factory per network of a configuration, and the one text-to-image forward pass.

Every `build_*` maps the config's fields onto the network's constructor and runs the network
once on dummy inputs of batch `batch`, so that all its weights exist (Keras creates weights on
the first call; checkpoints can only be restored into, and optimizers only built over, weights
that exist). `sync_batch_norm=True` makes every BatchNorm layer of the network all-reduce its
batch statistics across the replicas of a tf.distribute strategy (`train.sync_batch_norm`).

Weights are drawn in the order the factories are called, so callers that must reproduce a run
(same seed, same numbers) keep their order of calls.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import keras
from keras import ops

from mirrorgan_tf.models.damsm import DamsmImageEncoder
from mirrorgan_tf.models.discriminators import Discriminator
from mirrorgan_tf.models.glam import GLAM
from mirrorgan_tf.models.stem import STEM
from mirrorgan_tf.models.stream import StreamDecoder, StreamEncoder


@contextlib.contextmanager
def dtype_policy(name: str):
    """Keras' process-wide dtype policy set to `name` ("float32", "mixed_float16",
    "mixed_bfloat16") inside the block and put back on leaving it (an exception included).
    Layers take the policy when they are built and keep it; code that reads the global policy
    while tracing (`_dummy_text`) needs the block around the tracing too."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _dummy_text(cfg, batch: int):
    """STEM-shaped dummy outputs: words [B, T, D], sentence [B, D] in the compute dtype, mask
    [B, T] all True."""
    dtype = keras.mixed_precision.global_policy().compute_dtype
    t, d = cfg.data.words_num, cfg.model.embedding_dim
    return ops.zeros((batch, t, d), dtype), ops.zeros((batch, d), dtype), ops.ones((batch, t), "bool")


def _dummy_ids(cfg, batch: int):
    t = cfg.data.words_num
    return ops.ones((batch, t), "int32"), ops.full((batch,), t, "int32")


def build_stem(cfg, vocab_size: int, batch: int = 2, xla: bool = False) -> STEM:
    """STEM (model.embedding_dim, model.word_embedding_dim, model.text_dropout) over `vocab_size`
    word ids. It has no BatchNorm. `xla`: it will run inside an XLA-compiled step."""
    m = cfg.model
    stem = STEM(vocab_size, m.embedding_dim, m.word_embedding_dim, m.text_dropout, xla=xla)
    stem(*_dummy_ids(cfg, batch))
    return stem


def build_damsm_image_encoder(cfg, sync_batch_norm: bool = False, batch: int = 2) -> DamsmImageEncoder:
    """The DAMSM image encoder of `damsm.*` projecting to model.embedding_dim, built on images of
    the final generator size."""
    d = cfg.damsm
    encoder = DamsmImageEncoder(cfg.model.embedding_dim, d.backbone, d.backbone_weights, d.image_size, d.cnn_width,
                                sync_batch_norm=sync_batch_norm, align_corners=d.resize_align_corners)
    size = cfg.image_sizes[-1]
    encoder(ops.zeros((batch, size, size, 3)))
    return encoder


def build_glam(cfg, seed=None, sync_batch_norm: bool = False, batch: int = 2) -> GLAM:
    """GLAM of `model.*`; `seed` seeds its conditioning augmentation's own noise (used when no
    eps is given)."""
    m = cfg.model
    glam = GLAM(m.stages, m.base_size, m.gf_dim, m.z_dim, m.condition_dim, m.r_num, m.global_attention_softmax,
                m.global_attention_input, m.text_norm, seed=seed, sync_batch_norm=sync_batch_norm,
                stage_noise=m.stage_noise)
    words, sentence, mask = _dummy_text(cfg, batch)
    glam(ops.zeros((batch, m.z_dim)), sentence, words, mask)
    return glam


def build_discriminators(cfg, sync_batch_norm: bool = False, batch: int = 2) -> list[Discriminator]:
    """One discriminator per generator stage (d64, d128, ... for the published sizes)."""
    m = cfg.model
    _, sentence, _ = _dummy_text(cfg, batch)
    out = []
    for i, size in enumerate(cfg.image_sizes):
        d = Discriminator(i, m.df_dim, m.base_size, m.text_norm, sync_batch_norm=sync_batch_norm,
                          minibatch_std=m.minibatch_std, pair=m.pair_discriminator)
        if m.pair_discriminator:  # first: the call below builds the model and expects every layer built
            d.pair_logits(d.encode(ops.zeros((batch, size, size, 3))), sentence[0::2])
        d(ops.zeros((batch, size, size, 3)), sentence)
        out.append(d)
    return out


def build_stream(cfg, vocab_size: int, sync_batch_norm: bool = False,
                 batch: int = 2, xla: bool = False) -> tuple[StreamEncoder, StreamDecoder]:
    """STREAM's (encoder, decoder) of `stream.*`, the decoder over STEM's `vocab_size` words.
    `xla`: they will run inside an XLA-compiled step."""
    s = cfg.stream
    encoder = StreamEncoder(s.embedding_dim, s.backbone, s.backbone_weights, s.image_size, s.bn_momentum,
                            s.imagenet_normalize, s.cnn_width, sync_batch_norm=sync_batch_norm,
                            align_corners=s.resize_align_corners)
    decoder = StreamDecoder(vocab_size, s.embedding_dim, s.hidden_dim, s.max_len, xla=xla)
    size = cfg.image_sizes[-1]
    decoder(encoder(ops.zeros((batch, size, size, 3))), _dummy_ids(cfg, batch)[0])
    return encoder, decoder


def generate(stem: STEM, glam: GLAM, ids, lengths, z, eps=None, training: bool = False) -> dict:
    """Captions -> images: STEM encodes the captions (always in inference mode: it is frozen once
    DAMSM pretraining ends), GLAM generates from them.

    ids int32 [B, T] (padding after `lengths`), lengths int32 [B], z float32 [B, z_dim],
    eps float32 [B, condition_dim] the conditioning augmentation's noise (zeros: its mean; None:
    drawn by GLAM) -> GLAM's output dict: `images` (list per stage, float32 [B, s, s, 3] in
    [-1, 1], smallest first), `word_attention`, `sentence_attention`, `mu`, `logvar`."""
    words, sentence, mask = stem(ids, lengths, training=False)
    return glam(z, sentence, words, mask, eps=eps, training=training)


@dataclass
class Networks:
    """The networks of MirrorGAN, as the paper names them."""

    stem: STEM
    damsm_image_encoder: Optional[DamsmImageEncoder]
    glam: GLAM
    discriminators: list[Discriminator]
    stream_encoder: StreamEncoder
    stream_decoder: StreamDecoder

    def named(self) -> dict:
        """{name: model} in the order of the paper's data flow; discriminators as d64, d128, ...;
        no DAMSM image encoder where there is none."""
        out = {"stem": self.stem}
        if self.damsm_image_encoder is not None:
            out["damsm_image_encoder"] = self.damsm_image_encoder
        out["glam"] = self.glam
        out.update({d.name: d for d in self.discriminators})
        out.update({"stream_encoder": self.stream_encoder, "stream_decoder": self.stream_decoder})
        return out


def build_networks(cfg, vocab_size: int, batch: int = 2, seed=None) -> Networks:
    """Every network of a configuration, weights created (see the factories)."""
    stem = build_stem(cfg, vocab_size, batch=batch)
    damsm_image_encoder = build_damsm_image_encoder(cfg, batch=batch)
    glam = build_glam(cfg, seed=seed, batch=batch)
    discriminators = build_discriminators(cfg, batch=batch)
    stream_encoder, stream_decoder = build_stream(cfg, vocab_size, batch=batch)
    return Networks(stem, damsm_image_encoder, glam, discriminators, stream_encoder, stream_decoder)
