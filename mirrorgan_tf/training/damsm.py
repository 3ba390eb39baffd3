"""DAMSM pretraining: STEM and the DAMSM image encoder learn a joint text-image space.

AttnGAN's recipe: word + sentence losses in both directions, Adam (lr 2e-3, betas 0.5/0.999), the
learning rate x0.98 per epoch down to a tenth, and the text encoder's gradient clipped to norm
0.25 (clipped on the global-batch gradient, so replicas change nothing). Contrastive negatives are
the other captions of the same replica's batch.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from mirrorgan_tf import data
from mirrorgan_tf.models import damsm
from mirrorgan_tf.models.damsm import DamsmImageEncoder
from mirrorgan_tf.models.layers import synchronized_batch_norm
from mirrorgan_tf.models.networks import stem_from_config
from mirrorgan_tf.training import common, loop


class EpochDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr x decay per epoch, never below lr x min_factor."""

    def __init__(self, lr: float, decay: float, min_factor: float, steps_per_epoch: int):
        self.lr, self.decay, self.min_factor, self.steps_per_epoch = lr, decay, min_factor, steps_per_epoch

    def __call__(self, step):
        epoch = tf.cast(step // self.steps_per_epoch, tf.float32)
        return self.lr * tf.maximum(tf.pow(self.decay, epoch), self.min_factor)

    def get_config(self):
        return {"lr": self.lr, "decay": self.decay, "min_factor": self.min_factor,
                "steps_per_epoch": self.steps_per_epoch}


def build(cfg, vocab_size: int):
    stem = stem_from_config(cfg, vocab_size)
    encoder = DamsmImageEncoder.from_config_obj(cfg)
    ids = tf.ones((2, cfg.data.words_num), tf.int32)
    stem(ids, tf.fill([2], cfg.data.words_num))
    encoder(tf.zeros((2, cfg.image_sizes[-1], cfg.image_sizes[-1], 3)))
    return stem, encoder


def train(cfg, run: loop.RunDir, strategy: tf.distribute.Strategy) -> loop.LoopResult:
    d = cfg.damsm
    total, per_epoch = common.steps_for(cfg, d.batch_size, d.epochs, d.max_steps)
    mixed = cfg.train.mixed_precision
    with strategy.scope(), synchronized_batch_norm(cfg.train.sync_batch_norm and strategy.num_replicas_in_sync > 1):
        stem, encoder = build(cfg, data.vocab_size(cfg))
        schedule = EpochDecay(d.learning_rate, d.lr_decay, d.lr_min_factor, per_epoch)
        opt_text = common.adam(schedule, d.beta_1, d.beta_2, mixed)
        opt_image = common.adam(schedule, d.beta_1, d.beta_2, mixed)
        opt_text.build(stem.trainable_variables)
        opt_image.build(encoder.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(stem=stem, image_encoder=encoder, opt_text=opt_text, opt_image=opt_image,
                                     step=step)
    gammas = (d.gamma1, d.gamma2, d.gamma3)

    @tf.autograph.experimental.do_not_convert  # plain Python loops over stages: nothing to convert
    def replica_step(batch):
        scale = loop.replica_scale()
        text_vars, image_vars = stem.trainable_variables, encoder.trainable_variables
        with tf.GradientTape() as tape:
            words, sentence, mask = stem(batch["caption_ids"], batch["caption_len"], training=True)
            regions, code = encoder(batch["images"][-1], training=True)
            classes = common.pair_classes(batch)
            w0, w1, _ = damsm.word_loss(regions, words, mask, classes, *gammas)
            s0, s1 = damsm.sentence_loss(code, sentence, classes, gammas[2])
            loss = (w0 + w1 + s0 + s1) * scale
            scaled = common.scale_loss(opt_text, loss)
        grads = tape.gradient(scaled, text_vars + image_vars)
        text_grads = grads[: len(text_vars)]
        if not mixed:  # with loss scaling the clip would act on scaled gradients; skip it there
            text_grads = loop.clip_by_global_norm_across_replicas(text_grads, d.rnn_grad_clip)
        opt_text.apply_gradients(zip(text_grads, text_vars))
        opt_image.apply_gradients(zip(grads[len(text_vars):], image_vars))
        return {"word": (w0 + w1) * scale, "sentence": (s0 + s1) * scale}

    return common.run_stage(
        "damsm", cfg, run, strategy, checkpoint=checkpoint, step_var=step, replica_step=replica_step,
        batch_size=d.batch_size, total_steps=total,
        trained_variables=stem.trainable_variables + encoder.trainable_variables,
        learning_rates=lambda s: {"damsm": float(schedule(s))})
