"""Pieces of the training steps that keep their numerics while doing less work: the fused EMA
update, loss scaling only where float16 needs it, and the loop's on-device non-finite guard."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf.config import load_config, needs_loss_scaling
from mirrorgan_tf.distribute import build_strategy
from mirrorgan_tf.runs import RunDir
from mirrorgan_tf.training import gan, loop, steps
from tests.conftest import CONFIGS

VOCAB = 30


def _state(*overrides):
    cfg = load_config(CONFIGS / "shapes_smoke.yaml", list(overrides))
    keras.utils.set_random_seed(0)
    return cfg, gan.GanTrainState(cfg, build_strategy("one_device"), VOCAB)


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_update_equals_the_direct_formula(warmup):
    _, state = _state()
    rng = np.random.default_rng(1)
    glam, ema = state.nets.glam, state.glam_ema
    for v in glam.weights + ema.weights:  # distinct sources and targets, BN statistics included
        v.assign(rng.normal(size=v.shape).astype("float32"))
    state.step.assign(7)
    decay = 0.999
    expected_decay = min(decay, (1 + 7) / (10 + 7)) if warmup else decay
    expected = [expected_decay * t.numpy() + (1 - expected_decay) * s.numpy()
                for t, s in zip(ema.trainable_weights, glam.trainable_weights)]
    tf.function(lambda: state.ema_update(decay, warmup))()
    for got, want in zip(ema.trainable_weights, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)
    for target, source in zip(ema.non_trainable_weights, glam.non_trainable_weights):
        np.testing.assert_array_equal(target.numpy(), source.numpy())
    assert len(ema.non_trainable_weights) > 0 and len(ema.trainable_weights) > 10


@pytest.mark.parametrize("value,scaled", [(False, False), (True, True), ("float16", True), ("bfloat16", False)])
def test_only_float16_gets_a_loss_scale_optimizer(value, scaled):
    cfg, state = _state(f"train.mixed_precision={str(value).lower()}")
    assert needs_loss_scaling(cfg.train) is scaled
    for opt in [state.opt_g, *state.opts_d]:
        assert isinstance(opt, keras.optimizers.LossScaleOptimizer) is scaled
    plain = steps.adam(1e-3, 0.5, 0.999, loss_scaling=False)
    assert type(plain) is keras.optimizers.Adam and steps.scale_loss(plain, tf.constant(2.0)) == 2.0


def test_guard_names_the_first_non_finite_step_and_traces_once():
    guard = loop.NonFiniteGuard()
    for step, values in enumerate(([1.0, 2.0], [3.0, 4.0], [5.0, np.nan], [np.inf, np.nan], [1.0, 1.0]), 1):
        guard.record({"d": tf.constant(values[0]), "g": tf.constant(values[1])}, step)
        if step == 2:
            guard.check("gan", None)  # all finite so far: no error
    with pytest.raises(loop.NonFiniteLoss, match=r"stage 'gan', step 3: loss 'g' is nan; stopped without saving\. "
                                                 r"The latest checkpoint is still ckpt-2"):
        guard.check("gan", "ckpt-2")
    assert guard._record.experimental_get_tracing_count() == 1
    with pytest.raises(ValueError, match="losses changed"):
        guard.record({"d": tf.constant(1.0)}, 6)


def _toy_loop(tmp_path, losses_per_step, log_every, checkpoint_every):
    """run_loop over a real one-weight stage whose step returns the given losses in turn."""
    strategy = build_strategy("one_device")
    with strategy.scope():
        weight = tf.Variable(1.0, name="w")
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    state = loop.TrainState(tf.train.Checkpoint(w=weight, step=step_var), step_var, [weight])

    @tf.function
    def step_fn(batch):
        weight.assign_add(1.0)
        return {"loss": batch * weight}

    batches = iter(tf.constant(x, tf.float32) for x in losses_per_step)
    cadence = loop.Cadence(len(losses_per_step), checkpoint_every, 5, log_every)
    run = RunDir(str(tmp_path / "run"))
    return run, loop.run_loop("toy", run, strategy, state, step_fn, batches, cadence, global_batch=1)


def test_loop_stops_at_the_cadence_naming_the_first_bad_step_and_saves_nothing(tmp_path):
    # The NaN comes at step 5, between the checkpoint at step 4 and the next log/save at step 8.
    with pytest.raises(loop.NonFiniteLoss, match=r"stage 'toy', step 5: loss 'loss' is nan; .* still .*ckpt-4"):
        _toy_loop(tmp_path, [1.0, 1.0, 1.0, 1.0, np.nan, 1.0, 1.0, 1.0, 1.0], log_every=4, checkpoint_every=4)
    ckpts = tmp_path / "run" / "toy" / "checkpoints"
    assert tf.train.latest_checkpoint(str(ckpts)).endswith("ckpt-4")
    assert not (tmp_path / "run" / "stages.json").exists()


def test_loop_reads_the_last_losses_at_the_end(tmp_path):
    run, result = _toy_loop(tmp_path, [1.0, 2.0, 3.0], log_every=2, checkpoint_every=10)
    # Step n multiplies the batch by the weight after n increments: 3 x 4 at the last step.
    assert result.last_losses == {"loss": 12.0} and result.steps == 3
    assert json.loads(open(run.path("toy", "metrics.json")).read())["last_losses"] == {"loss": 12.0}
    assert tf.train.latest_checkpoint(run.checkpoints("toy")).endswith("ckpt-3")


def test_before_outputs_runs_before_every_save_and_sample_step_on_every_worker(tmp_path):
    """The GAN stage's standing statistics hook: called at checkpoint steps (4, 8), at sample_every's
    steps (3, 6, 9) although this toy run has no sampler (a worker that does not sample must
    still join a collective), and at the final step (10), before that step's checkpoint."""
    strategy = build_strategy("one_device")
    with strategy.scope():
        weight = tf.Variable(1.0, name="w")
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    state = loop.TrainState(tf.train.Checkpoint(w=weight, step=step_var), step_var, [weight])
    run = RunDir(str(tmp_path / "run"))
    calls = []

    def before_outputs(step):
        calls.append((step, tf.train.latest_checkpoint(run.checkpoints("toy"))))

    loop.run_loop("toy", run, strategy, state, lambda batch: {"loss": tf.constant(1.0)},
                  iter([tf.constant(1.0)] * 10), loop.Cadence(10, 4, 5, 100, sample_every=3), global_batch=1,
                  before_outputs=before_outputs)
    assert [step for step, _ in calls] == [3, 4, 6, 8, 9, 10]
    # Before the step's own checkpoint: at step 4 none was written yet, at step 10 the latest is step 8's.
    assert calls[1][1] is None and calls[-1][1].endswith("ckpt-8")


