"""Evaluation metrics, one file each, in a registry: name -> Metric class.

A metric is built with the evaluation context and checks its inputs at once (cheaply, so bad
input fails before any long computation); `prepare` loads or trains what it needs; `update` sees
each batch of generated images; `result` returns its numbers with the settings that produced them,
and the same metric on real images where it applies.
"""

from mirrorgan_tf.metrics.attributes import AttributeAccuracy
from mirrorgan_tf.metrics.base import Context, EvalError, Metric
from mirrorgan_tf.metrics.diversity import Diversity
from mirrorgan_tf.metrics.fid import FID
from mirrorgan_tf.metrics.inception_score import InceptionScore
from mirrorgan_tf.metrics.kid import KID
from mirrorgan_tf.metrics.r_precision import RPrecision
from mirrorgan_tf.metrics.spread import FactorSpread

REGISTRY: dict[str, type[Metric]] = {m.name: m for m in (RPrecision, FID, KID, InceptionScore, AttributeAccuracy, FactorSpread, Diversity)}

__all__ = ["REGISTRY", "Context", "EvalError", "Metric"]
