"""The MirrorGAN loop: GLAM against one discriminator per scale, with STEM and STREAM frozen.

Per step, as the reference: GLAM generates every scale once; each discriminator is updated on its
real / fake / wrong terms; then GLAM is updated with the adversarial terms of all stages (using the
updated discriminators), the KL term, lambda x the STREAM redescription loss on the final image,
and optionally AttnGAN's DAMSM term. An EMA copy of GLAM (decay 0.999) is what samples and exports
use.

Distribution: each replica works on its share of the global batch; losses are scaled so that the
gradients sum to the global-batch gradient, BatchNorm statistics are all-reduced
(`train.sync_batch_norm`), the generator noise comes with the data, and the "wrong pair" term
pairs each image with the next sentence of the global batch. Two replicas therefore compute
what one device computes on the whole batch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mirrorgan_tf import data, losses
from mirrorgan_tf.config import ConfigError
from mirrorgan_tf.models.damsm import DamsmImageEncoder
from mirrorgan_tf.models.discriminators import build_discriminators
from mirrorgan_tf.models.glam import GLAM
from mirrorgan_tf.models.layers import synchronized_batch_norm
from mirrorgan_tf.models.networks import stem_from_config
from mirrorgan_tf.training import common, loop
from mirrorgan_tf.training import stream as stream_training

SAMPLE_CAPTIONS = 8


class GanModels:
    """Everything the GAN stage builds, in the strategy's scope."""

    def __init__(self, cfg, vocab_size: int):
        t, sizes = cfg.data.words_num, cfg.image_sizes
        self.stem = stem_from_config(cfg, vocab_size)
        ids, lengths = tf.ones((2, t), tf.int32), tf.fill([2], t)
        words, sentence, mask = self.stem(ids, lengths)
        self.stream_encoder, self.stream_decoder = stream_training.build(cfg, vocab_size)
        self.damsm_encoder = None
        if cfg.train.damsm_weight > 0:
            self.damsm_encoder = DamsmImageEncoder.from_config_obj(cfg)
            self.damsm_encoder(tf.zeros((2, sizes[-1], sizes[-1], 3)))
        self.glam = GLAM.from_config_obj(cfg, seed=cfg.train.seed)
        self.glam_ema = GLAM.from_config_obj(cfg, seed=cfg.train.seed)
        z = tf.zeros((2, cfg.model.z_dim))
        for g in (self.glam, self.glam_ema):
            g(z, sentence, words, mask)
        for target, source in zip(self.glam_ema.weights, self.glam.weights):
            target.assign(source)
        self.discriminators = build_discriminators(cfg)
        for d, s in zip(self.discriminators, sizes):
            d(tf.zeros((2, s, s, 3)), sentence)
        for frozen in (self.stem, self.stream_encoder, self.stream_decoder, self.damsm_encoder):
            if frozen is not None:
                frozen.trainable = False


def restore_pretrained(cfg, run: loop.RunDir, m: GanModels) -> None:
    damsm_path = loop.resolve_stage_checkpoint(run, "damsm", cfg.damsm.checkpoint)
    objects = {"stem": m.stem}
    if m.damsm_encoder is not None:
        objects["image_encoder"] = m.damsm_encoder
    print(f"gan: STEM from {loop.restore_weights(damsm_path, 'damsm', **objects)}", flush=True)
    stream_path = loop.resolve_stage_checkpoint(run, "stream", cfg.stream.checkpoint)
    prefix = loop.restore_weights(stream_path, "stream", encoder=m.stream_encoder, decoder=m.stream_decoder)
    print(f"gan: STREAM from {prefix}", flush=True)


def _global_wrong_pairs(sentence):
    """This replica's share of the global batch's wrong pairs (image i with sentence i + 1)."""
    ctx = tf.distribute.get_replica_context()
    n = ctx.num_replicas_in_sync
    if n == 1:
        return losses.wrong_pairs(sentence)
    b = tf.shape(sentence)[0]
    everything = ctx.all_gather(sentence, axis=0)
    start = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * b
    index = start + tf.range(b) + 1
    total = b * n
    # The last image's pair wraps to sentence 0 with weight 0, exactly as `losses.wrong_pairs`
    # rolls it on one device, so the BatchNorm statistics of the wrong-pair batch agree too.
    wrong = tf.ensure_shape(tf.gather(everything, index % total), sentence.shape)
    # Each replica's terms are later scaled by 1 / n, so weigh by n / (global pairs).
    weight = tf.where(index < total, tf.cast(n, tf.float32) / tf.cast(total - 1, tf.float32), 0.0)
    return wrong, weight


