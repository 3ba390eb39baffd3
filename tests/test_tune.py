"""The hyperparameter search (`python -m mirrorgan_tf.tune`): space checks, and real searches on
the smoke config over the session's pretrained DAMSM and STREAM (`trained_run`), tiny trials.

The oracle's draws are seeded (tune.seed), so which trial gets which value is fixed; the tests
read each trial's values from its record and assert on them too.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from mirrorgan_tf.config import ConfigError, load_config, search_space
from tests.conftest import CONFIGS, REPO

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}


def search_config(tmp_path, data_dir, pretrained, space: dict, **tune) -> str:
    """A config file on the smoke config searching only `space` ({key: search}), with the
    session's pretrained modules, so a trial is one tiny GAN stage."""
    inherited = load_config(CONFIGS / "shapes_smoke.yaml").tune.space
    full = {section: {key: None for key in keys} for section, keys in inherited.items()}
    for dotted, spec in space.items():
        section, key = dotted.split(".")
        full.setdefault(section, {})[key] = spec
    # Two stages, not the smoke config's three, and no standing statistics: a trial's GAN stage
    # traces a third less and skips the EMA's training-mode pass (a trace of its own in every
    # process); the search machinery under test depends on neither (tests/test_standing_statistics.py
    # covers the pass).
    values = {"base": str(CONFIGS / "shapes_smoke.yaml"), "data": {"dir": str(data_dir)}, "model": {"stages": 2},
              "train": {"ema_standing_statistics": 0},
              "damsm": {"checkpoint": str(pretrained)}, "stream": {"checkpoint": str(pretrained)},
              "tune": {"tuner": "random", "seed": 0, "eval_captions": 20, **tune, "space": full}}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return str(path)


def tune_cmd(config, run_dir, *args):
    return [sys.executable, "-m", "mirrorgan_tf.tune", "--config", config, "--run-dir", str(run_dir), *args]


def run_tune(config, run_dir, *args, env=None, timeout=600):
    return subprocess.run(tune_cmd(config, run_dir, *args), cwd=REPO, capture_output=True, text=True,
                          env=env or ENV, timeout=timeout)


def read_rows(run_dir) -> list:
    with open(os.path.join(run_dir, "trials.csv")) as f:
        return list(csv.DictReader(f))


def attempts(run_dir, trial_id) -> list:
    with open(os.path.join(run_dir, "trials", trial_id, "attempts.jsonl")) as f:
        return [json.loads(line) for line in f]


def trial_result(run_dir, trial_id) -> dict:
    with open(os.path.join(run_dir, "trials", trial_id, "tune_result.json")) as f:
        return json.load(f)


# --- the space, checked like every other key (no TensorFlow work) ---

def test_default_spaces_parse_and_name_real_keys():
    shapes = search_space(load_config(CONFIGS / "shapes.yaml"))
    assert shapes["train.g_learning_rate"].log and shapes["train.g_learning_rate"].min == 5e-5
    assert shapes["train.beta_1"].values == [0.0, 0.5]
    # The objective rewards variety, so the search may weigh the term that brings it.
    assert shapes["train.mode_seeking_weight"].log and shapes["train.mode_seeking_weight"].min == 0.1
    cub = search_space(load_config(CONFIGS / "cub.yaml"))
    assert set(cub) == {"train.g_learning_rate", "train.d_learning_rate", "train.stream_weight"}
    assert load_config(CONFIGS / "cub.yaml").tune.objective == "auto"


