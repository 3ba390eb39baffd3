"""Frechet Inception Distance between generated images and the real images of the split.

d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)). tr((S1 S2)^(1/2)) is the sum of the square
roots of the eigenvalues of S1^(1/2) S2 S1^(1/2), which is symmetric positive semi-definite, so
only symmetric eigendecompositions are needed (no complex sqrtm and its imaginary residue).
Reference statistics are cached per dataset, split, image size and feature extractor.

FID is biased upward at small sample sizes, and strongly below the feature size (2,048 for the
Inception pool features), where the covariance estimate is rank-deficient: two samples of one
2,048-d standard Gaussian (true distance 0) score 6,116 at N = 2, 3,654 at N = 50, 1,027 at
N = 2,048 and 350 at N = 6,000 (numpy seed 0). Figures are only
comparable at equal image counts, so every result carries both counts, a warning below
MIN_IMAGES, and a note below the 30,000 generated images of the published protocol.
"""

from __future__ import annotations

import io
import json

import numpy as np
import tensorflow as tf

from mirrorgan_tf import data
from mirrorgan_tf.images import atomic_write
from mirrorgan_tf.metrics import inception
from mirrorgan_tf.metrics.base import PUBLISHED_IMAGES, EvalError, Metric, below_protocol


MIN_IMAGES = 2048  # the Inception pool feature size: fewer images give a rank-deficient covariance


def small_sample_warning(generated: int, real: int) -> str | None:
    """The warning a FID figure from `generated` vs `real` images needs, or None."""
    if min(generated, real) >= MIN_IMAGES:
        return None
    return (f"FID from {generated:,} generated vs {real:,} real images: below {MIN_IMAGES:,} images the covariance "
            f"is rank-deficient and FID is biased upward (by thousands at a handful of images), so compare only "
            f"figures from the same counts; the published protocol uses {PUBLISHED_IMAGES:,} generated images")


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, np.float64)
    if len(features) < 2:
        raise EvalError(f"FID needs at least 2 images, got {len(features)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix):
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2.0), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


class FID(Metric):
    name = "fid"
    applies_to_real = False

    def __init__(self, ctx):
        super().__init__(ctx)
        self.graph, self.weights = ctx.option("inception_graph"), ctx.option("inception_weights")
        inception.check_paths(self.graph, self.weights, "FID")
        if len(ctx.rows) < 2:
            raise EvalError(f"--num-images {len(ctx.rows)}: FID needs at least 2 images")

    def prepare(self):
        self.extractor = inception.load(self.graph, self.weights, "FID")
        self.features = []
        self.reference = self._reference_statistics()

    def reset(self):
        self.features = []  # the extractor and the reference statistics stay

    def _cache_path(self):
        return inception.reference_cache_path(self.ctx, self.extractor, self.graph, self.weights, "fid")

    def _reference_statistics(self):
        path = self._cache_path()
        if tf.io.gfile.exists(path):
            with np.load(path) as f:
                return f["mu"], f["sigma"], int(f["count"])
        ctx = self.ctx
        feats = [self.extractor(b["images"].numpy())[0] for b in data.eval_images(ctx.cfg, ctx.split, ctx.batch_size)]
        mu, sigma = statistics(np.concatenate(feats))
        count = sum(len(f) for f in feats)
        buffer = io.BytesIO()
        np.savez(buffer, mu=mu, sigma=sigma, count=count,
                 about=json.dumps({"split": ctx.split, "extractor": self.extractor.source}))
        atomic_write(path, buffer.getvalue())
        return mu, sigma, count

    def update(self, images, samples):
        self.features.append(self.extractor(images)[0])

    def result(self):
        features = np.concatenate(self.features)
        mu, sigma = statistics(features)
        ref_mu, ref_sigma, count = self.reference
        warning = small_sample_warning(len(features), count)
        return {"value": frechet_distance(mu, sigma, ref_mu, ref_sigma), "images": len(features),
                "reference_images": count, "features": self.extractor.source, "weights": self.extractor.path,
                "reference_cache": self._cache_path(),
                **({"note": "keras.applications weights: not comparable with published FID"}
                   if self.extractor.source.startswith("keras") else {}),
                **({"warning": warning} if warning else {})}

    @staticmethod
    def format(r):
        lines = [f"fid: {r['value']:.2f} ({r['images']:,} generated vs {r['reference_images']:,} real images; "
                 f"{r['features']})"]
        lines += [f"  note: {r['note']}"] if "note" in r else []
        # Below MIN_IMAGES the warning says more; between it and the protocol's count, this note.
        count = below_protocol("FID", r["images"], why="FID falls as the image count grows")
        lines += [f"  note: {count}"] if count and "warning" not in r else []
        return lines + ([f"  warning: {r['warning']}"] if "warning" in r else [])