class GanState:
    """The networks, optimizers and step counter of the GAN stage, built in the strategy's scope."""

    def __init__(self, cfg, strategy: tf.distribute.Strategy, vocab_size: int, sync_batch_norm=None):
        t = cfg.train
        replicas = strategy.num_replicas_in_sync
        if sync_batch_norm is None:
            sync_batch_norm = t.sync_batch_norm and replicas > 1
        with strategy.scope(), synchronized_batch_norm(sync_batch_norm):
            self.models = GanModels(cfg, vocab_size)
            self.opt_g = common.adam(t.g_learning_rate, t.beta_1, t.beta_2, t.mixed_precision)
            self.opt_g.build(self.models.glam.trainable_variables)
            self.opts_d = []
            for d in self.models.discriminators:
                opt = common.adam(t.d_learning_rate, t.beta_1, t.beta_2, t.mixed_precision)
                opt.build(d.trainable_variables)
                self.opts_d.append(opt)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        m = self.models
        self.checkpoint = tf.train.Checkpoint(
            glam=m.glam, glam_ema=m.glam_ema, opt_g=self.opt_g, step=self.step,
            **{f"d{i}": d for i, d in enumerate(m.discriminators)},
            **{f"opt_d{i}": o for i, o in enumerate(self.opts_d)})

    def trained_variables(self):
        m = self.models
        return m.glam.trainable_variables + [v for d in m.discriminators for v in d.trainable_variables]


def make_train_step(cfg, strategy: tf.distribute.Strategy, state: GanState):
    """A tf.function: one distributed batch -> dict of global losses (D and G updated, EMA moved)."""
    t = cfg.train
    m, opt_g, opts_d = state.models, state.opt_g, state.opts_d
    if t.xla and strategy.num_replicas_in_sync > 1:
        raise ConfigError("train.xla=true needs a single replica: under MirroredStrategy a jit-compiled step "
                          "cannot apply gradients; use --strategy one_device or xla=false")
    gammas = (cfg.damsm.gamma1, cfg.damsm.gamma2, cfg.damsm.gamma3)

    @tf.autograph.experimental.do_not_convert  # plain Python loops over stages: nothing to convert
    def replica_step(batch):
        scale = loop.replica_scale()
        ids, lengths = batch["caption_ids"], batch["caption_len"]
        words, sentence, mask = m.stem(ids, lengths, training=False)
        words, sentence = tf.stop_gradient(words), tf.stop_gradient(sentence)
        out_losses = {}
        with tf.GradientTape() as g_tape:
            out = m.glam(batch["noise"], sentence, words, mask, eps=batch["ca_noise"], training=True)
            fakes = out["images"]
            with g_tape.stop_recording():
                wrong = _global_wrong_pairs(sentence)
                d_total = 0.0
                for i, (d, opt, real, fake) in enumerate(zip(m.discriminators, opts_d, batch["images"], fakes)):
                    with tf.GradientTape() as d_tape:
                        d_loss, _ = losses.discriminator_loss(d, real, fake, sentence, training=True, wrong=wrong)
                        d_loss = d_loss * scale
                        scaled = common.scale_loss(opt, d_loss)
                    opt.apply_gradients(zip(d_tape.gradient(scaled, d.trainable_variables), d.trainable_variables))
                    d_total += d_loss
                    out_losses[f"d{i + 1}"] = d_loss
            adversarial = tf.add_n([losses.generator_adversarial_loss(d, fake, sentence, training=True)
                                    for d, fake in zip(m.discriminators, fakes)])
            kl = losses.kl_loss(out["mu"], out["logvar"])
            redescription = losses.stream_loss(m.stream_encoder, m.stream_decoder, fakes[-1], ids, lengths)
            g_loss = adversarial + t.kl_weight * kl + t.stream_weight * redescription
            if m.damsm_encoder is not None:
                damsm_term = losses.damsm_loss(m.damsm_encoder, fakes[-1], words, sentence, mask,
                                               common.pair_classes(batch), gammas)
                g_loss += t.damsm_weight * damsm_term
                out_losses["damsm"] = damsm_term * scale
            g_loss = g_loss * scale
            scaled = common.scale_loss(opt_g, g_loss)
        variables = m.glam.trainable_variables
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
                                       "attributes")}
        result = loop.reduce_losses(strategy, strategy.run(step_fn, args=(batch,)))
        ema_update()
        return result

    def ema_update():
        decay = tf.constant(t.ema_decay, tf.float32)
        if t.ema_warmup:
            n = tf.cast(state.step, tf.float32)  # steps already taken before this one
            decay = tf.minimum(decay, (1.0 + n) / (10.0 + n))
        for target, source in zip(m.glam_ema.trainable_weights, m.glam.trainable_weights):
            target.assign(decay * target + (1.0 - decay) * source)
        for target, source in zip(m.glam_ema.non_trainable_weights, m.glam.non_trainable_weights):
            target.assign(source)

    return train_step