@pytest.mark.parametrize("override, message", [
    ("tune.space.train.learning_rate={kind: float, min: 1, max: 2}",
     "tune.space.train.learning_rate: 'train.learning_rate' is not a key the search can set"),
    ("tune.space.model.text_norm={kind: float, min: 0.1, max: 2}",
     "tune.space.model.text_norm: kind float (a real range), but 'model.text_norm' takes one of 'none', 'rms'"),
    ("tune.space.train.batch_size={kind: int, min: 1, max: 8}",
     "tune.space.train.batch_size: 'train.batch_size' cannot take 1: train.batch_size must be >= 2"),
    ("tune.space.train.batch_size={kind: float, min: 2, max: 8}",
     "tune.space.train.batch_size: kind float (a real range), but 'train.batch_size' takes int"),
    ("tune.space.train.g_learning_rate={kind: float, min: 0, max: 0.1, log: true}",
     "tune.space.train.g_learning_rate: log scale needs min > 0, got 0"),
    ("tune.space.train.ema_warmup={kind: choice, values: [1, 0]}",
     "tune.space.train.ema_warmup.values: 1 is not a value 'train.ema_warmup' takes (bool)"),
    ("tune.space.train.mixed_precision={kind: choice, values: [1, bfloat16]}",
     "tune.space.train.mixed_precision.values: 1 is not a value 'train.mixed_precision' takes "
     "(one of False, True, 'float16', 'bfloat16')"),
    ("tune.space.train.mixed_precision={kind: choice, values: [false, bfloat16]}",
     "tune.space.train.mixed_precision.values: mixes types"),
    ("tune.space.train.ema_decay={kind: float, min: 0.9, max: 1.5}",
     "tune.space.train.ema_decay: 'train.ema_decay' cannot take 1.5: train.ema_decay must be in [0, 1)"),
    ("tune.space.train.stream_weight.values=[1, 2]",
     "tune.space.train.stream_weight: 'values' does not apply to kind float"),
    ("tune.space.train.stream_weight.kind=grid", "tune.space.train.stream_weight.kind: expected one of"),
    ("tune.space.tune.max_trials={kind: int, min: 1, max: 4}",
     "tune.space.tune.max_trials: 'tune.max_trials' is not a key the search can set"),
])
def test_a_bad_search_space_names_the_tune_key_and_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "shapes.yaml", [override])
    assert message in str(e.value)


def test_a_search_given_anew_replaces_and_null_removes():
    cfg = load_config(CONFIGS / "shapes.yaml", ["tune.space.train.g_learning_rate={kind: choice, values: [1e-4, 2e-4]}",
                                                "tune.space.train.kl_weight=null",
                                                "tune.space.train.stream_weight.max=20"])
    space = search_space(cfg)
    assert space["train.g_learning_rate"].kind == "choice" and space["train.g_learning_rate"].min is None
    assert space["train.g_learning_rate"].values == [1e-4, 2e-4]
    assert "train.kl_weight" not in space and space["train.stream_weight"].max == 20.0


def test_a_bayesian_search_lets_its_gaussian_process_choose_half_the_trials():
    from mirrorgan_tf.tuning import objective as objective_lib
    from mirrorgan_tf.tuning.tuner import make_oracle

    cfg = load_config(CONFIGS / "shapes.yaml")  # 8 trials over 5 keys
    objective = objective_lib.resolve("auto", {"attributes": True})
    # Keras Tuner's own default, 3 x 5 keys = 15 random points, would leave all 8 trials random.
    assert make_oracle(cfg, objective, 1200).num_initial_points == 4
    assert make_oracle(load_config(CONFIGS / "shapes.yaml", ["tune.max_trials=3"]), objective, 1200).num_initial_points == 2
    assert make_oracle(load_config(CONFIGS / "shapes.yaml", ["tune.initial_points=6"]), objective, 1200).num_initial_points == 6
    with pytest.raises(ConfigError, match=r"tune.initial_points must be >= 0 \(0: half of max_trials\), got -1"):
        load_config(CONFIGS / "shapes.yaml", ["tune.initial_points=-1"])


LABELLED = {"attribute_order": ["colour", "shape", "size", "position"],
            "attributes": {"colour": ["red", "blue"], "shape": ["circle"], "size": ["small"], "position": ["left"]}}


def test_auto_is_attributes_x_spread_with_attribute_labels_and_r_precision_without():
    from mirrorgan_tf.metrics import EvalError
    from mirrorgan_tf.tuning import objective as objective_lib

    auto = objective_lib.resolve("auto", LABELLED)
    assert (auto.name, auto.direction, auto.metrics, auto.metric) == (
        "attributes_x_spread", "max", ("attributes", "spread"), "attributes")
    assert auto.describe() == "attributes_x_spread (maximised)"
    plain = objective_lib.resolve("auto", {"dataset": "cub"})
    assert (plain.name, plain.direction, plain.metrics) == ("r_precision", "max", ("r_precision",))
    # The older objectives stay selectable by name.
    assert objective_lib.resolve("attributes", LABELLED).metrics == ("attributes",)
    assert objective_lib.resolve("fid", {}).direction == "min"
    with pytest.raises(EvalError, match="tune.objective=attributes_x_spread: the dataset has no attribute labels"):
        objective_lib.resolve("attributes_x_spread", {"dataset": "cub"})
    with pytest.raises(EvalError, match=r"tune.objective: unknown 'spread' \(known: auto, attributes_x_spread, "):
        objective_lib.resolve("spread", LABELLED)
    # What the figure is computed from, printed beside it.
    shapes = load_config(CONFIGS / "shapes.yaml", ["tune.samples_per_caption=4"])
    assert auto.scored_on(shapes) == "2,000 test captions x 4 samples = 8,000 images"
    assert plain.scored_on(shapes) == "2,000 test captions (1 image each)"
    # The shipped shapes config names it; auto would give the same there.
    assert load_config(CONFIGS / "shapes.yaml").tune.objective == "attributes_x_spread"


