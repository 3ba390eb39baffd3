"""The MirrorGAN loop: GLAM against one discriminator per scale, with STEM and STREAM frozen.

Per step, as the reference: GLAM generates every scale once; each discriminator is updated on its
real / fake / wrong terms; then GLAM is updated with the adversarial terms of all stages (using the
updated discriminators), the KL term, lambda x the STREAM redescription loss on the final image,
and optionally AttnGAN's DAMSM term. An EMA copy of GLAM (decay 0.999) is what samples and exports
use; with train.ema_standing_statistics its BatchNorm statistics are computed for its own weights
before every checkpoint, sample grid and evaluation (training/standing_statistics.py).

Losses each step returns (global-batch means, summed over replicas):
    d1 ... dN   discriminator i's loss: (real + cond real) / 2 + (fake + cond fake + cond wrong) / 3
    d           d1 + ... + dN
    g           the whole generator loss: g_adv + kl_weight x kl + stream_weight x stream
                (+ damsm_weight x damsm) (+ mode_seeking_weight x mode_seeking)
    g_adv       the adversarial terms of all stages (unconditional + conditional)
    kl          the conditioning augmentation's KL term (unweighted)
    stream      the STREAM redescription loss on the final image (unweighted)
    damsm       AttnGAN's DAMSM term (unweighted), only when train.damsm_weight > 0
    mode_seeking  the mode-seeking term (unweighted), only when train.mode_seeking_weight > 0: then
                the examples are paired (2i, 2i + 1) and the generator draws both of a pair from
                example 2i's caption with their own noises (`losses.mode_seeking_loss`, or under
                train.mode_seeking_form=dsgan `losses.diversity_sensitive_loss`, on the
                final image, or summed over every stage's under train.mode_seeking_stages=all;
                under train.mode_seeking_noise=z with example 2i's conditioning noise too); D scores
                the fakes against the captions they were drawn from, the real images against their own.

Distribution: each replica works on its share of the global batch; losses are scaled so that the
gradients sum to the global-batch gradient, BatchNorm statistics are all-reduced
(`train.sync_batch_norm`), the generator noise comes with the data, and the "wrong pair" term
pairs each image with the next sentence of the global batch. Two replicas therefore compute
what one device computes on the whole batch.
"""

from __future__ import annotations

import tensorflow as tf

from mirrorgan_tf import data, distribute, losses
from mirrorgan_tf.models.networks import (Networks, build_damsm_image_encoder, build_discriminators, build_glam,
                                          build_stem, build_stream)
from mirrorgan_tf.config import ConfigError, needs_loss_scaling
from mirrorgan_tf.runs import RunDir, for_restore, resolve_stage_checkpoint, restore_weights
from mirrorgan_tf.training import loop, steps
from mirrorgan_tf.training.quality import QualityDuringTraining
from mirrorgan_tf.training.sampler import Sampler
from mirrorgan_tf.training.standing_statistics import StandingStatistics


