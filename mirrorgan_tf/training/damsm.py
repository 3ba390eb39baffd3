"""DAMSM pretraining: STEM and the DAMSM image encoder learn a joint text-image space.

AttnGAN's recipe: word + sentence losses in both directions, Adam (lr 2e-3, betas 0.5/0.999), the
learning rate x0.98 per epoch down to a tenth, and the text encoder's gradient clipped to norm
0.25 (clipped on the global-batch gradient, so replicas change nothing). Contrastive negatives are
the other captions of the same replica's batch, and under `damsm.word_swap_negatives` each image's
own caption with one word swapped (`train.wrong_word_swaps`; models/damsm.py).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from mirrorgan_tf import data, losses
from mirrorgan_tf.config import needs_loss_scaling
from mirrorgan_tf.models import damsm
from mirrorgan_tf.models.networks import build_damsm_image_encoder, build_stem
from mirrorgan_tf.runs import RunDir
from mirrorgan_tf.training import loop, steps


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


def train(cfg, run: RunDir, strategy: tf.distribute.Strategy) -> loop.LoopResult:
    """Pretrain STEM and the DAMSM image encoder (checkpoint: stem, image_encoder, opt_text,
    opt_image, step). Each step returns the losses {"word", "sentence"} (both directions summed,
    global-batch means)."""
    loop.check_backbones(cfg, ["damsm"])  # before the first step, not after hours
    d = cfg.damsm
    total, per_epoch = loop.steps_for(cfg, d.batch_size, d.epochs, d.max_steps)
    loss_scaling = needs_loss_scaling(cfg.train)
    sync_batch_norm = cfg.train.sync_batch_norm and strategy.num_replicas_in_sync > 1
    with strategy.scope():
        stem = build_stem(cfg, data.vocab_size(cfg))
        encoder = build_damsm_image_encoder(cfg, sync_batch_norm=sync_batch_norm)
        schedule = EpochDecay(d.learning_rate, d.lr_decay, d.lr_min_factor, per_epoch)
        opt_text = steps.adam(schedule, d.beta_1, d.beta_2, loss_scaling)
        opt_image = steps.adam(schedule, d.beta_1, d.beta_2, loss_scaling)
        opt_text.build(stem.trainable_variables)
        opt_image.build(encoder.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(stem=stem, image_encoder=encoder, opt_text=opt_text, opt_image=opt_image,
                                     step=step)
    state = loop.TrainState(checkpoint, step, stem.trainable_variables + encoder.trainable_variables,
                            loop.random_states(stem, encoder))
    gammas = (d.gamma1, d.gamma2, d.gamma3)
    hard = d.word_swap_negatives

    @tf.autograph.experimental.do_not_convert  # plain Python loops over stages: nothing to convert
    def replica_step(batch):
        scale = steps.replica_scale()
        text_vars, image_vars = stem.trainable_variables, encoder.trainable_variables
        with tf.GradientTape() as tape:
            ids, lengths = batch["caption_ids"], batch["caption_len"]
            b = ids.shape[0]
            if hard:  # one STEM pass over both (a swap keeps the caption's length)
                ids, lengths = tf.concat([ids, batch["swapped_ids"]], 0), tf.concat([lengths, lengths], 0)
            words, sentence, mask = stem(ids, lengths, training=True)
            regions, code = encoder(batch["images"][-1], training=True)
            classes = losses.pair_classes(batch)
            hard_words, hard_mask, hard_sentence, weight = ((words[b:], mask[b:], sentence[b:], batch["swapped"])
                                                            if hard else (None,) * 4)
            w0, w1, _ = damsm.word_loss(regions, words[:b], mask[:b], classes, *gammas, hard_words=hard_words,
                                        hard_mask=hard_mask, hard_weight=weight)
            s0, s1 = damsm.sentence_loss(code, sentence[:b], classes, gammas[2], hard_sentence=hard_sentence,
                                         hard_weight=weight)
            loss = (w0 + w1 + s0 + s1) * scale
            scaled = steps.scale_loss(opt_text, loss)
        grads = tape.gradient(scaled, text_vars + image_vars)
        text_grads = grads[: len(text_vars)]
        if not loss_scaling:  # the clip would act on loss-scaled gradients; skip it there (float16)
            text_grads = steps.clip_by_global_norm_across_replicas(text_grads, d.rnn_grad_clip)
        opt_text.apply_gradients(zip(text_grads, text_vars))
        opt_image.apply_gradients(zip(grads[len(text_vars):], image_vars))
        return {"word": (w0 + w1) * scale, "sentence": (s0 + s1) * scale}

    return loop.run_loop(
        "damsm", run, strategy, state, steps.distributed_step(strategy, replica_step),
        data.DistributedInput(strategy, cfg, "train", batch_size=d.batch_size),
        loop.Cadence.for_stage(cfg, total), d.batch_size,
        learning_rates=lambda s: {"damsm": float(schedule(s))})