def test_attributes_x_spread_is_the_image_weighted_accuracy_times_the_spread_balance():
    from mirrorgan_tf.metrics import EvalError
    from mirrorgan_tf.tuning import objective as objective_lib

    results = {"attributes": {"value": {"seen": {"all": 0.9, "colour": 1.0, "images": 300},
                                        "unseen": {"all": 0.5, "colour": 0.8, "images": 100}}},
               "spread": {"value": {"all": {"balance": 0.25}, "seen": {"balance": 0.5},
                                    "unseen": {"balance": 0.1}}}}
    # (0.9 x 300 + 0.5 x 100) / 400 = 0.8 all four right; x 0.25 = 0.2.
    assert objective_lib.value(objective_lib.resolve("attributes_x_spread", LABELLED), results) == pytest.approx(0.2)
    assert objective_lib.value(objective_lib.resolve("attributes", LABELLED), results) == pytest.approx(0.8)
    assert objective_lib.value(objective_lib.resolve("attributes_unseen", LABELLED), results) == pytest.approx(0.5)
    # One picture per caption (balance 0) scores 0 however right its attributes are.
    collapsed = {**results, "spread": {"value": {"all": {"balance": 0.0}}}}
    assert objective_lib.value(objective_lib.resolve("attributes_x_spread", LABELLED), collapsed) == 0.0
    with pytest.raises(EvalError, match="tune.objective=attributes_x_spread: the spread metric gave no group 'all'"):
        objective_lib.value(objective_lib.resolve("attributes_x_spread", LABELLED),
                            {**results, "spread": {"value": {}}})


def test_attributes_x_spread_evaluates_both_metrics_in_one_call_with_k_samples_per_caption():
    from mirrorgan_tf import evaluate as evaluate_cli
    from mirrorgan_tf.metrics import EvalError
    from mirrorgan_tf.tuning import objective as objective_lib

    cfg = load_config(CONFIGS / "shapes.yaml")
    assert (cfg.tune.eval_captions, cfg.tune.samples_per_caption) == (2000, 4)
    a = evaluate_cli.parse(objective_lib.evaluation_args(objective_lib.resolve("auto", LABELLED), cfg, "R", ""))
    assert (a.metrics, a.num_images, a.samples_per_caption, a.seed, a.split) == ("attributes,spread", 2000, 4, 0, "test")
    # The one-image objectives draw one image per caption, as before.
    a = evaluate_cli.parse(objective_lib.evaluation_args(objective_lib.resolve("attributes", LABELLED), cfg, "R", ""))
    assert (a.metrics, a.num_images, a.samples_per_caption) == ("attributes", 2000, 1)
    # A spread needs two samples of a caption: refused when the config loads, naming the key ...
    with pytest.raises(ConfigError, match=r"tune.samples_per_caption must be >= 2 for tune.objective=attributes_x_spread"):
        load_config(CONFIGS / "shapes.yaml", ["tune.samples_per_caption=1"])
    with pytest.raises(ConfigError, match=r"tune.samples_per_caption must be >= 2 for tune.objective=auto "
                                          r"\(attributes_x_spread on shapes\)"):
        load_config(CONFIGS / "shapes.yaml", ["tune.objective=auto", "tune.samples_per_caption=1"])
    with pytest.raises(ConfigError, match="tune.samples_per_caption must be >= 1, got 0"):
        load_config(CONFIGS / "shapes.yaml", ["tune.objective=attributes", "tune.samples_per_caption=0"])
    # ... and, for a config that left it to auto on another labelled dataset, before evaluating.
    one = load_config(CONFIGS / "shapes.yaml", ["tune.objective=attributes", "tune.samples_per_caption=1"])
    with pytest.raises(EvalError, match="tune.samples_per_caption 1: tune.objective=attributes_x_spread"):
        objective_lib.evaluation_args(objective_lib.resolve("attributes_x_spread", LABELLED), one, "R", "")