def _toy_session(run, strategy, pipeline, total, batch_size):
    """run_loop on a one-weight toy state for `total` steps (checkpoint every 2), each step adding
    1 to the weight and recording its batch's keys: (keys per step taken, the weight at the end)."""
    weight = tf.Variable(1.0, name="w")
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    state = loop.TrainState(tf.train.Checkpoint(w=weight, step=step_var), step_var, [weight])
    seen = []

    def step_fn(batch):
        seen.append([k.decode() for k in batch["key"].numpy()])
        weight.assign_add(1.0)
        return {"loss": tf.constant(1.0)}

    loop.run_loop("toy", run, strategy, state, step_fn, pipeline, loop.Cadence(total, 2, 5, 10), batch_size)
    return seen, float(weight.numpy())


def test_a_saved_input_position_that_cannot_fit_restarts_the_input_and_says_so(prepared_shapes, tmp_path, capsys):
    """run_loop with a real input pipeline: resumed with the same layout it goes on with the next
    batches; resumed where the saved position cannot continue (another per-worker batch, here; another
    number of workers is the same check, pinned in test_data) everything else restores, the input starts
    from its first batch, and the loop prints why."""
    from mirrorgan_tf import data

    cfg = load_config(CONFIGS / "shapes_smoke.yaml", [f"data.dir={prepared_shapes}"])
    strategy = build_strategy("one_device")
    run = RunDir(str(tmp_path / "run"))

    def session(batch_size, total):
        return _toy_session(run, strategy, data.DistributedInput(strategy, cfg, "train", batch_size=batch_size),
                            total, batch_size)

    def first_keys(batch_size, n):
        it = data.DistributedInput(strategy, cfg, "train", batch_size=batch_size)
        return [[k.decode() for k in next(it)["key"].numpy()] for _ in range(n)]

    assert session(8, 2) == (first_keys(8, 2), 3.0)
    assert session(8, 4) == (first_keys(8, 4)[2:], 5.0)  # the same layout: the next batches
    out = capsys.readouterr().out
    assert "cannot continue" not in out and "toy: resumed from" in out
    assert session(4, 6) == (first_keys(4, 2), 7.0)  # weights and step restored, the input from its start
    out = capsys.readouterr().out
    assert "toy: resumed from" in out and "at step 4" in out
    assert ("the input position in " in out and "cannot continue here (it was saved by 1 worker(s) reading 8 "
            "examples a step each, this run has 1 reading 4): the input starts from its beginning") in out
    # The restarted pipeline is what the next checkpoints hold: resumed again, it goes on.
    assert session(4, 8) == (first_keys(4, 4)[2:], 9.0)
    assert "cannot continue" not in capsys.readouterr().out


