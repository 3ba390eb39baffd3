"""Pieces of every stage's step function: optimizers with loss scaling, and the arithmetic that
makes N replicas compute what one device computes on the global batch (each replica's batch-mean
loss scaled by 1 / N, gradients summed by the optimizer's all-reduce)."""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf


def adam(learning_rate, beta_1: float, beta_2: float, loss_scaling: bool, **kwargs):
    """keras Adam, wrapped in a LossScaleOptimizer when `loss_scaling` (pass
    `config.needs_loss_scaling(cfg.train)`: true under mixed_float16 only, whose small gradients
    would underflow; bfloat16 has float32's exponent range, and a LossScaleOptimizer there would
    only add its finiteness check and a skipped-step branch to every update)."""
    opt = keras.optimizers.Adam(learning_rate, beta_1=beta_1, beta_2=beta_2, **kwargs)
    return keras.optimizers.LossScaleOptimizer(opt) if loss_scaling else opt


def scale_loss(optimizer, loss):
    """The loss to differentiate: scaled up for a LossScaleOptimizer, as it is otherwise."""
    return optimizer.scale_loss(loss) if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else loss


def replica_scale() -> float:
    """1 / replicas: each replica's batch-mean loss times this sums to the global-batch mean."""
    return 1.0 / tf.distribute.get_strategy().num_replicas_in_sync


def reduce_losses(strategy: tf.distribute.Strategy, per_replica: dict) -> dict:
    """Per-replica losses (each already scaled by 1 / replicas) -> global values."""
    return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}


def distributed_step(strategy: tf.distribute.Strategy, replica_step: Callable[[dict], dict]):
    """A tf.function: one distributed batch -> `replica_step` on every replica -> the global
    losses (`reduce_losses`)."""
    @tf.function
    def step_fn(batch):
        return reduce_losses(strategy, strategy.run(replica_step, args=(batch,)))

    return step_fn


def clip_by_global_norm_across_replicas(grads, clip_norm: float):
    """Clip the global-batch gradient (the sum over replicas) by its norm, exactly as one device
    would; returns per-replica shares that the optimizer's own all-reduce sums back together."""
    ctx = tf.distribute.get_replica_context()
    n = tf.distribute.get_strategy().num_replicas_in_sync
    grads = [tf.convert_to_tensor(g) for g in grads]  # embedding gradients arrive as IndexedSlices
    total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads) if n > 1 else grads
    clipped, _ = tf.clip_by_global_norm(total, clip_norm)
    return [g / n for g in clipped]