def test_bad_flags_fail_before_any_work(tmp_path):
    r = run_tune(str(CONFIGS / "cub.yaml"), tmp_path / "R", "--objective", "attributes", "--trial-steps", "10")
    assert r.returncode == 2
    assert "error: --objective attributes: attribute labels exist only for the shapes dataset, not cub" in r.stderr
    assert not (tmp_path / "R").exists()


def test_a_search_whose_trials_all_fail_says_no_trial_completed_on_every_run(tmp_path, capsys):
    """Real Keras Tuner state: a GanTuner whose trainings all raise (as a diverging learning rate
    does), so every trial is FAILED; the search reports it, and so does its rerun, which resumes
    the finished search from disk."""
    from mirrorgan_tf import tune
    from mirrorgan_tf.training.loop import NonFiniteLoss
    from mirrorgan_tf.tuning import objective as objective_lib
    from mirrorgan_tf.tuning.tuner import GanTuner, Search, make_oracle

    cfg = load_config(CONFIGS / "shapes_smoke.yaml", ["tune.max_trials=2", "tune.max_consecutive_failures=5"])
    objective = objective_lib.resolve("attributes", LABELLED)
    root = str(tmp_path / "R")
    info = Search(root=root, cfg=cfg, objective=objective, pretrained={"damsm": root, "stream": root},
                  eval_damsm="", steps=4)
    calls = []

    def diverging(cfg, run_dir, stage, strategy=None):
        calls.append(run_dir)
        raise NonFiniteLoss("stage 'gan', step 1: the loss is nan")

    for run in range(2):
        tuner = GanTuner(info, diverging, None, make_oracle(cfg, objective, 4))
        with pytest.raises(ConfigError, match=r"R: no trial completed, so there is no best.yaml"):
            tune.run_and_report(info, tuner)
        assert len(calls) == 2, "the rerun trained again"  # trial 0 and 1, in the first run only
        rows = read_rows(root)
        assert [(r["trial"], r["status"], r["objective"]) for r in rows] == [("0", "FAILED", ""), ("1", "FAILED", "")]
        assert rows[0]["reason"] == "NonFiniteLoss: stage 'gan', step 1: the loss is nan"
        out = capsys.readouterr().out
        assert "FAILED" in out
        # The table's title says what every trial's figure is computed from.
        assert "objective: attributes (maximised), on 40 test captions (1 image each)\n" in out
        assert not os.path.exists(os.path.join(root, "best.yaml"))


def test_the_best_trial_is_the_best_completed_one_whatever_failed():
    import keras_tuner

    from mirrorgan_tf.tuning.results import best_trial

    for direction, expected in (("max", "2"), ("min", "1")):
        oracle = keras_tuner.oracles.RandomSearchOracle(objective=keras_tuner.Objective("x", direction))
        for trial_id, status, score in (("0", "FAILED", None), ("1", "COMPLETED", 0.2),
                                        ("2", "COMPLETED", 0.7), ("3", "COMPLETED", float("nan"))):
            oracle.trials[trial_id] = keras_tuner.engine.trial.Trial(oracle.get_space(), trial_id, status=status)
            oracle.trials[trial_id].score = score
        assert best_trial(oracle).trial_id == expected
    oracle.trials = {k: t for k, t in oracle.trials.items() if t.status == "FAILED"}
    assert best_trial(oracle) is None


# --- real searches ---