def test_a_position_saved_in_one_input_position_mode_restarts_the_input_in_the_other(prepared_shapes, tmp_path,
                                                                                       capsys):
    """run_loop with the real input: a checkpoint whose input position was saved with
    data.input_position=iterator, resumed with index (and back), restores weights and step and
    restarts the input from its first batch, printing why, instead of failing; resumed in the same
    mode, index goes on with its next batches."""
    from mirrorgan_tf import data

    strategy = build_strategy("one_device")
    run = RunDir(str(tmp_path / "run"))

    def cfg(mode):
        return load_config(CONFIGS / "shapes_smoke.yaml", [f"data.dir={prepared_shapes}", f"data.input_position={mode}",
                                                           "model.stages=1", "model.base_size=16"])

    def session(mode, total):
        return _toy_session(run, strategy, data.DistributedInput(strategy, cfg(mode), "train", 4), total, 4)

    def first_keys(mode, n):
        it = data.DistributedInput(strategy, cfg(mode), "train", 4)
        return [[k.decode() for k in next(it)["key"].numpy()] for _ in range(n)]

    index, iterator = first_keys("index", 4), first_keys("iterator", 2)
    assert index[:2] != iterator  # the two modes' orders differ, so the restart below is visible
    assert session("iterator", 2) == (iterator, 3.0)
    capsys.readouterr()
    assert session("index", 4) == (index[:2], 5.0)  # weights and step restored, the input from its start
    out = capsys.readouterr().out
    assert ("toy: the input position in " in out and "cannot continue here (it was saved with "
            "data.input_position=iterator, this run has index; set it back to iterator to continue the data): "
            "the input starts from its beginning") in out and "at step 2" in out
    assert session("index", 6) == (index[2:4], 7.0)  # the same mode: the next batches
    assert "cannot continue" not in capsys.readouterr().out
    assert session("iterator", 8) == (iterator, 9.0)
    assert "saved with data.input_position=index, this run has iterator" in capsys.readouterr().out


def test_mode_seeking_stages_all_adds_a_term_for_every_stage(prepared_shapes, monkeypatch):
    """train.mode_seeking_stages: "last" reads the final image only (Mao et al.'s one output); "all"
    one term per generated scale, each with the full weight. Same weights, batch and noise: the
    final stage's term is common to both, so "all" is larger by the smaller stages' terms (each > 0).
    train.mode_seeking_form=dsgan swaps the term for the diversity-sensitive one; train.stream_floor=real
    floors the STREAM term of each pair at its real image's loss."""
    from dataclasses import replace

    from mirrorgan_tf import data, losses

    calls = []  # the image widths the term is built on, recorded while the step is traced
    original = losses.mode_seeking_loss
    monkeypatch.setattr(losses, "mode_seeking_loss",
                        lambda images, latents, **kw: (calls[-1].append(int(images.shape[2])),
                                                       original(images, latents, **kw))[1])
    out = {}
    # Two stages, not the smoke config's three: "all" differs from "last" from the second stage on,
    # and each of the four steps below traces a third less.
    base = load_config(CONFIGS / "shapes_smoke.yaml", [f"data.dir={prepared_shapes}", "train.mode_seeking_weight=1",
                                                       "model.stages=2"])
    strategy = build_strategy("one_device")
    keras.utils.set_random_seed(0)
    state = gan.GanTrainState(base, strategy, data.vocab_size(base))  # one state: the switch is read by the step
    glam = state.nets.glam
    start = [v.numpy() for v in glam.weights]
    batch = next(iter(data.make_dataset(base, "train", batch_size=base.train.batch_size)))
    for stages in ("last", "all"):
        cfg = replace(base, train=replace(base.train, mode_seeking_stages=stages))
        for v, x in zip(glam.weights, start):  # the generator as it was before the other step
            v.assign(x)
        calls.append([])
        result = gan.make_train_step(cfg, strategy, state)(batch)
        out[stages], stream_loss = float(result["mode_seeking"]), float(result["stream"])
    sizes = list(cfg.image_sizes)
    assert len(sizes) >= 2 and calls == [sizes[-1:], sizes]
    # 1 / (d_image / d_latent + 1e-5) for images in [-1, 1] and unit-normal latents is > 0.1 each.
    assert out["all"] > out["last"] + 0.2 > 0.2
    # train.mode_seeking_form=dsgan: the same pairs and stages, Yang et al.'s bounded term instead
    # (mode_seeking_loss is not called): one term per stage, each in [-tau, 0), so their sum in
    # [-2 tau, 0) (an untrained generator's pairs differ: not 0).
    cfg = replace(base, train=replace(base.train, mode_seeking_stages="all", mode_seeking_form="dsgan"))
    for v, x in zip(glam.weights, start):
        v.assign(x)
    calls.append([])
    value = float(gan.make_train_step(cfg, strategy, state)(batch)["mode_seeking"])
    assert calls[-1] == [] and -len(sizes) * cfg.train.mode_seeking_tau <= value < 0
    # train.stream_floor=real on the same start, batch and noise: each pair's images are floored at
    # the loss of the real image their caption came from (> 0), so the term is smaller; not 0,
    # as some of the images read back worse than their real one.
    cfg = replace(base, train=replace(base.train, mode_seeking_stages="all", stream_floor="real"))
    for v, x in zip(glam.weights, start):
        v.assign(x)
    calls.append([])
    floored = float(gan.make_train_step(cfg, strategy, state)(batch)["stream"])
    assert 0 < floored < stream_loss


