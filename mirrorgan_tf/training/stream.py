"""STREAM pretraining: an ordinary "show and tell" captioner on real images, with STEM's
vocabulary. The authors name this step but ship no script for it; the recipe is the standard one
(Adam, lr 1e-3, teacher-forced cross-entropy, a frozen ImageNet backbone for CUB/COCO)."""

from __future__ import annotations

import tensorflow as tf

from mirrorgan_tf import data
from mirrorgan_tf.config import needs_loss_scaling
from mirrorgan_tf.models import stream
from mirrorgan_tf.models.networks import build_stream
from mirrorgan_tf.runs import RunDir
from mirrorgan_tf.training import loop, steps


def train(cfg, run: RunDir, strategy: tf.distribute.Strategy) -> loop.LoopResult:
    """Pretrain STREAM's encoder and decoder (checkpoint: encoder, decoder, optimizer, step). Each
    step returns the loss {"caption"} (teacher-forced cross-entropy, global-batch mean; with
    `stream.label_smoothing` the smoothed one, whose minimum is above 0)."""
    loop.check_backbones(cfg, ["stream"])  # before the first step, not after hours
    s = cfg.stream
    total, _ = loop.steps_for(cfg, s.batch_size, s.epochs, s.max_steps)
    with strategy.scope():
        encoder, decoder = build_stream(cfg, data.vocab_size(cfg),
                                        sync_batch_norm=cfg.train.sync_batch_norm and strategy.num_replicas_in_sync > 1)
        opt = steps.adam(s.learning_rate, 0.9, 0.999, needs_loss_scaling(cfg.train))
        variables = encoder.trainable_variables + decoder.trainable_variables
        opt.build(variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(encoder=encoder, decoder=decoder, optimizer=opt, step=step)

    @tf.autograph.experimental.do_not_convert  # plain Python loops over stages: nothing to convert
    def replica_step(batch):
        with tf.GradientTape() as tape:
            features = encoder(batch["images"][-1], training=True)
            logits = decoder(features, batch["caption_ids"], training=True)
            loss = tf.reduce_mean(stream.caption_loss(logits, batch["caption_ids"], batch["caption_len"],
                                                      s.label_smoothing))
            loss = loss * steps.replica_scale()
            scaled = steps.scale_loss(opt, loss)
        opt.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return {"caption": loss}

    return loop.run_loop(
        "stream", run, strategy, loop.TrainState(checkpoint, step, variables, loop.random_states(encoder, decoder)),
        steps.distributed_step(strategy, replica_step),
        data.DistributedInput(strategy, cfg, "train", batch_size=s.batch_size),
        loop.Cadence.for_stage(cfg, total), s.batch_size, learning_rates=lambda _: {"stream": s.learning_rate})
