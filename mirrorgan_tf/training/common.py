"""Helpers the trainers share: building under the strategy, optimizers, dataset iterators."""

from __future__ import annotations

import keras
import tensorflow as tf

from mirrorgan_tf import data
from mirrorgan_tf.training import loop


def adam(learning_rate, beta_1: float, beta_2: float, mixed_precision: bool, **kwargs):
    opt = keras.optimizers.Adam(learning_rate, beta_1=beta_1, beta_2=beta_2, **kwargs)
    return keras.optimizers.LossScaleOptimizer(opt) if mixed_precision else opt


def scale_loss(optimizer, loss):
    return optimizer.scale_loss(loss) if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else loss


def steps_for(cfg, batch_size: int, epochs: int, max_steps: int) -> tuple[int, int]:
    """(total steps, steps per epoch) of a stage: max_steps when set, else epochs over the data."""
    examples = data.load_manifest(cfg.data.dir)["splits"]["train"]["examples"]
    per_epoch = max(1, examples // batch_size)
    return (max_steps or epochs * per_epoch), per_epoch


def train_iterator(strategy, cfg, batch_size: int):
    return iter(data.distributed_dataset(strategy, cfg, "train", batch_size=batch_size))


def pair_classes(batch) -> tf.Tensor:
    """Ids that say which captions of a batch describe the same kind of image, so contrastive
    losses do not treat them as negatives: the class where known, else the combination of the
    attribute labels (shapes), else -1 (unknown: nothing masked)."""
    class_id = batch["class_id"]
    attributes = batch["attributes"]
    if attributes.shape[-1]:
        radix = tf.constant([1000**k for k in range(attributes.shape[-1])], tf.int64)
        combined = tf.reduce_sum(attributes * radix, axis=-1)
        return tf.where(class_id >= 0, class_id, combined)
    return class_id


def run_stage(stage: str, cfg, run, strategy, *, checkpoint, step_var, batch_size: int, total_steps: int,
              trained_variables, learning_rates, replica_step=None, step_fn=None, **extra):
    """Run one stage's loop with the config's checkpoint/log cadence. Give `replica_step` (one
    replica's step, returning scaled losses) or a ready distributed `step_fn`."""
    if step_fn is None:
        @tf.function
        def step_fn(batch):
            return loop.reduce_losses(strategy, strategy.run(replica_step, args=(batch,)))

    t = cfg.train
    return loop.run_loop(
        stage=stage, run=run, strategy=strategy, checkpoint=checkpoint, step_var=step_var, step_fn=step_fn,
        iterator=train_iterator(strategy, cfg, batch_size), total_steps=total_steps,
        checkpoint_every=t.checkpoint_every, keep=t.keep_checkpoints, log_every=t.log_every,
        global_batch=batch_size, learning_rates=learning_rates, trained_variables=trained_variables, **extra)