def train(cfg, run: loop.RunDir, strategy: tf.distribute.Strategy) -> loop.LoopResult:
    t = cfg.train
    total, _ = common.steps_for(cfg, t.batch_size, t.epochs, t.max_steps)
    state = GanState(cfg, strategy, data.vocab_size(cfg))
    restore_pretrained(cfg, run, state.models)
    train_step = make_train_step(cfg, strategy, state)
    sampler = Sampler(cfg, run, state.models) if loop.is_chief(strategy) else None
    return common.run_stage(
        "gan", cfg, run, strategy, checkpoint=state.checkpoint, step_var=state.step, step_fn=train_step,
        batch_size=t.batch_size, total_steps=total, trained_variables=state.trained_variables(),
        learning_rates=lambda _: {"g": t.g_learning_rate, "d": t.d_learning_rate},
        on_sample=sampler, sample_every=t.sample_every)


class Sampler:
    """Fixed test captions and fixed noise through the EMA generator: a PNG grid per call (one row
    per stage, the real images last) and TensorBoard images, with word attention maps."""

    def __init__(self, cfg, run: loop.RunDir, m: GanModels):
        self.run, self.m = run, m
        batch = next(iter(data.make_dataset(cfg, "test", batch_size=SAMPLE_CAPTIONS, training=False)))
        self.batch = batch
        rng = np.random.default_rng(cfg.train.seed)
        self.z = tf.constant(rng.normal(size=(SAMPLE_CAPTIONS, cfg.model.z_dim)), tf.float32)
        self.eps = tf.constant(rng.normal(size=(SAMPLE_CAPTIONS, cfg.model.condition_dim)), tf.float32)

    def generate(self, model):
        words, sentence, mask = self.m.stem(self.batch["caption_ids"], self.batch["caption_len"], training=False)
        return model(self.z, sentence, words, mask, eps=self.eps, training=False)

    def __call__(self, step: int, writer) -> None:
        out = self.generate(self.m.glam_ema)
        rows = [x.numpy() for x in out["images"]] + [self.batch["images"][-1].numpy()]
        grid = loop.image_grid(rows)
        loop.save_png(grid, f"{self.run.samples()}/gan-{step:07d}.png")
        with writer.as_default():
            tf.summary.image("samples/grid", grid[None], step=step)
            for i, images in enumerate(out["images"]):
                tf.summary.image(f"samples/stage{i + 1}", (images + 1.0) / 2.0, step=step, max_outputs=4)
            if out["word_attention"]:
                # Each word's attention over the last attended map, side by side, for caption 0.
                attn = out["word_attention"][-1][0]  # H, W, T
                n = int(self.batch["caption_len"][0])
                maps = tf.transpose(attn[..., :n], (2, 0, 1))[..., None]
                maps = maps / (tf.reduce_max(maps, axis=(1, 2, 3), keepdims=True) + 1e-8)
                tf.summary.image("attention/words", tf.concat(tf.unstack(maps), axis=1)[None], step=step)
                tf.summary.text("attention/caption", self.batch["caption"][0], step=step)
