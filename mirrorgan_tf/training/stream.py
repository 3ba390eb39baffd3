"""STREAM pretraining: an ordinary "show and tell" captioner on real images, with STEM's
vocabulary. The authors name this step but ship no script for it; the recipe is the standard one
(Adam, lr 1e-3, teacher-forced cross-entropy, a frozen ImageNet backbone for CUB/COCO)."""

from __future__ import annotations

import keras
import tensorflow as tf

from mirrorgan_tf import data
from mirrorgan_tf.config import needs_loss_scaling
from mirrorgan_tf.models import stream
from mirrorgan_tf.models.networks import build_stream
from mirrorgan_tf.runs import RunDir
from mirrorgan_tf.training import loop, steps


def jitter(s) -> keras.Sequential | None:
    """The extra zoom and shift STREAM's pretraining may put on real images (`stream.random_zoom`,
    `stream.random_translation`; None when both are 0). Called with images float [B, H, W, 3] in
    [-1, 1] and training=True, it returns float32 of the same shape and range, each image zoomed by
    its own factor from [-random_zoom, random_zoom] (positive zooms out: the object shrinks by about
    1 / (1 + factor)) about the image centre, then shifted by up to random_translation x H and W,
    bilinearly, the uncovered border filled with the nearest edge pixel (the shapes backgrounds are
    flat). With training=False it returns the images unchanged. Its seed states are Keras
    SeedGenerators, saved with the checkpoint through `loop.random_states`."""
    layers = []
    if s.random_zoom:
        layers.append(keras.layers.RandomZoom(s.random_zoom, fill_mode="nearest", dtype="float32", name="zoom"))
    if s.random_translation:
        layers.append(keras.layers.RandomTranslation(s.random_translation, s.random_translation,
                                                     fill_mode="nearest", dtype="float32", name="translation"))
    return keras.Sequential(layers, name="stream_jitter") if layers else None


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
        augment = jitter(s)
    checkpoint = tf.train.Checkpoint(encoder=encoder, decoder=decoder, optimizer=opt, step=step)

    @tf.autograph.experimental.do_not_convert  # plain Python loops over stages: nothing to convert
    def replica_step(batch):
        with tf.GradientTape() as tape:
            images = batch["images"][-1]
            if augment is not None:
                images = augment(tf.cast(images, tf.float32), training=True)
            features = encoder(images, training=True)
            logits = decoder(features, batch["caption_ids"], training=True)
            loss = tf.reduce_mean(stream.caption_loss(logits, batch["caption_ids"], batch["caption_len"],
                                                      s.label_smoothing))
            loss = loss * steps.replica_scale()
            scaled = steps.scale_loss(opt, loss)
        opt.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return {"caption": loss}

    return loop.run_loop(
        "stream", run, strategy, loop.TrainState(checkpoint, step, variables, loop.random_states(encoder, decoder, *([augment] if augment else []))),
        steps.distributed_step(strategy, replica_step),
        data.DistributedInput(strategy, cfg, "train", batch_size=s.batch_size),
        loop.Cadence.for_stage(cfg, total), s.batch_size, learning_rates=lambda _: {"stream": s.learning_rate})
