"""STREAM pretraining: an ordinary "show and tell" captioner on real images, with STEM's
vocabulary. The authors name this step but ship no script for it; the recipe is the standard one
(Adam, lr 1e-3, teacher-forced cross-entropy, a frozen ImageNet backbone for CUB/COCO)."""

from __future__ import annotations

import tensorflow as tf

from mirrorgan_tf import data
from mirrorgan_tf.models import stream
from mirrorgan_tf.models.layers import synchronized_batch_norm
from mirrorgan_tf.models.stream import StreamDecoder, StreamEncoder
from mirrorgan_tf.training import common, loop


def build(cfg, vocab_size: int):
    encoder = StreamEncoder.from_config_obj(cfg)
    decoder = StreamDecoder.from_config_obj(cfg, vocab_size)
    size = cfg.image_sizes[-1]
    decoder(encoder(tf.zeros((2, size, size, 3))), tf.ones((2, cfg.data.words_num), tf.int32))
    return encoder, decoder


def train(cfg, run: loop.RunDir, strategy: tf.distribute.Strategy) -> loop.LoopResult:
    s = cfg.stream
    total, _ = common.steps_for(cfg, s.batch_size, s.epochs, s.max_steps)
    with strategy.scope(), synchronized_batch_norm(cfg.train.sync_batch_norm and strategy.num_replicas_in_sync > 1):
        encoder, decoder = build(cfg, data.vocab_size(cfg))
        opt = common.adam(s.learning_rate, 0.9, 0.999, cfg.train.mixed_precision)
        variables = encoder.trainable_variables + decoder.trainable_variables
        opt.build(variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(encoder=encoder, decoder=decoder, optimizer=opt, step=step)

    @tf.autograph.experimental.do_not_convert  # plain Python loops over stages: nothing to convert
    def replica_step(batch):
        with tf.GradientTape() as tape:
            features = encoder(batch["images"][-1], training=True)
            logits = decoder(features, batch["caption_ids"], training=True)
            loss = tf.reduce_mean(stream.caption_loss(logits, batch["caption_ids"], batch["caption_len"]))
            loss = loss * loop.replica_scale()
            scaled = common.scale_loss(opt, loss)
        opt.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return {"caption": loss}

    return common.run_stage(
        "stream", cfg, run, strategy, checkpoint=checkpoint, step_var=step, replica_step=replica_step,
        batch_size=s.batch_size, total_steps=total, trained_variables=variables,
        learning_rates=lambda _: {"stream": s.learning_rate})
