"""A run's trained generator (STEM + EMA GLAM) for sampling and evaluation.

The generator noise of a sample is a pure function of (seed, sample index), so a sample does not
depend on the batch it was drawn in: same seed, same pictures. The conditioning augmentation's
epsilon is drawn the same way (as at training time), unless `mean_condition` asks for its mean.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mirrorgan_tf import runs
from mirrorgan_tf.models.networks import generate


Z_STREAM, EPS_STREAM = 0, 1


def sample_noise(index, seed: int, dim: int, stream: int = Z_STREAM) -> tf.Tensor:
    """float32 [len(index), dim] standard normal: row k is a pure function of (seed, index[k],
    stream), so a sample's noise does not depend on its batch. Z_STREAM is the generator's z,
    EPS_STREAM the conditioning augmentation's epsilon. Needs only TensorFlow, so a client can draw
    the z a run's sampler draws and hand it to the SavedModel's `generate` signature."""
    index = tf.constant(np.asarray(index, np.int64))
    key = tf.constant(seed, tf.int64) * 2 + stream
    return tf.map_fn(lambda i: tf.random.stateless_normal([dim], seed=tf.stack([key, i])), index,
                     fn_output_signature=tf.float32)


class TrainedGenerator:
    """A run's STEM and EMA GLAM as one callable (see __call__). `TrainedGenerator(run_dir,
    checkpoint)` restores them from the run (`latest`, or `best`: runs.gan_weights_path, whose
    NoBestCheckpointError names the run), with weights="raw" the generator's own weights instead of
    their EMA (runs.RunDir.generator); `from_networks` wraps networks already in memory (the
    evaluation during training), so both draw the same noise for the same (seed, sample index).
    `checkpoint_path`: the gan checkpoint prefix restored (None for from_networks)."""

    def __init__(self, run_dir: str, checkpoint: str = "latest", weights: str = "ema"):
        run = runs.load_run(run_dir)
        # The latest checkpoint by default, so that a run can be looked at while it trains.
        stem, glam = run.generator(finished=False, checkpoint=checkpoint, weights=weights)
        self._setup(run.cfg, stem, glam)
        self.vocab_path, self.checkpoint_path = run.vocab_path, run.restored_from

    @classmethod
    def from_networks(cls, cfg, stem, glam) -> "TrainedGenerator":
        """Wrap a STEM and a GLAM already built and trained (e.g. the GAN stage's EMA copy)."""
        self = cls.__new__(cls)
        self._setup(cfg, stem, glam)
        self.vocab_path, self.checkpoint_path = None, None
        return self

    def _setup(self, cfg, stem, glam) -> None:
        self.cfg, self.stem, self.glam = cfg, stem, glam
        self.z_dim = self.cfg.model.z_dim
        self.condition_dim = self.cfg.model.condition_dim
        self._forward = tf.function(self._forward_impl, reduce_retracing=True)

    def _forward_impl(self, ids, lengths, z, eps):
        out = generate(self.stem, self.glam, ids, lengths, z, eps)
        return {"images": out["images"], "word_attention": out["word_attention"]}

    def noise(self, index: np.ndarray, seed: int, mean_condition: bool = False):
        """(z [B, z_dim], eps [B, condition_dim]) of samples number `index` (see sample_noise);
        eps is zeros (the condition's mean) with mean_condition."""
        z = sample_noise(index, seed, self.z_dim, Z_STREAM)
        if mean_condition:
            eps = tf.zeros([len(index), self.condition_dim])
        else:
            eps = sample_noise(index, seed, self.condition_dim, EPS_STREAM)
        return z, eps

    def __call__(self, ids, lengths, index, seed: int = 0, mean_condition: bool = False) -> dict:
        """ids int32 [B, words_num], lengths [B], index [B] (sample numbers) -> dict of `images`
        (list per stage, float32 [B, s, s, 3] in [-1, 1]) and `word_attention` (list per later stage,
        [B, h, w, words_num])."""
        z, eps = self.noise(index, seed, mean_condition)
        return self._forward(tf.constant(ids, tf.int32), tf.constant(lengths, tf.int32), z, eps)