def test_stream_jitter_zooms_and_shifts_each_real_image_within_its_bounds_and_only_in_training():
    """stream.random_zoom / random_translation, read back with the spread metric's pixel reader on
    rendered shapes scenes: every object's side changes by a factor inside [1 / (1 + z), 1 / (1 - z)]
    and its centre moves by at most the shift plus what the zoom about the image centre adds, the
    draws differ between images, the flat background keeps its level, and training=False (or both
    switches at 0) leaves the images alone."""
    from types import SimpleNamespace

    from PIL import Image

    from mirrorgan_tf.metrics.spread import read_factors
    from mirrorgan_tf.training.stream import jitter
    from pipelines import shapes

    assert jitter(SimpleNamespace(random_zoom=0.0, random_translation=0.0)) is None
    scenes = [shapes.sample_scene("train", i)[0] for i in range(48)]
    pixels = np.stack([np.asarray(Image.fromarray(shapes.render(s)).resize((64, 64), Image.BILINEAR)) for s in scenes])
    images = tf.constant(pixels.astype(np.float32) / 127.5 - 1.0)
    before = read_factors(images)
    keras.utils.set_random_seed(0)
    zoom, shift = 0.12, 0.05
    augment = jitter(SimpleNamespace(random_zoom=zoom, random_translation=shift))
    np.testing.assert_array_equal(augment(images, training=False).numpy(), images.numpy())
    after = read_factors(augment(images, training=True))
    ratio = np.exp(after["size"] - before["size"])[:, 0]
    # 0.02: the reader's own error on a resampled anti-aliased edge (a small object is ~14 px wide).
    assert ratio.min() > 1 / (1 + zoom) - 0.02 and ratio.max() < 1 / (1 - zoom) + 0.02
    assert ratio.std() > zoom / 4  # drawn per image, not one factor for the batch
    for axis in ("centre_x", "centre_y"):
        moved = np.abs(after[axis] - before[axis])[:, 0]
        assert moved.max() < shift + zoom / (1 - zoom) * 0.23 + 0.01  # 0.23: the farthest nominal centre from the middle
        assert moved.std() > shift / 8
    assert np.abs(after["background"] - before["background"]).max() < 2.0  # levels 0-255: nearest fill


def test_stream_pretraining_with_jitter_saves_the_jitter_seed_state(prepared_shapes, tmp_path):
    """The stream stage trains with the switches on and its checkpoint holds the jitter's seed
    states beside dropout's, so a resumed run draws the zooms and shifts an unbroken one would."""
    from mirrorgan_tf.runs import find_checkpoint
    from mirrorgan_tf.training import stream

    cfg = load_config(CONFIGS / "shapes_smoke.yaml", [f"data.dir={prepared_shapes}", "stream.random_zoom=0.1",
                                                      "stream.random_translation=0.05"])
    run = RunDir(str(tmp_path / "run"))
    assert len(loop.random_states(stream.jitter(cfg.stream)).states) == 2  # a SeedGenerator per layer
    keras.utils.set_random_seed(0)
    result = stream.train(cfg, run, build_strategy("one_device"))
    assert result.steps == cfg.stream.max_steps and np.isfinite(float(result.last_losses["caption"]))
    saved = find_checkpoint(run.root, "stream")
    states = [name for name, _ in tf.train.list_variables(saved) if name.startswith(loop.RANDOM_STATE + "/")]
    assert len(states) == len(loop.random_states(result.checkpoint.encoder, result.checkpoint.decoder).states) + 2, states