def test_a_search_records_a_diverging_trial_as_failed_and_its_best_config_trains(
        trained_run, prepared_shapes, tmp_path):
    run_dir, _ = trained_run
    config = search_config(tmp_path, prepared_shapes, run_dir,
                           {"train.g_learning_rate": {"kind": "choice", "values": [float("inf"), 0.0002]}})
    root = tmp_path / "R"
    r = run_tune(config, root, "--max-trials", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "objective: attributes_x_spread (maximised)" in r.stdout
    rows = {row["trial"]: row for row in read_rows(root)}
    assert list(rows) == ["0", "1"], rows
    # Seed 0 draws the infinite learning rate first: it fails, and the search goes on.
    failed, done = rows["0"], rows["1"]
    assert failed["train.g_learning_rate"] == "inf" and failed["status"] == "FAILED"
    assert failed["reason"].startswith("NonFiniteLoss: stage 'gan', step ")
    assert failed["objective"] == ""
    assert float(done["train.g_learning_rate"]) == 0.0002 and done["status"] == "COMPLETED"
    assert 0.0 <= float(done["objective"]) <= 1.0 and done["steps"] == "4"
    # Scored by attributes x spread balance, both from one evaluation: 20 captions x 4 samples.
    with open(root / "trials" / "1" / "metrics.json") as f:
        scored = json.load(f)["test"]
    assert scored["spread"]["samples_per_caption"] == 4 and scored["attributes"]["images"] == 80
    assert scored["attributes"]["settings"] == scored["spread"]["settings"]
    groups = scored["attributes"]["value"]
    accuracy = sum(g["all"] * g["images"] for g in groups.values()) / 80
    assert float(done["objective"]) == pytest.approx(accuracy * scored["spread"]["value"]["all"]["balance"])
    assert float(done["seconds"]) > 0 and done["reason"] == ""
    with open(root / "keras_tuner" / "trial_0" / "trial.json") as f:
        assert json.load(f)["status"] == "FAILED"
    # The table printed is the table written.
    assert "trial  status" in r.stdout and "FAILED" in r.stdout and "COMPLETED" in r.stdout
    # TensorBoard: the HParams columns at the top of trials/, each trial's session in its logs/.
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(root / "trials"))
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(root / "trials" / "1" / "logs"))

    # best.yaml: the completed trial's values, loads and validates, and trains as it is.
    best = load_config(root / "best.yaml")
    assert best.train.g_learning_rate == 0.0002 and best.train.max_steps == 4
    assert best.damsm.checkpoint == str(run_dir) and best.stream.checkpoint == str(run_dir)
    t = subprocess.run([sys.executable, "-m", "mirrorgan_tf.train", "--config", str(root / "best.yaml"),
                        "--run-dir", str(tmp_path / "best-run"), "--export-dir", str(tmp_path / "best-export")],
                       cwd=REPO, capture_output=True, text=True, env=ENV, timeout=600)
    assert t.returncode == 0, t.stdout[-3000:] + t.stderr[-3000:]
    with open(tmp_path / "best-run" / "stages.json") as f:
        stages = json.load(f)
    assert stages["gan"]["done"] and stages["gan"]["steps"] == 4 and stages["export"]["done"]


