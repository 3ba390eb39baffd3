"""Every network of a configuration, built (weights created) and named as the paper names them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mirrorgan_tf.models.damsm import DamsmImageEncoder
from mirrorgan_tf.models.discriminators import Discriminator, build_discriminators
from mirrorgan_tf.models.glam import GLAM
from mirrorgan_tf.models.stem import STEM
from mirrorgan_tf.models.stream import StreamDecoder, StreamEncoder


@dataclass
class Networks:
    stem: STEM
    damsm_image_encoder: DamsmImageEncoder
    glam: GLAM
    discriminators: list[Discriminator]
    stream_encoder: StreamEncoder
    stream_decoder: StreamDecoder

    def named(self) -> dict:
        """{name: model} in the order of the paper's data flow; discriminators as d64, d128, ..."""
        out = {"stem": self.stem, "damsm_image_encoder": self.damsm_image_encoder, "glam": self.glam}
        out.update({d.name: d for d in self.discriminators})
        out.update({"stream_encoder": self.stream_encoder, "stream_decoder": self.stream_decoder})
        return out


def stem_from_config(cfg, vocab_size: int) -> STEM:
    m = cfg.model
    return STEM(vocab_size, m.embedding_dim, m.word_embedding_dim, m.text_dropout)


def build_networks(cfg, vocab_size: int, batch: int = 2, seed=None) -> Networks:
    """Create every network and run it once on dummy inputs so that all weights exist."""
    nets = Networks(
        stem=stem_from_config(cfg, vocab_size),
        damsm_image_encoder=DamsmImageEncoder.from_config_obj(cfg),
        glam=GLAM.from_config_obj(cfg, seed=seed),
        discriminators=build_discriminators(cfg),
        stream_encoder=StreamEncoder.from_config_obj(cfg),
        stream_decoder=StreamDecoder.from_config_obj(cfg, vocab_size),
    )
    t, sizes = cfg.data.words_num, cfg.image_sizes
    ids = np.ones((batch, t), "int32")
    lengths = np.full((batch,), t, "int32")
    words, sentence, mask = nets.stem(ids, lengths)
    z = np.zeros((batch, cfg.model.z_dim), "float32")
    nets.glam(z, sentence, words, mask)
    image = np.zeros((batch, sizes[-1], sizes[-1], 3), "float32")
    nets.damsm_image_encoder(image)
    for d, s in zip(nets.discriminators, sizes):
        d(np.zeros((batch, s, s, 3), "float32"), sentence)
    nets.stream_decoder(nets.stream_encoder(image), ids)
    return nets
