"""Kernel Inception Distance between generated images and the real images of the split.

Source: Mikolaj Binkowski, Danica J. Sutherland, Michael Arbel, Arthur Gretton, *Demystifying MMD
GANs*, ICLR 2018 (arXiv:1801.01401), section 4 ("KID"). KID is the squared maximum mean
discrepancy (MMD^2) between the Inception pool features of generated and real images under the
cubic polynomial kernel

    k(x, y) = (x . y / d + 1)^3,   d the feature size (2,048 for pool_3),

estimated without bias: for m generated features x_i and m real features y_j,

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / m^2.

The two within-set sums leave the diagonal out; the cross sum keeps every pair because x and y
are drawn independently. Its expectation is the true MMD^2, so unlike FID it has no upward bias
at small sample sizes (it can come out negative when the two distributions are close). As the
paper proposes, it is computed on `subsets` random subsets of `subset_size` images drawn without
replacement from each side (100 of 1,000 in the paper; fewer images: all of them), and the mean
and standard deviation over subsets are reported. KID is commonly quoted x 1,000 (e.g.
"KID x 10^3 = 12.3"); `value` here is the plain MMD^2.

No library we install gives KID on NumPy features: torchmetrics and clean-fid need PyTorch (an
optional extra of this project only), TF-GAN (tensorflow-gan, last release 2021) needs
TensorFlow Probability and TensorFlow Hub, and Keras / KerasHub have no KID. The estimator above
is a few lines of NumPy; tests/test_kid.py checks it against a closed form.

The features are FID's (`metrics/inception.py`): the 2015-12-05 graph's pool_3 with
--inception-graph, or keras.applications.InceptionV3's average pool with --inception-weights.
Real features are cached per dataset, split, image size and extractor, beside FID's statistics.
"""

from __future__ import annotations

import io
import json

import numpy as np
import tensorflow as tf

from mirrorgan_tf import data
from mirrorgan_tf.images import atomic_write
from mirrorgan_tf.metrics import inception
from mirrorgan_tf.metrics.base import EvalError, Metric

SUBSETS = 100  # the paper's defaults
SUBSET_SIZE = 1000


def polynomial_kernel(x, y) -> np.ndarray:
    """x float [n, d], y float [m, d] -> float64 [n, m]: (x_i . y_j / d + 1)^3."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    base = x @ y.T / x.shape[1] + 1.0
    return base * base * base  # three times faster than ** 3


def mmd2_unbiased(x, y) -> float:
    """The unbiased MMD^2 estimate (module docstring) of features x [m, d] and y [m, d] (the same
    m >= 2) under the cubic polynomial kernel; float, may be negative. Raises ValueError for
    fewer than 2 rows or unequal row counts."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m = len(x)
    if m < 2 or len(y) != m:
        raise ValueError(f"mmd2_unbiased needs two sets of the same size >= 2, got {len(x)} and {len(y)}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.mean())


def kernel_inception_distance(generated, real, subsets: int = SUBSETS, subset_size: int = SUBSET_SIZE,
                              seed: int = 0) -> tuple[float, float, int]:
    """KID of features generated [n, d] against real [r, d]: (mean, std over subsets, the subset
    size used = min(subset_size, n, r)). Each subset draws that many rows of each side without
    replacement (numpy default_rng(seed)), so a figure is reproducible. Raises EvalError when
    either side has fewer than 2 rows or the feature sizes differ."""
    generated, real = np.asarray(generated, np.float64), np.asarray(real, np.float64)
    if min(len(generated), len(real)) < 2:
        raise EvalError(f"KID needs at least 2 images on each side, got {len(generated)} generated and {len(real)} real")
    if generated.shape[1] != real.shape[1]:
        raise EvalError(f"KID: feature sizes differ ({generated.shape[1]} generated, {real.shape[1]} real)")
    m = min(subset_size, len(generated), len(real))
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(generated[rng.choice(len(generated), m, replace=False)],
                            real[rng.choice(len(real), m, replace=False)]) for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values)), m


class KID(Metric):
    """`--metrics kid`: Inception features as for fid (--inception-graph or --inception-weights)."""

    name = "kid"
    applies_to_real = False

    def __init__(self, ctx):
        super().__init__(ctx)
        self.graph, self.weights = ctx.option("inception_graph"), ctx.option("inception_weights")
        inception.check_paths(self.graph, self.weights, "KID")
        if len(ctx.rows) < 2:
            raise EvalError(f"--num-images {len(ctx.rows)}: KID needs at least 2 images")
        self.subsets = int(ctx.option("kid_subsets", SUBSETS))
        self.subset_size = int(ctx.option("kid_subset_size", SUBSET_SIZE))

    def prepare(self):
        self.extractor = inception.load(self.graph, self.weights, "KID")
        self.reference = self._reference_features()
        self.reset()

    def reset(self):
        self.features = []

    def _cache_path(self):
        return inception.reference_cache_path(self.ctx, self.extractor, self.graph, self.weights, "features")

    def _reference_features(self) -> np.ndarray:
        path = self._cache_path()
        if tf.io.gfile.exists(path):
            with np.load(path) as f:
                return f["features"]
        ctx = self.ctx
        features = np.concatenate([self.extractor(b["images"].numpy())[0]
                                   for b in data.eval_images(ctx.cfg, ctx.split, ctx.batch_size)]).astype(np.float32)
        buffer = io.BytesIO()
        np.savez(buffer, features=features, about=json.dumps({"split": ctx.split, "extractor": self.extractor.source}))
        atomic_write(path, buffer.getvalue())
        return features

    def update(self, images, samples):
        self.features.append(self.extractor(images)[0])

    def result(self):
        features = np.concatenate(self.features)
        mean, std, m = kernel_inception_distance(features, self.reference, self.subsets, self.subset_size,
                                                 seed=self.ctx.seed)
        return {"value": mean, "std": std, "images": len(features), "reference_images": len(self.reference),
                "subsets": self.subsets, "subset_size": m, "features": self.extractor.source,
                "weights": self.extractor.path, "reference_cache": self._cache_path(),
                **({"note": "keras.applications weights: not comparable with KID from the 2015 graph"}
                   if self.extractor.source.startswith("keras") else {})}

    @staticmethod
    def format(r):
        lines = [f"kid: {r['value']:.5f} +- {r['std']:.5f} (x 1,000: {1000 * r['value']:.2f}; {r['subsets']} subsets of "
                 f"{r['subset_size']:,} from {r['images']:,} generated vs {r['reference_images']:,} real images; "
                 f"{r['features']})"]
        lines += [f"  note: {r['note']}"] if "note" in r else []
        return lines + ["  (unbiased at any image count, unlike FID: figures from different counts compare; the "
                        "+- is the spread over subsets, which narrows as the subset size grows)"]