def test_a_killed_search_continues_without_repeating_finished_trials_and_no_policy_leaks(
        trained_run, prepared_shapes, tmp_path):
    run_dir, _ = trained_run
    config = search_config(tmp_path, prepared_shapes, run_dir,
                           {"train.mixed_precision": {"kind": "choice", "values": [False, True]}},
                           trial_steps=12, max_trials=2, seed=1)
    root = tmp_path / "R"
    proc = subprocess.Popen(tune_cmd(config, root), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=ENV, start_new_session=True)
    second_ckpt = root / "trials" / "1" / "gan" / "checkpoints" / "checkpoint"
    try:
        deadline = time.time() + 400
        while not (second_ckpt.exists() and (root / "trials" / "0" / "tune_result.json").exists()):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "the search never reached trial 1's first checkpoint"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (root / "trials" / "1" / "tune_result.json").exists(), "trial 1 finished before the kill"

    r = run_tune(config, root)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "gan: resumed from" in r.stdout
    rows = {row["trial"]: row for row in read_rows(root)}
    assert [row["status"] for row in rows.values()] == ["COMPLETED", "COMPLETED"]
    assert rows["0"]["steps"] == rows["1"]["steps"] == "12"
    # Trial 0 ran once; trial 1 twice (killed, then resumed), never a third trial.
    assert len(attempts(root, "0")) == 1 and len(attempts(root, "1")) == 2
    assert sorted(os.listdir(root / "trials")) == ["0", "1"] + sorted(
        n for n in os.listdir(root / "trials") if n.startswith("events"))
    # Seed 1 draws mixed precision first. The trial after it, in the same process, found the
    # float32 policy, and trained in float32; the mixed one trained in mixed_float16.
    first, second = trial_result(root, "0"), trial_result(root, "1")
    assert first["values"]["train.mixed_precision"] is True and first["policy_in_training"] == "mixed_float16"
    assert attempts(root, "1")[0]["pid"] == attempts(root, "0")[0]["pid"]
    assert attempts(root, "1")[0]["policy_at_start"] == "float32"
    assert second["values"]["train.mixed_precision"] is False and second["policy_in_training"] == "float32"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_chief_and_two_workers_run_each_trial_exactly_once(trained_run, prepared_shapes, tmp_path):
    run_dir, _ = trained_run
    config = search_config(tmp_path, prepared_shapes, run_dir,
                           {"train.stream_weight": {"kind": "choice", "values": [2.0, 5.0, 10.0, 20.0]}},
                           max_trials=4)
    root = tmp_path / "R"
    port = str(_free_port())
    procs = {}
    try:
        for tuner_id in ("chief", "tuner0", "tuner1"):
            env = {**ENV, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
                   "KERASTUNER_ORACLE_PORT": port}
            procs[tuner_id] = subprocess.Popen(tune_cmd(config, root), cwd=REPO, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, text=True, env=env)
        out = {k: p.communicate(timeout=600)[0] for k, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    for k, p in procs.items():
        assert p.returncode == 0, f"{k}:\n{out[k][-3000:]}"
    rows = read_rows(root)
    assert [row["trial"] for row in rows] == ["0", "1", "2", "3"]
    assert all(row["status"] == "COMPLETED" for row in rows)
    assert sorted(float(row["train.stream_weight"]) for row in rows) == [2.0, 5.0, 10.0, 20.0]
    ran_by = {}
    for row in rows:
        (attempt,) = attempts(root, row["trial"])  # exactly once
        ran_by[row["trial"]] = attempt["tuner"]
    assert set(ran_by.values()) == {"tuner0", "tuner1"}
    # One best.yaml, from the chief, which alone prints the table.
    assert (root / "best.yaml").exists() and load_config(root / "best.yaml").train.stream_weight in (2, 5, 10, 20)
    assert "objective: attributes_x_spread (maximised)" in out["chief"]
    assert "trial  status" not in out["tuner0"] and "trial  status" not in out["tuner1"]


def test_hyperband_counts_gan_steps_and_a_promoted_trial_starts_from_its_parents_checkpoint(tmp_path):
    import tensorflow as tf

    from mirrorgan_tf.tuning.objective import Objective
    from mirrorgan_tf.tuning.tuner import _continue_from, make_oracle

    cfg = load_config(CONFIGS / "shapes.yaml", ["tune.tuner=hyperband", "tune.hyperband_unit_steps=100"])
    oracle = make_oracle(cfg, Objective("attributes", "max"), steps=1200)
    assert oracle.max_epochs == 12 and oracle.factor == 3 and oracle.max_trials == cfg.tune.max_trials

    parent, child = tmp_path / "trials" / "0", tmp_path / "trials" / "3"
    step = tf.Variable(40, dtype=tf.int64)
    tf.train.CheckpointManager(tf.train.Checkpoint(step=step), str(parent / "gan" / "checkpoints"), 3).save(40)
    (parent / "tune_result.json").write_text("{}")
    (parent / "attempts.jsonl").write_text("{}\n")
    _continue_from(str(parent), str(child))
    latest = tf.train.latest_checkpoint(str(child / "gan" / "checkpoints"))
    assert latest is not None and latest.endswith("ckpt-40")
    restored = tf.Variable(0, dtype=tf.int64)
    tf.train.Checkpoint(step=restored).restore(latest).assert_consumed()
    assert int(restored.numpy()) == 40
    # The parent's own records stay the parent's.
    assert not (child / "tune_result.json").exists() and not (child / "attempts.jsonl").exists()
    # A promoted trial that was interrupted resumes from its own checkpoint, not a fresh copy.
    step.assign(60)
    tf.train.CheckpointManager(tf.train.Checkpoint(step=step), str(child / "gan" / "checkpoints"), 3).save(60)
    _continue_from(str(parent), str(child))
    assert tf.train.latest_checkpoint(str(child / "gan" / "checkpoints")).endswith("ckpt-60")
    with pytest.raises(FileNotFoundError, match="has no gan checkpoint"):
        _continue_from(str(tmp_path / "trials" / "9"), str(tmp_path / "trials" / "10"))
