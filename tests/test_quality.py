"""Quality while a run trains (training/quality.py) and its best checkpoint (runs.keep_best,
--checkpoint best of sample, evaluate and export), on a copy of the session's smoke run."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import CONFIGS

EVAL = ["train.max_steps=6", "train.eval_every=1", "train.eval_metrics=[attributes,spread,r_precision]",
        "train.eval_samples_per_caption=2", "train.best_metric=attributes_x_spread", "train.keep_checkpoints=1"]


def _scalars(log_dir: Path, prefix: str) -> dict:
    """{(tag, step): value} of the TensorBoard scalars under log_dir whose tag starts with prefix."""
    out = {}
    for name in tf.io.gfile.glob(str(log_dir / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(name):
            for v in event.summary.value:
                if v.tag.startswith(prefix):
                    out[(v.tag, event.step)] = float(tf.make_ndarray(v.tensor))
    return out


@pytest.fixture(scope="module")
def evaluated_run(trained_run, prepared_shapes, tmp_path_factory):
    """The smoke run's GAN stage continued from step 4 to 6, evaluating every step and keeping the
    best checkpoint, with one regular checkpoint kept: in this process (no second TensorFlow start)."""
    from mirrorgan_tf.config import load_config
    from mirrorgan_tf.train import train

    run_dir = tmp_path_factory.mktemp("quality") / "run"
    shutil.copytree(trained_run[0], run_dir)
    cfg = load_config(CONFIGS / "shapes_smoke.yaml", [f"data.dir={prepared_shapes}", *EVAL])
    train(cfg, str(run_dir), "gan")
    return run_dir, cfg


def test_a_gan_stage_with_eval_every_records_its_figures_with_counts_and_tensorboard_scalars(evaluated_run):
    run_dir, cfg = evaluated_run
    metrics = json.loads((run_dir / "gan" / "metrics.json").read_text())
    assert metrics["steps"] == 6 and "last_losses" in metrics  # the stage's own figures are still there
    during = metrics["during_training"]
    # The smoke config's first 24 test captions, twice each.
    assert (during["captions"], during["samples_per_caption"], during["images"]) == (24, 2, 48)
    assert "not a figure to compare with published ones" in during["note"]
    records = during["records"]
    assert sorted({r["step"] for r in records}) == [5, 6]  # resumed at 4
    by = {(r["metric"], r["step"]): r for r in records}
    for step in (5, 6):
        seen, unseen = by[("attributes/seen", step)], by.get(("attributes/unseen", step))
        # Each group's figure carries its own image count; together they are the 48 images.
        assert seen["images"] + (unseen["images"] if unseen else 0) == 48
        assert 0.0 <= seen["value"] <= 1.0
        assert by[("attributes_x_spread", step)]["images"] == 48
        assert by[("spread/all/balance", step)]["images"] == 48
        assert set(by[("attributes/seen/colour", step)]) == {"step", "metric", "value", "images"}
        # Two samples per caption: the share of captions whose two samples disagree on an attribute.
        assert 0.0 <= by[("attributes/seen/mixed", step)]["value"] <= 1.0
        assert by[("attributes/seen/mixed", step)]["images"] == seen["images"]
    assert [x["step"] for x in during["seconds"]] == [5, 6] and all(x["seconds"] > 0 for x in during["seconds"])
    tb = _scalars(run_dir / "logs" / "gan", "eval/")
    for step in (5, 6):
        for name in ("attributes/seen", "attributes_x_spread", "spread/all/balance"):
            assert tb[(f"eval/{name}", step)] == pytest.approx(by[(name, step)]["value"], rel=1e-6)


def test_the_best_checkpoint_outlives_keep_checkpoints_and_is_the_best_record(evaluated_run):
    from mirrorgan_tf import runs

    run_dir, _ = evaluated_run
    records = json.loads((run_dir / "gan" / "metrics.json").read_text())["during_training"]["records"]
    product = {r["step"]: r["value"] for r in records if r["metric"] == "attributes_x_spread"}
    best = runs.read_best(str(run_dir))
    # The first step with the highest figure (a later tie does not replace it).
    expected_step = max(sorted(product), key=lambda s: (product[s], -s))
    assert (best["step"], best["metric"], best["direction"]) == (expected_step, "attributes_x_spread", "max")
    assert best["value"] == pytest.approx(product[expected_step])
    assert best["checkpoint"] == f"ckpt-{expected_step}"
    # keep_checkpoints=1 left one regular checkpoint; the best lives beside them, whole.
    assert [os.path.basename(p) for p in runs.checkpoint_candidates(str(run_dir / "gan"), "gan")] == ["ckpt-6"]
    assert runs.find_checkpoint(runs.gan_weights_path(str(run_dir), "best"), "gan").endswith(f"best/ckpt-{expected_step}")
    assert runs.find_checkpoint(str(run_dir / "gan"), "gan").endswith("checkpoints/ckpt-6")


def test_keep_best_survives_the_rotation_and_restores_that_steps_weights(tmp_path):
    """runs.keep_best against a CheckpointManager keeping 1: the best copy of step 1 outlives the
    rotation that deletes step 1's own files, and restores step 1's values, not the latest ones."""
    from mirrorgan_tf import runs

    root = tmp_path / "run"
    value = tf.Variable([0.0, 0.0])
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=value), str(root / "gan" / "checkpoints"), 1)
    value.assign([1.0, 2.0])
    first = manager.save(checkpoint_number=1)
    runs.keep_best(str(root), first, {"step": 1, "metric": "m", "value": 0.5})
    for step in (2, 3):
        value.assign([10.0 * step, 0.0])
        manager.save(checkpoint_number=step)
    assert not tf.io.gfile.glob(first + ".*")  # rotated away
    restored = tf.Variable([0.0, 0.0])
    runs.restore_weights(runs.gan_weights_path(str(root), "best"), "gan", v=restored)
    assert restored.numpy().tolist() == [1.0, 2.0]
    # A newer best replaces the older one's files; the record says which.
    runs.keep_best(str(root), manager.latest_checkpoint, {"step": 3, "metric": "m", "value": 0.9})
    assert sorted(os.listdir(root / "gan" / "best")) == ["best.json", "checkpoint", "ckpt-3.data-00000-of-00001",
                                                         "ckpt-3.index"]
    assert runs.read_best(str(root))["step"] == 3


@pytest.mark.parametrize("checkpoint", ["best", "latest"])
def test_evaluate_gives_the_figures_recorded_at_the_checkpoints_step(evaluated_run, checkpoint):
    """The in-training evaluation is evaluate's: the same captions and seed on the best checkpoint
    give the figures recorded at its step (so --checkpoint best loaded that step's weights), and on
    the latest (step 6) those of step 6, scored after the metrics' reset()."""
    from mirrorgan_tf import runs
    from mirrorgan_tf.evaluate import evaluate, parse
    from mirrorgan_tf.training.quality import scalars

    run_dir, cfg = evaluated_run
    step = runs.read_best(str(run_dir))["step"] if checkpoint == "best" else 6
    results = evaluate(parse(["--run-dir", str(run_dir), "--checkpoint", checkpoint, "--metrics",
                              "attributes,spread,r_precision", "--num-images", "24", "--samples-per-caption", "2",
                              "--seed", str(cfg.train.seed), "--folds", "10",
                              "--classifier-steps", str(cfg.tune.classifier_steps)]))
    folder = "best" if checkpoint == "best" else "checkpoints"
    assert results["attributes"]["settings"]["checkpoint"].endswith(f"{folder}/ckpt-{step}")
    records = json.loads((run_dir / "gan" / "metrics.json").read_text())["during_training"]["records"]
    recorded = {r["metric"]: r["value"] for r in records if r["step"] == step}
    assert "r_precision" in recorded and "r_precision/std" in recorded
    figures = scalars(results)
    assert set(figures) == set(recorded)
    # attributes_x_spread is the figure `tune` maximises, computed the same way.
    from mirrorgan_tf.tuning import objective

    product = objective.value(objective.Objective("attributes_x_spread", "max"), results)
    assert figures["attributes_x_spread"][0] == pytest.approx(product, rel=1e-12)
    for name, (value, _) in figures.items():
        assert value == pytest.approx(recorded[name], rel=1e-4, abs=1e-6), name


@pytest.mark.parametrize("command", ["sample", "evaluate", "export"])
def test_checkpoint_best_on_a_run_without_one_exits_2_naming_the_run(trained_run, tmp_path, command, capsys):
    import importlib

    run_dir = str(trained_run[0])
    extra = {"sample": ["--caption", "a red circle", "--out", str(tmp_path / "out")], "evaluate": [],
             "export": ["--export-dir", str(tmp_path / "export")]}[command]
    main = importlib.import_module(f"mirrorgan_tf.{command}").main
    assert main(["--run-dir", run_dir, "--checkpoint", "best", *extra]) == 2
    err = capsys.readouterr().err
    assert f"error: {run_dir}: the run has no best checkpoint" in err and "train.best_metric" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "export").exists()