class GanTrainState:
    """Everything the GAN stage trains, freezes and saves, built in the strategy's scope.

    nets            Networks: STEM, STREAM and the DAMSM image encoder (None unless
                    train.damsm_weight > 0) frozen; GLAM and the discriminators trained
    glam_ema        the exponential moving average of GLAM (what samples and exports use)
    opt_g, opts_d   Adam for GLAM, one Adam per discriminator
    step            int64 variable, steps taken
    checkpoint      glam, glam_ema, opt_g, step, d0.., opt_d0.. (the frozen networks are restored
                    from their own stages, `restore_pretrained`)
    trained_variables  GLAM's and the discriminators' trainable variables
    random_state    the random seed states of GLAM, its EMA and the discriminators (saved by run_loop)

    `sync_batch_norm` (default: train.sync_batch_norm when the strategy has several replicas)
    all-reduces the BatchNorm statistics across replicas. The networks are built in a fixed order,
    so that a seed gives the same initial weights every time."""

    def __init__(self, cfg, strategy: tf.distribute.Strategy, vocab_size: int, sync_batch_norm=None):
        t = cfg.train
        if sync_batch_norm is None:
            sync_batch_norm = t.sync_batch_norm and strategy.num_replicas_in_sync > 1
        sync = sync_batch_norm
        # The frozen networks are restored whole from their stages' checkpoints (backbones
        # included), so their ImageNet backbones are built untrained: no file, no download.
        frozen_cfg = for_restore(cfg)
        with strategy.scope():
            # Under train.xla they run inside the compiled step: no cuDNN LSTM there.
            stem = build_stem(cfg, vocab_size, xla=t.xla)
            stream_encoder, stream_decoder = build_stream(frozen_cfg, vocab_size, sync_batch_norm=sync, xla=t.xla)
            damsm_encoder = (build_damsm_image_encoder(frozen_cfg, sync_batch_norm=sync)
                             if t.damsm_weight > 0 else None)
            glam = build_glam(cfg, seed=t.seed, sync_batch_norm=sync)
            self.glam_ema = build_glam(cfg, seed=t.seed, sync_batch_norm=sync)
            for target, source in zip(self.glam_ema.weights, glam.weights):
                target.assign(source)
            discriminators = build_discriminators(cfg, sync_batch_norm=sync)
            for frozen in (stem, stream_encoder, stream_decoder, damsm_encoder):
                if frozen is not None:
                    frozen.trainable = False
            self.nets = Networks(stem, damsm_encoder, glam, discriminators, stream_encoder, stream_decoder)
            loss_scaling = needs_loss_scaling(t)
            self.opt_g = steps.adam(t.g_learning_rate, t.beta_1, t.beta_2, loss_scaling)
            self.opt_g.build(glam.trainable_variables)
            self.opts_d = []
            for d in discriminators:
                opt = steps.adam(t.d_learning_rate, t.beta_1, t.beta_2, loss_scaling)
                opt.build(d.trainable_variables)
                self.opts_d.append(opt)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.checkpoint = tf.train.Checkpoint(
            glam=glam, glam_ema=self.glam_ema, opt_g=self.opt_g, step=self.step,
            **{f"d{i}": d for i, d in enumerate(discriminators)},
            **{f"opt_d{i}": o for i, o in enumerate(self.opts_d)})
        self.trained_variables = glam.trainable_variables + [v for d in discriminators for v in d.trainable_variables]
        self.random_state = loop.random_states(glam, self.glam_ema, *discriminators)

    def ema_update(self, decay: float, warmup: bool) -> None:
        """glam_ema <- decay x glam_ema + (1 - decay) x glam for the trainable weights; the
        BatchNorm statistics are copied (and, under train.ema_standing_statistics, recomputed for
        the averaged weights before anything reads them: training/standing_statistics.py). With
        `warmup` the decay is min(decay, (1 + n) / (10 + n)), n the steps taken before this one
        (as TensorFlow's ExponentialMovingAverage with num_updates), so the average does not drag
        the random initial weights along.

        Computed as glam_ema -= (1 - decay) x (glam_ema - glam), the same average rearranged as
        tf.train.ExponentialMovingAverage does, with the in-place AssignSubVariableOp of each
        weight's tf.Variable: one subtraction, one product and one in-place update per weight,
        where the direct formula takes two products, a sum and a full assign (and Keras'
        own `assign_sub` is a read, a subtraction and a full assign). Equal to the direct
        formula within float32 rounding (tests/test_training_steps.py). Under a tf.distribute
        strategy, call in cross-replica context: every replica's copy is updated."""
        decay = tf.constant(decay, tf.float32)
        if warmup:
            n = tf.cast(self.step, tf.float32)
            decay = tf.minimum(decay, (1.0 + n) / (10.0 + n))
        rate = 1.0 - decay
        glam = self.nets.glam
        for target, source in zip(self.glam_ema.trainable_weights, glam.trainable_weights):
            t, s = target.value, source.value  # the tf.Variables behind the Keras variables
            t.assign_sub(rate * (t - s), read_value=False)
        for target, source in zip(self.glam_ema.non_trainable_weights, glam.non_trainable_weights):
            target.value.assign(source.value, read_value=False)


def restore_pretrained(cfg, run: RunDir, state: GanTrainState) -> None:
    """STEM (and the DAMSM image encoder, when used) from the damsm stage, STREAM from the stream
    stage: the configured checkpoints, else this run's (FileNotFoundError when unfinished)."""
    nets = state.nets
    damsm_path = resolve_stage_checkpoint(run, "damsm", cfg.damsm.checkpoint)
    objects = {"stem": nets.stem}
    if nets.damsm_image_encoder is not None:
        objects["image_encoder"] = nets.damsm_image_encoder
    print(f"gan: STEM from {restore_weights(damsm_path, 'damsm', **objects)}", flush=True)
    stream_path = resolve_stage_checkpoint(run, "stream", cfg.stream.checkpoint)
    prefix = restore_weights(stream_path, "stream", encoder=nets.stream_encoder, decoder=nets.stream_decoder)
    print(f"gan: STREAM from {prefix}", flush=True)


