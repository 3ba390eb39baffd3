"""Standing statistics: the EMA generator's BatchNorm statistics, computed for its own weights.

The EMA (train.ema_decay) averages GLAM's trainable weights. BatchNorm's moving mean and variance
are not trained; the original code, and `GanTrainState.ema_update`, give the averaged weights the
raw generator's running statistics. Those describe another network's activations (the raw
generator's, whose weights move every step), estimated over its last few batches (momentum 0.1:
about ten batches of train.batch_size). Measured on two finished shapes runs, the EMA generator's
own activations have a variance 4-10 % smaller in most BatchNorms of the first stage, so the
borrowed statistics shrink what reaches the image: the size and place of the object vary less
(README, One caption, many pictures).

With train.ema_standing_statistics = N > 0 the GAN stage recomputes them before every checkpoint,
sample grid and evaluation: the EMA generator runs in training mode (each BatchNorm normalising with
its batch's statistics, as in training) over N (caption, z, eps) inputs in chunks of
train.batch_size, and each BatchNorm's moving mean and variance become the mean and variance of
its inputs over all N. This is BigGAN's "standing statistics" (Brock et al., ICLR 2019, appendix),
the BatchNorm update of stochastic weight averaging (Izmailov et al., UAI 2018), and "precise BN"
(Wu & Johnson, 2021) applied to the EMA. The inputs are fixed per run (train.seed): N training
captions drawn without replacement (with replacement if the split has fewer), z and eps from
`evaluation.generator.sample_noise`, so the result is a pure function of the EMA weights.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from mirrorgan_tf.evaluation.generator import EPS_STREAM, Z_STREAM, sample_noise
from mirrorgan_tf.evaluation.pairs import load_pairs
from mirrorgan_tf.models.networks import generate

# Offsets the noise of these inputs from the sample indices the evaluation during training draws
# with the same seed (0, 1, ...), so the statistics come from noise no metric looks at.
NOISE_OFFSET = 1 << 40


def batch_norms(model: keras.Model) -> list:
    """Every BatchNormalization layer inside `model`, in a fixed (creation) order."""
    # Keras 3 has no public recursive walk over a subclassed model's nested layers (Model.layers
    # lists only the direct ones); _flatten_layers is its own internal one.
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def pooled_moments(means, variances, counts) -> tuple[np.ndarray, np.ndarray]:
    """The mean and (biased) variance of the union of chunks, from each chunk's mean [C], biased
    variance [C] and size: mean = sum(n_k m_k) / N, variance = sum(n_k (v_k + m_k^2)) / N - mean^2
    (the law of total variance). float64 arrays [C]."""
    counts = np.asarray(counts, np.float64)[:, None]
    means, variances = np.asarray(means, np.float64), np.asarray(variances, np.float64)
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    second = (counts * (variances + means**2)).sum(0) / total
    return mean, np.maximum(second - mean**2, 0.0)


class StandingStatistics:
    """Sets a GLAM's BatchNorm moving statistics to those of its own activations (module docstring).

    StandingStatistics(cfg, stem, glam) draws the inputs: cfg.train.ema_standing_statistics
    (N >= 1) captions of the train split (`evaluation.pairs.load_pairs`: int32 ids [N, words_num],
    lengths [N]), chosen with train.seed, z float32 [N, z_dim] and eps float32 [N, condition_dim]
    standard normal (`sample_noise`, seed train.seed). Calling it (no arguments) runs `glam` in
    training mode over them in chunks of train.batch_size and assigns every BatchNorm's
    moving_mean and moving_variance (float32 [C]); the trainable weights are not touched, and no
    random state is consumed (eps is given, so the conditioning augmentation draws nothing).
    Under a tf.distribute strategy call it in cross-replica context, on every worker: it runs
    on the local device without collectives (BatchNorm then takes local moments) and the
    assignment reaches every replica's copy. Raises ValueError for N < 1."""

    def __init__(self, cfg, stem: keras.Model, glam: keras.Model):
        n = cfg.train.ema_standing_statistics
        if n < 1:
            raise ValueError(f"train.ema_standing_statistics must be >= 1 to compute standing statistics, got {n}")
        self.norms = batch_norms(glam)
        pairs = load_pairs(cfg, "train")
        rng = np.random.default_rng(cfg.train.seed)
        rows = rng.choice(len(pairs), size=n, replace=n > len(pairs))
        index = NOISE_OFFSET + np.arange(n)
        self.ids, self.lengths = pairs.ids[rows], pairs.lengths[rows]
        self.z = sample_noise(index, cfg.train.seed, cfg.model.z_dim, Z_STREAM)
        self.eps = sample_noise(index, cfg.train.seed, cfg.model.condition_dim, EPS_STREAM)
        self.chunk = cfg.train.batch_size

        def forward(ids, lengths, z, eps):
            generate(stem, glam, ids, lengths, z, eps, training=True)
            return [(layer.moving_mean.value, layer.moving_variance.value) for layer in self.norms]

        self._forward = tf.function(forward, reduce_retracing=True)

    def __call__(self) -> None:
        momenta = [layer.momentum for layer in self.norms]
        stats, counts = [], []
        try:
            # Momentum 0: a training-mode pass leaves each layer's moving statistics equal to the
            # moments of that chunk, which are then pooled over all chunks.
            for layer in self.norms:
                layer.momentum = 0.0
            for s in range(0, len(self.ids), self.chunk):
                part = slice(s, s + self.chunk)
                moments = self._forward(tf.constant(self.ids[part]), tf.constant(self.lengths[part]),
                                        self.z[part], self.eps[part])
                stats.append([(m.numpy(), v.numpy()) for m, v in moments])
                counts.append(len(self.ids[part]))
        finally:
            for layer, momentum in zip(self.norms, momenta):
                layer.momentum = momentum
        for k, layer in enumerate(self.norms):
            mean, variance = pooled_moments([c[k][0] for c in stats], [c[k][1] for c in stats], counts)
            layer.moving_mean.assign(mean.astype(np.float32))
            layer.moving_variance.assign(variance.astype(np.float32))