def test_bad_evaluation_keys_are_refused_before_any_stage_trains(prepared_shapes, tmp_path):
    from mirrorgan_tf.config import ConfigError, load_config
    from mirrorgan_tf.metrics import EvalError
    from mirrorgan_tf.train import train

    def run(*overrides):
        cfg = load_config(CONFIGS / "shapes_smoke.yaml", [f"data.dir={prepared_shapes}", *overrides])
        train(cfg, str(tmp_path / "run"), "all")

    with pytest.raises(EvalError, match="train.eval_metrics: unknown bleu"):
        run("train.eval_every=2", "train.eval_metrics=[bleu]")
    with pytest.raises(EvalError, match="train.eval_inception"):
        run("train.eval_every=2", "train.eval_metrics=[kid]")
    with pytest.raises(EvalError, match="eval_samples_per_caption >= 2"):
        run("train.eval_every=2", "train.eval_metrics=[spread]", "train.eval_samples_per_caption=1")
    with pytest.raises(EvalError, match="train.best_metric=kid: needs kid in train.eval_metrics"):
        run("train.eval_every=2", "train.eval_metrics=[attributes]", "train.best_metric=kid")
    with pytest.raises(ConfigError, match="train.best_metric='attributes/seen' needs evaluations"):
        run("train.best_metric=attributes/seen")
    assert not (tmp_path / "run" / "damsm").exists()  # nothing trained


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_a_mixed_precision_stage_evaluates_with_the_figures_of_a_float32_one(trained_run, prepared_shapes, tmp_path,
                                                                          policy):
    """`train.mixed_precision` sets a process-wide policy while the GAN stage trains; the evaluation
    during training builds its own networks (here the attribute classifier, trained on a copy of
    the data that has none cached, then loaded from that cache) as evaluate does, in float32, so
    they build at all and the figures are those of a float32 process on the same generator."""
    from mirrorgan_tf import runs
    from mirrorgan_tf.config import load_config
    from mirrorgan_tf.models.networks import dtype_policy
    from mirrorgan_tf.training.quality import QualityDuringTraining, scalars

    run_dir = str(trained_run[0])
    data_dir = tmp_path / "data"
    shutil.copytree(prepared_shapes, data_dir, ignore=shutil.ignore_patterns("eval_cache"))
    cfg = load_config(os.path.join(run_dir, "config.yaml"),
                      [f"data.dir={data_dir}", "train.eval_metrics=[attributes,spread]",
                       "train.eval_samples_per_caption=2", "train.best_metric="])
    stem, glam = runs.load_run(run_dir).generator()

    def figures():
        quality = QualityDuringTraining(cfg, runs.RunDir(run_dir), stem, glam)
        first = scalars(quality.evaluate())
        assert scalars(quality.evaluate()) == first  # after the metrics' reset, the same captions and noise
        return first

    with dtype_policy(policy):
        trained = figures()  # the classifier trains here, under the stage's policy
        cached = figures()   # and is read back from the cache
    assert list(data_dir.glob("eval_cache/attribute_classifier-*.weights.h5"))
    reference = figures()    # a float32 process
    assert set(trained) == set(reference) and "attributes_x_spread" in reference
    for name, (value, images) in reference.items():
        assert trained[name] == pytest.approx((value, images), rel=1e-6, abs=1e-9), name
        assert cached[name] == pytest.approx((value, images), rel=1e-6, abs=1e-9), name