def update_discriminators(discriminators, optimizers, real_images, fake_images, sentence, wrong, scale: float,
                          swapped=None, fake_sentence=None, joint_batch_norm=False, pairs=False):
    """One Adam step of every discriminator on its real / fake / wrong-pair terms
    (`losses.discriminator_loss`); the fakes are not differentiated. Runs in a replica context.

    real_images, fake_images: lists per stage of float32 [B, s, s, 3]; sentence [B, D]; wrong the
    replica's wrong pairs (`losses.wrong_pairs_across_replicas`); scale 1 / replicas; swapped
    None or the one-word-swap pairs (`train.wrong_word_swaps`, see `losses.discriminator_loss`);
    fake_sentence the sentences the fakes were drawn from when not `sentence` (mode seeking);
    joint_batch_norm `train.d_batch_norm == "joint"`; pairs `model.pair_discriminator` (the pair head's terms).
    Returns (sum of the scaled losses, {"d1": ..., "dN": ...} each scaled)."""
    total, per_stage = 0.0, {}
    for i, (d, opt, real, fake) in enumerate(zip(discriminators, optimizers, real_images, fake_images)):
        with tf.GradientTape() as tape:
            d_loss, _ = losses.discriminator_loss(d, real, fake, sentence, training=True, wrong=wrong,
                                                  swapped=swapped, fake_sentence=fake_sentence,
                                                  joint_batch_norm=joint_batch_norm, pairs=pairs)
            d_loss = d_loss * scale
            scaled = steps.scale_loss(opt, d_loss)
        opt.apply_gradients(zip(tape.gradient(scaled, d.trainable_variables), d.trainable_variables))
        total += d_loss
        per_stage[f"d{i + 1}"] = d_loss
    return total, per_stage


def make_train_step(cfg, strategy: tf.distribute.Strategy, state: GanTrainState):
    """A tf.function: one distributed batch -> dict of global losses (the keys in the module's
    docstring), after D and G are updated and the EMA has moved. Raises ValueError for
    train.xla=true with several replicas."""
    t = cfg.train
    nets, opt_g = state.nets, state.opt_g
    if t.xla and strategy.num_replicas_in_sync > 1:
        raise ConfigError("train.xla=true needs a single replica: under MirroredStrategy a jit-compiled step "
                          "cannot apply gradients; use --strategy one_device or xla=false")
    gammas = (cfg.damsm.gamma1, cfg.damsm.gamma2, cfg.damsm.gamma3)
    joint = t.d_batch_norm == "joint"
    pair_d = cfg.model.pair_discriminator
    # Rows 2i and 2i + 1 are drawn from caption 2i under mode seeking, and under the pair head (whose
    # real pairs the input pipeline groups by class: data.same_class_pairs).
    paired = t.mode_seeking_weight > 0 or pair_d

    @tf.autograph.experimental.do_not_convert  # plain Python loops over stages: nothing to convert
    def replica_step(batch):
        scale = steps.replica_scale()
        ids, lengths = batch["caption_ids"], batch["caption_len"]
        swapped = None
        if "swapped_ids" in batch:
            # One STEM pass over both: the LSTM's cost is per time step far more than per caption.
            # The swapped captions keep their length (one word replaced by one word).
            b = ids.shape[0] or tf.shape(ids)[0]
            words, sentence, mask = nets.stem(tf.concat([ids, batch["swapped_ids"]], 0),
                                              tf.concat([lengths, lengths], 0), training=False)
            words, sentence, mask, swapped_sentence = words[:b], sentence[:b], mask[:b], sentence[b:]
            swapped = (tf.stop_gradient(swapped_sentence),) + losses.swapped_pairs_across_replicas(batch["swapped"])
        else:
            words, sentence, mask = nets.stem(ids, lengths, training=False)
        words, sentence = tf.stop_gradient(words), tf.stop_gradient(sentence)
        # What the generator draws from: each example's own caption, or under mode seeking the
        # first caption of its pair (so each pair is one caption under two noises).
        g_ids, g_lengths, g_words, g_sentence, g_mask = ids, lengths, words, sentence, mask
        ca_noise = batch["ca_noise"]
        if paired:
            pair = losses.mode_seeking_pairs(ids.shape[0])
            g_ids, g_lengths, g_words, g_sentence, g_mask = (
                tf.gather(x, pair) for x in (ids, lengths, words, sentence, mask))
            ca_noise, latents = losses.mode_seeking_noises(batch["noise"], ca_noise, pair, t.mode_seeking_noise)
        out_losses = {}
        with tf.GradientTape() as g_tape:
            out = nets.glam(batch["noise"], g_sentence, g_words, g_mask, eps=ca_noise, training=True)
            fakes = out["images"]
            with g_tape.stop_recording():
                d_total, d_losses = update_discriminators(
                    nets.discriminators, state.opts_d, batch["images"], fakes, sentence,
                    losses.wrong_pairs_across_replicas(sentence, 2 if pair_d else 1), scale, swapped=swapped,
                    fake_sentence=None if g_sentence is sentence else g_sentence, joint_batch_norm=joint,
                    pairs=pair_d)
                out_losses.update(d_losses)
            adversarial = tf.add_n([losses.generator_adversarial_loss(d, fake, g_sentence, training=True,
                                                                      real=(real, sentence) if joint else None,
                                                                      pairs=pair_d)
                                    for d, fake, real in zip(nets.discriminators, fakes, batch["images"])])
            kl = losses.kl_loss(out["mu"], out["logvar"])
            floor = None
            if t.stream_floor != "none":
                with g_tape.stop_recording():
                    # The real image each generated one's caption came from (its pair's first under mode seeking).
                    real = tf.gather(batch["images"][-1], pair) if paired else batch["images"][-1]
                    floor = losses.stream_caption_losses(nets.stream_encoder, nets.stream_decoder, real, g_ids, g_lengths,
                                                         per_word=t.stream_floor == "real_words")
            redescription = losses.stream_loss(nets.stream_encoder, nets.stream_decoder, fakes[-1], g_ids, g_lengths,
                                               floor=floor)
            g_loss = adversarial + t.kl_weight * kl + t.stream_weight * redescription
            if t.mode_seeking_weight > 0:
                invariant = t.mode_seeking_gain_invariant
                term = ((lambda images, noise: losses.mode_seeking_loss(images, noise, gain_invariant=invariant))
                        if t.mode_seeking_form == "msgan" else
                        lambda images, noise: losses.diversity_sensitive_loss(images, noise, t.mode_seeking_tau,
                                                                              gain_invariant=invariant))
                seeking = tf.add_n([term(fake, latents) for fake in
                                    (fakes if t.mode_seeking_stages == "all" else fakes[-1:])])
                g_loss += t.mode_seeking_weight * seeking
                out_losses["mode_seeking"] = seeking * scale
            if nets.damsm_image_encoder is not None:
                damsm_term = losses.damsm_loss(nets.damsm_image_encoder, fakes[-1], g_words, g_sentence, g_mask,
                                               tf.gather(losses.pair_classes(batch), pair)
                                               if paired else losses.pair_classes(batch), gammas)
                g_loss += t.damsm_weight * damsm_term
                out_losses["damsm"] = damsm_term * scale
            g_loss = g_loss * scale
            scaled = steps.scale_loss(opt_g, g_loss)
        variables = nets.glam.trainable_variables
        grads = g_tape.gradient(scaled, variables)
        # Keep the optimizer's variable list whole even if some variable got no gradient.
        grads = [g if g is not None else tf.zeros_like(v) for g, v in zip(grads, variables)]
        opt_g.apply_gradients(zip(grads, variables))
        out_losses.update({"d": d_total, "g": g_loss, "g_adv": adversarial * scale, "kl": kl * scale,
                           "stream": redescription * scale})
        return out_losses

    step_fn = tf.function(replica_step, jit_compile=True) if t.xla else replica_step

    @tf.function
    def train_step(batch):
        # Only the tensors the step uses: XLA compiles no string tensors (keys, caption text).
        batch = {k: batch[k] for k in ("images", "caption_ids", "caption_len", "noise", "ca_noise", "class_id",
                                       "attributes", "swapped_ids", "swapped") if k in batch}
        result = steps.reduce_losses(strategy, strategy.run(step_fn, args=(batch,)))
        state.ema_update(t.ema_decay, t.ema_warmup)
        return result

    return train_step


