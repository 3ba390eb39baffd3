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


def prepare_metrics(metrics: list[Metric], *, reset: bool = False) -> None:
    """Calls each metric's `prepare` (or, with reset=True, its `reset`, which may prepare anew)
    under Keras' float32 policy (runs.INFERENCE_POLICY), and puts the process's policy back.

    The networks a metric builds (the attribute classifier, a DAMSM, Inception) then compute in
    float32 whatever policy the process has: a training stage with `train.mixed_precision` sets a
    mixed policy process-wide, and a classifier built under it fails on its float32 constants
    (TypeError / InvalidArgumentError in Mul) or would score other figures than a float32 process.
    Every caller that prepares metrics (evaluate, the published protocol, the evaluation during
    training) goes through here. Raises whatever the metrics' prepare / reset raise."""
    from mirrorgan_tf.models.networks import dtype_policy
    from mirrorgan_tf.runs import INFERENCE_POLICY

    with dtype_policy(INFERENCE_POLICY):
        for m in metrics:
            m.reset() if reset else m.prepare()


__all__ = ["REGISTRY", "Context", "EvalError", "Metric", "prepare_metrics"]
