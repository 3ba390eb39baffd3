"""python -m mirrorgan_tf.tune --config C --run-dir R [--tuner random|bayesian|hyperband] [--max-trials N]
                             [--trial-steps S] [--objective NAME] [--executions-per-trial K]
                             [--strategy auto|one_device|mirrored] [--set key=value ...]

A hyperparameter search over the GAN stage with Keras Tuner. The search space is the config's
`tune.space`; the flags set the `tune` keys of the same name. Prepares the dataset when
`data.dir` holds none, pretrains DAMSM and STREAM once into R/pretrained (unless damsm.checkpoint
and stream.checkpoint are set), then trains each trial's GAN stage in R/trials/<id> and scores it
on a fixed subset of test captions. Prints a table of every trial, writes it to R/trials.csv,
and writes R/best.yaml, which `python -m mirrorgan_tf.train --config R/best.yaml` trains as it is.

Run the same command again to continue a search: finished trials are kept, an interrupted trial
resumes from its checkpoint. Several processes or machines: Keras Tuner's distributed mode, one
chief (KERASTUNER_TUNER_ID=chief) and workers (KERASTUNER_TUNER_ID=tuner0, tuner1, ...), all with
KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT naming the chief, and the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

FLAG_KEYS = {"tuner": "tune.tuner", "max_trials": "tune.max_trials", "trial_steps": "tune.trial_steps",
             "objective": "tune.objective", "executions_per_trial": "tune.executions_per_trial"}
# Keys a restarted search may change: how many trials it runs in all.
RESTART_MAY_CHANGE = ("max_trials",)
WAIT_SECONDS = 24 * 3600  # how long a worker waits for the chief to prepare data and modules


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m mirrorgan_tf.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/shapes.yaml")
    p.add_argument("--run-dir", required=True, help="the search directory R (created; reused to continue)")
    p.add_argument("--tuner", choices=("random", "bayesian", "hyperband"), help="default: tune.tuner")
    p.add_argument("--max-trials", type=int, help="default: tune.max_trials")
    p.add_argument("--trial-steps", type=int, help="GAN steps per trial (hyperband: the most); default: "
                   "tune.trial_steps, else train.max_steps")
    p.add_argument("--objective", help="auto, attributes_x_spread, attributes, attributes_seen, attributes_unseen, "
                   "r_precision or fid "
                   "(default: tune.objective)")
    p.add_argument("--executions-per-trial", type=int, help="default: tune.executions_per_trial")
    p.add_argument("--strategy", choices=("auto", "one_device", "mirrored"), default="auto",
                   help="the tf.distribute strategy of this process's trials (auto: all its GPUs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def role() -> str:
    """'single', or in Keras Tuner's distributed mode 'chief' or 'worker' (its environment
    variables; a half-set environment is an error naming the missing variable)."""
    from mirrorgan_tf.config import ConfigError

    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        if not os.environ.get(name):
            raise ConfigError(f"KERASTUNER_ORACLE_IP is set but {name} is not: the distributed search needs "
                              f"KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT and KERASTUNER_TUNER_ID")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def load(a):
    """The searched config, flags applied as tune.* keys, with every cheap check done."""
    from mirrorgan_tf.config import ConfigError, load_config

    flags = [f"{key}={getattr(a, name)}" for name, key in FLAG_KEYS.items() if getattr(a, name) is not None]
    cfg = load_config(a.config, [*a.overrides, *flags])
    t = cfg.tune
    if not (t.trial_steps or cfg.train.max_steps):
        raise ConfigError("tune.trial_steps and train.max_steps are both 0: give trials a budget "
                          "(--trial-steps S)")
    if t.tuner == "hyperband" and (t.trial_steps or cfg.train.max_steps) < t.hyperband_unit_steps:
        raise ConfigError(f"--trial-steps {t.trial_steps or cfg.train.max_steps} is below "
                          f"tune.hyperband_unit_steps={t.hyperband_unit_steps}, Hyperband's unit of GAN steps")
    if t.objective.startswith("attributes") and cfg.data.dataset != "shapes":
        raise ConfigError(f"--objective {t.objective}: attribute labels exist only for the shapes dataset, "
                          f"not {cfg.data.dataset}; use r_precision or fid")
    if t.objective == "fid" and not (t.inception and os.path.exists(t.inception)):
        raise ConfigError(f"tune.objective=fid needs tune.inception, an existing Inception graph (.pb) or "
                          f"weights file; got {t.inception!r}")
    if t.tuner == "bayesian":
        try:
            import scipy  # noqa: F401
            import sklearn  # noqa: F401
        except ImportError as e:
            # Both are in setup.py's install_requires: missing means a broken or partial install.
            raise ConfigError(f"--tuner bayesian needs scipy and scikit-learn ({e.name} is missing): "
                              f"reinstall with pip install -e . (or pip install scipy scikit-learn)") from None
    return cfg


def check_restart(cfg, root: str) -> None:
    """A search directory belongs to one config: R/search.yaml is written at the first start,
    and a restart must resolve to the same config (only tune.max_trials may change)."""
    from mirrorgan_tf.config import ConfigError, dump_config, load_config, save_config, with_values

    path = os.path.join(root, "search.yaml")
    if not os.path.exists(path):
        save_config(cfg, path)
        return
    before = load_config(path)
    same = {f"tune.{k}": getattr(before.tune, k) for k in RESTART_MAY_CHANGE}
    if dump_config(with_values(cfg, same, "--run-dir check")) != dump_config(before):
        raise ConfigError(f"--run-dir {root}: this search was started with another config ({path}); only "
                          f"--max-trials may change when it continues. Use a new --run-dir")


def _stage_done(run_dir: str, stage: str) -> bool:
    path = os.path.join(run_dir, "stages.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return bool(json.load(f).get(stage, {}).get("done"))


def prepare_modules(cfg, root: str, objective, strategy) -> dict:
    """Data, the shared pretrained DAMSM and STREAM, and (r_precision) the independent DAMSM;
    each only if not there yet. Returns what every trial shares (written as R/search.json)."""
    from mirrorgan_tf.config import with_values
    from mirrorgan_tf.train import train

    pretrained_dir = os.path.join(root, "pretrained")
    pretrained = {}
    for stage in ("damsm", "stream"):
        given = getattr(cfg, stage).checkpoint
        if given:
            pretrained[stage] = os.path.abspath(given)
            print(f"{stage}: every trial uses {given}", flush=True)
            continue
        if not _stage_done(pretrained_dir, stage):
            print(f"{stage}: pretraining once for the whole search in {pretrained_dir}", flush=True)
            train(cfg, pretrained_dir, stage, strategy=strategy)
        pretrained[stage] = pretrained_dir
    eval_damsm = ""
    if objective.metric == "r_precision":
        if cfg.tune.eval_damsm:
            eval_damsm = os.path.abspath(cfg.tune.eval_damsm)
        else:
            # Scoring with the trials' own STEM would flatter them; this DAMSM sees other seeds.
            eval_damsm = os.path.join(root, "eval_damsm")
            if not _stage_done(eval_damsm, "damsm"):
                print(f"r_precision: training an independent DAMSM in {eval_damsm}", flush=True)
                independent = with_values(cfg, {"train.seed": cfg.train.seed + 1, "data.seed": cfg.data.seed + 1,
                                                "damsm.checkpoint": ""}, "the independent DAMSM")
                train(independent, eval_damsm, "damsm", strategy=strategy)
    return {"pretrained": pretrained, "eval_damsm": eval_damsm}


def _write_json(path: str, value: dict) -> None:
    from mirrorgan_tf.images import atomic_write

    atomic_write(path, json.dumps(value, indent=2) + "\n")


def _wait_for(path: str, what: str) -> None:
    for _ in range(WAIT_SECONDS):
        if os.path.exists(path):
            return
        time.sleep(1)
    raise TimeoutError(f"{path}: the chief never finished {what}")


def search(a) -> int:
    from mirrorgan_tf.data import DataError, check_shards, load_manifest
    from mirrorgan_tf.train import prepare_data

    cfg = load(a)
    me = role()
    root = os.path.abspath(a.run_dir)
    os.makedirs(root, exist_ok=True)
    if me != "worker":
        check_restart(cfg, root)

    from mirrorgan_tf.distribute import build_strategy
    from mirrorgan_tf.train import train
    from mirrorgan_tf.tuning import objective as objective_lib
    from mirrorgan_tf.tuning.tuner import GanTuner, Search, make_oracle, write_hparams_config

    prepare_data(cfg, chief=me != "worker")
    # Shard sizes now, before pretraining or any trial (each trial's train() checks the rest).
    shard_problems, note = check_shards(cfg.data.dir)
    if shard_problems:
        raise DataError(f"{cfg.data.dir}: cannot search on this dataset:\n  - " + "\n  - ".join(shard_problems))
    if note:
        print(f"note: {note}", flush=True)
    objective = objective_lib.resolve(cfg.tune.objective, load_manifest(cfg.data.dir))
    steps = cfg.tune.trial_steps or cfg.train.max_steps
    print(f"search: {cfg.tune.tuner}, objective {objective.describe()} on the first {cfg.tune.eval_captions} "
          f"test captions, {steps} GAN steps per trial, in {root}", flush=True)
    shared_path = os.path.join(root, "search.json")
    strategy = build_strategy(a.strategy) if me != "chief" else None
    if me == "worker":
        _wait_for(shared_path, "pretraining DAMSM and STREAM")
    else:
        _write_json(shared_path, prepare_modules(cfg, root, objective, strategy))
    with open(shared_path) as f:
        shared = json.load(f)
    info = Search(root=root, cfg=cfg, objective=objective, pretrained=shared["pretrained"],
                  eval_damsm=shared["eval_damsm"], steps=steps)
    if me != "worker":
        write_hparams_config(info)
    tuner = GanTuner(info, train, strategy, make_oracle(cfg, objective, steps))
    return run_and_report(info, tuner, me)


def run_and_report(info, tuner, me: str = "single") -> int:
    """Run (or continue) the search of `tuner` (a GanTuner over `info`, a tuning.tuner.Search),
    then, on the chief or a single process, print the table of trials, write R/trials.csv and
    R/best.yaml from the best COMPLETED trial. Raises ConfigError ("no trial completed") when no
    trial completed with a finite score, on the first run and on every rerun of a finished search
    (Keras Tuner's own best-trials list falls back on FAILED trials, which have no score)."""
    from mirrorgan_tf.config import ConfigError
    from mirrorgan_tf.tuning import results as results_lib

    root = info.root
    try:
        tuner.search()
    except RuntimeError as e:  # Keras Tuner's stop after too many failed trials in a row
        if "consecutive failures" not in str(e):
            raise
        print(f"search stopped: {str(e).splitlines()[0]} (tune.max_consecutive_failures)", file=sys.stderr)
    if me == "worker":
        print(f"worker {os.environ['KERASTUNER_TUNER_ID']}: no more trials", flush=True)
        return 0
    rows = results_lib.rows(info, tuner.oracle)
    print(results_lib.table(rows, info.objective, info.objective.scored_on(info.cfg)))
    results_lib.write_csv(rows, os.path.join(root, "trials.csv"))
    best = results_lib.best_trial(tuner.oracle)
    if best is None:
        raise ConfigError(f"{root}: no trial completed, so there is no best.yaml; see the reasons above "
                          f"and {os.path.join(root, 'trials')}/<id>/tune_result.json")
    best_path = os.path.join(root, "best.yaml")
    results_lib.write_best(info, best.trial_id, best.score, best_path)
    print(f"best: trial {best.trial_id}, {info.objective.name} {best.score:.4g} "
          f"(on {info.objective.scored_on(info.cfg)}); table {root}/trials.csv; "
          f"config {best_path}; TensorBoard: tensorboard --logdir {root}/trials", flush=True)
    return 0


def main(argv=None) -> int:
    a = parse(argv)
    from mirrorgan_tf.errors import run_cli
    from mirrorgan_tf.training.stop import TrainingStopped

    try:
        return run_cli(lambda: search(a))
    except TrainingStopped as e:  # SIGTERM / SIGINT in a trial's training: its checkpoint is written
        print(f"stopped: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