def test_damsm_with_word_swap_negatives_feeds_each_images_swapped_caption_to_both_losses(prepared_shapes, tmp_path,
                                                                                          monkeypatch):
    """damsm.word_swap_negatives: the DAMSM stage encodes the swapped captions of its batch in the
    same STEM pass and hands them to the word and sentence losses as hard negatives (their
    arithmetic: tests/test_losses.py); it trains to its last step with finite losses. Without
    train.wrong_word_swaps there is nothing to swap: refused when the config loads."""
    from mirrorgan_tf.config import ConfigError
    from mirrorgan_tf.models import damsm as damsm_model
    from mirrorgan_tf.training import damsm

    seen = []
    for name in ("word_loss", "sentence_loss"):
        original = getattr(damsm_model, name)

        def record(*args, _original=original, _name=name, **kwargs):
            hard = kwargs.get("hard_words", kwargs.get("hard_sentence"))
            seen.append((_name, None if hard is None else tuple(hard.shape), tuple(args[1].shape)))
            return _original(*args, **kwargs)
        monkeypatch.setattr(damsm_model, name, record)
    cfg = load_config(CONFIGS / "shapes_smoke.yaml", [f"data.dir={prepared_shapes}", "damsm.word_swap_negatives=true"])
    assert cfg.train.wrong_word_swaps
    keras.utils.set_random_seed(0)
    result = damsm.train(cfg, RunDir(str(tmp_path / "run")), build_strategy("one_device"))
    assert result.steps == cfg.damsm.max_steps
    assert all(np.isfinite(float(v)) for v in result.last_losses.values())
    b, t, d = cfg.damsm.batch_size, cfg.data.words_num, cfg.model.embedding_dim
    assert sorted(set(seen)) == [("sentence_loss", (b, d), (b, d)), ("word_loss", (b, t, d), (b, t, d))]
    with pytest.raises(ConfigError, match="damsm.word_swap_negatives=true swaps the words of train.wrong_word_swaps"):
        load_config(CONFIGS / "shapes_smoke.yaml", ["damsm.word_swap_negatives=true", "train.wrong_word_swaps=[]"])


def test_joint_batch_norm_trains_both_losses_from_one_batch_of_real_and_generated_images(prepared_shapes):
    """train.d_batch_norm=joint: one step from the same weights, batch and noise as the original's
    separate passes gives finite losses, and other ones for D and G's adversarial term (the
    BatchNorm statistics differ), while the terms that never meet D (KL, STREAM) are equal."""
    from dataclasses import replace

    from mirrorgan_tf import data

    base = load_config(CONFIGS / "shapes_smoke.yaml", [f"data.dir={prepared_shapes}", "model.stages=2"])
    strategy = build_strategy("one_device")
    keras.utils.set_random_seed(0)
    state = gan.GanTrainState(base, strategy, data.vocab_size(base))
    nets = [state.nets.glam, *state.nets.discriminators, *state.opts_d, state.opt_g]
    start = [[v.numpy() for v in n.variables] for n in nets]
    batch = next(iter(data.make_dataset(base, "train", batch_size=base.train.batch_size)))
    out = {}
    for mode in ("separate", "joint"):
        for n, values in zip(nets, start):
            for v, x in zip(n.variables, values):
                v.assign(x)
        cfg = replace(base, train=replace(base.train, d_batch_norm=mode))
        out[mode] = {k: float(v) for k, v in gan.make_train_step(cfg, strategy, state)(batch).items()}
    assert all(np.isfinite(v) for r in out.values() for v in r.values())
    assert out["joint"]["d"] != pytest.approx(out["separate"]["d"], rel=1e-4)
    assert out["joint"]["g_adv"] != pytest.approx(out["separate"]["g_adv"], rel=1e-4)
    for k in ("kl", "stream"):
        assert out["joint"][k] == pytest.approx(out["separate"][k], rel=1e-5), k