def train(cfg, run: RunDir, strategy: tf.distribute.Strategy) -> loop.LoopResult:
    """Train the GAN stage of `run` (the damsm and stream stages must be done or configured)."""
    loop.check_backbones(cfg, ["gan"])  # before the first step, not after hours
    t = cfg.train
    total, _ = loop.steps_for(cfg, t.batch_size, t.epochs, t.max_steps)
    state = GanTrainState(cfg, strategy, data.vocab_size(cfg))
    restore_pretrained(cfg, run, state)
    train_step = make_train_step(cfg, strategy, state)
    chief = distribute.is_chief(strategy)
    sampler = Sampler(cfg, run, state.nets.stem, state.glam_ema) if chief else None
    # train.eval_every: the metrics on the chief (training/quality.py); every worker saves at those steps.
    evaluator = QualityDuringTraining(cfg, run, state.nets.stem, state.glam_ema) if chief and t.eval_every else None
    # Every worker: the EMA's BatchNorm statistics are in every worker's checkpoint.
    standing = (StandingStatistics(cfg, state.nets.stem, state.glam_ema)
                if t.ema_standing_statistics else None)
    return loop.run_loop(
        "gan", run, strategy, state, train_step,
        data.DistributedInput(strategy, cfg, "train", batch_size=t.batch_size),
        loop.Cadence.for_stage(cfg, total, sample_every=t.sample_every, eval_every=t.eval_every), t.batch_size,
        learning_rates=lambda _: {"g": t.g_learning_rate, "d": t.d_learning_rate}, on_sample=sampler,
        on_evaluate=evaluator, before_outputs=(lambda _: standing()) if standing else None)
