"""The search: a Keras Tuner `Tuner` whose `run_trial` trains and scores the GAN stage.

Keras Tuner runs the search loop, the oracle (random, Bayesian optimisation, Hyperband), the
project folder that makes a search resumable, failed-trial bookkeeping and the distributed mode
(a chief oracle over gRPC, workers running trials). This module supplies only what a trial is:
`GanTuner.run_trial` (Keras Tuner's documented extension point for training loops of one's own)
trains the GAN stage of the trial's config in its own run directory, through the one function it
is given (`train_stage`, the training command's `train`), on DAMSM and STREAM pretrained once per
search, and returns the objective.

A search directory R holds:
    search.yaml        the resolved config the search started with (a restart must match it)
    keras_tuner/       Keras Tuner's project: oracle.json, trial_<id>/trial.json
    pretrained/        the DAMSM and STREAM every trial shares (unless given with --set)
    eval_damsm/        the independent DAMSM R-precision is scored with (r_precision only)
    trials/<id>/       each trial's run directory (config.yaml, gan/, logs/, samples/,
                       metrics.json, tune_result.json, attempts.jsonl); execution k > 0 of a
                       trial in trials/<id>-e<k>/; TensorBoard with the HParams view: --logdir R/trials
    trials.csv         one row per trial
    best.yaml          the best trial's config, for python -m mirrorgan_tf.train --config R/best.yaml
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import keras
import keras_tuner
import tensorflow as tf

from mirrorgan_tf import config as config_lib
from mirrorgan_tf import runs
from mirrorgan_tf.images import atomic_write
from mirrorgan_tf.tuning import objective as objective_lib
from mirrorgan_tf.tuning import space

PROJECT = "keras_tuner"


@dataclass
class Search:
    """What every trial of one search shares."""

    root: str  # R, absolute
    cfg: object  # the searched config (mirrorgan_tf.config.Config)
    objective: objective_lib.Objective
    pretrained: dict  # {"damsm": path, "stream": path}: the modules every trial starts from
    eval_damsm: str  # run directory of the independent DAMSM (r_precision), else ""
    steps: int  # GAN steps of a trial (hyperband: the most a trial gets)

    def trial_dir(self, trial_id: str, execution: int = 0) -> str:
        name = trial_id if execution == 0 else f"{trial_id}-e{execution}"
        return os.path.join(self.root, "trials", name)


def initial_points(tune_cfg) -> int:
    """How many trials the Bayesian oracle draws at random before its Gaussian process proposes:
    tune.initial_points, or for 0 half of tune.max_trials (at least 2, which a Gaussian process
    needs to fit anything)."""
    return tune_cfg.initial_points or max(2, tune_cfg.max_trials // 2)


def make_oracle(cfg, objective: objective_lib.Objective, steps: int) -> keras_tuner.Oracle:
    """The oracle `tune.tuner` names, over `space.hyperparameters(cfg)`, scoring `objective`.
    Hyperband's resource unit is `tune.hyperband_unit_steps` GAN steps: its max_epochs is
    steps / unit, so a trial of `e` units trains e x unit steps."""
    t = cfg.tune
    common = dict(objective=keras_tuner.Objective(objective.name, objective.direction),
                  hyperparameters=space.hyperparameters(cfg), tune_new_entries=False, allow_new_entries=False,
                  # Keras Tuner reads seed 0 as "no seed" (a random one), so tune.seed s is its s + 1.
                  seed=t.seed + 1, max_consecutive_failed_trials=t.max_consecutive_failures)
    if t.tuner == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=t.max_trials, **common)
    if t.tuner == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(
            max_trials=t.max_trials, num_initial_points=initial_points(t), **common)
    oracle = keras_tuner.oracles.HyperbandOracle(
        max_epochs=max(1, steps // t.hyperband_unit_steps), factor=t.hyperband_factor, **common)
    oracle.max_trials = t.max_trials  # a cap on top of Hyperband's own brackets
    return oracle


def _write_json(path: str, value: dict) -> None:
    atomic_write(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def _has_gan_checkpoint(run_dir: str) -> bool:
    return runs.find_checkpoint(os.path.join(run_dir, "gan"), "gan") is not None


def _continue_from(parent_dir: str, run_dir: str) -> None:
    """Hyperband promotion: the promoted trial starts from the parent trial's run (checkpoints,
    logs, samples), copied whole under a temporary name and renamed, so a kill mid-copy leaves
    no half run that would look resumable."""
    if _has_gan_checkpoint(run_dir):
        return  # this trial was interrupted after its copy: it resumes from its own checkpoints
    if not _has_gan_checkpoint(parent_dir):
        raise FileNotFoundError(f"{parent_dir}: the trial Hyperband promotes has no gan checkpoint to continue")
    tmp = f"{run_dir}.incomplete"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(parent_dir, tmp, ignore=shutil.ignore_patterns("tune_result.json", "attempts.jsonl",
                                                                  "metrics.json"))
    shutil.rmtree(run_dir, ignore_errors=True)
    os.replace(tmp, run_dir)


def hparams_domains(cfg) -> dict:
    """{name: tensorboard HParam} for every searched key, with its range or choices."""
    from tensorboard.plugins.hparams import api as hp_api

    out = {}
    for name, p in config_lib.search_space(cfg).items():
        if p.kind == "float":
            domain = hp_api.RealInterval(float(p.min), float(p.max))
        elif p.kind == "int":
            domain = hp_api.IntInterval(int(p.min), int(p.max))
        elif p.kind == "choice":
            domain = hp_api.Discrete(p.values)
        else:
            domain = hp_api.Discrete([False, True])
        out[name] = hp_api.HParam(name, domain)
    return out


def _write_hparams(run_dir: str, cfg, trial, objective_name: str, figure: float | None) -> None:
    """TensorBoard's HParams view: this run's hyperparameter values, and the objective as the
    scalar `tuner/<objective>` beside them (in run_dir/logs, one session per training)."""
    from tensorboard.plugins.hparams import api as hp_api

    values = space.searched_values(cfg, trial.hyperparameters.values)
    hparams = {hparam: values[name] for name, hparam in hparams_domains(cfg).items() if name in values}
    writer = tf.summary.create_file_writer(os.path.join(run_dir, "logs"))
    with writer.as_default():
        hp_api.hparams(hparams, trial_id=trial.trial_id)
        if figure is not None and math.isfinite(figure):
            tf.summary.scalar(f"tuner/{objective_name}", figure, step=0)
    writer.flush()
    writer.close()


def write_hparams_config(search: Search) -> None:
    """The HParams view's columns (every searched key with its domain, and the objective) at the
    top of `R/trials`, the folder to point TensorBoard at."""
    from tensorboard.plugins.hparams import api as hp_api

    hparams = hparams_domains(search.cfg)
    writer = tf.summary.create_file_writer(os.path.join(search.root, "trials"))
    with writer.as_default():
        hp_api.hparams_config(hparams=list(hparams.values()), metrics=[hp_api.Metric(
            f"tuner/{search.objective.name}", group="",
            display_name=f"{search.objective.name} ({search.objective.direction})")])
    writer.flush()
    writer.close()


class GanTuner(keras_tuner.Tuner):
    """Keras Tuner's `Tuner` with `run_trial` overridden: one trial = `executions_per_trial`
    trainings of the GAN stage (seeds train.seed + k) with the trial's values, each scored by the
    search's objective; Keras Tuner averages them.

    `train_stage(cfg, run_dir, stage, strategy=...)` is the training command's `train`: the one
    way a trial trains. `strategy` is this process's tf.distribute strategy (all its GPUs).

    A clean slate per trial: the Keras session is cleared, the mixed-precision policy is the
    process's original one when training starts and is put back afterwards, and the random seeds
    are set from the trial's config (train_stage does). A trial that raises (a non-finite loss
    included) is recorded by Keras Tuner as FAILED with the reason, and the search goes on."""

    def __init__(self, search: Search, train_stage: Callable, strategy, oracle, **kwargs):
        self.search_info = search
        self.train_stage = train_stage
        self.strategy = strategy
        self._base_policy = keras.mixed_precision.global_policy().name
        super().__init__(oracle=oracle, directory=search.root, project_name=PROJECT,
                         executions_per_trial=search.cfg.tune.executions_per_trial, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        s = self.search_info
        values = trial.hyperparameters.values
        steps = s.steps
        if space.HYPERBAND_EPOCHS in values:
            steps = int(values[space.HYPERBAND_EPOCHS]) * s.cfg.tune.hyperband_unit_steps
        results = []
        for execution in range(self.executions_per_trial):
            results.append(self._run_one(trial, execution, steps))
        return results

    def _run_one(self, trial, execution: int, steps: int) -> dict:
        s = self.search_info
        run_dir = s.trial_dir(trial.trial_id, execution)
        tf.io.gfile.makedirs(run_dir)
        started = time.time()
        # What the previous trial of this process left behind, before the slate is cleaned: the
        # training restores the policy itself, and this record shows it did.
        left_policy = keras.mixed_precision.global_policy().name
        with tf.io.gfile.GFile(os.path.join(run_dir, "attempts.jsonl"), "a") as f:
            f.write(json.dumps({"started": round(started, 3), "pid": os.getpid(), "tuner": self.tuner_id,
                                "policy_at_start": left_policy}) + "\n")
        record = {"trial": trial.trial_id, "execution": execution, "steps_budget": steps,
                  "values": space.searched_values(s.cfg, trial.hyperparameters.values),
                  "policy_at_start": left_policy}
        # The clean slate: nothing a previous trial left in Keras' process-wide state.
        keras.backend.clear_session()
        keras.mixed_precision.set_global_policy(self._base_policy)
        try:
            parent = trial.hyperparameters.values.get(space.HYPERBAND_PARENT)
            if parent:
                _continue_from(s.trial_dir(parent, execution), run_dir)
                record["continued_from"] = parent
            cfg = space.trial_config(s.cfg, trial.hyperparameters.values, steps=steps,
                                     seed=s.cfg.train.seed + execution, pretrained=s.pretrained,
                                     source=f"trial {trial.trial_id}")
            results = self.train_stage(cfg, run_dir, "gan", strategy=self.strategy)
            gan = results["gan"]
            glam = getattr(gan.checkpoint, "glam", None)
            record["policy_in_training"] = glam.dtype_policy.name if glam is not None else None
            record["steps"] = int(gan.steps)
            keras.mixed_precision.set_global_policy(self._base_policy)
            figure, metric = objective_lib.score(s.objective, cfg, run_dir, s.eval_damsm)
            if not math.isfinite(figure):
                raise ValueError(f"objective {s.objective.name} is {figure}")
            record.update(status="COMPLETED", objective=figure, seconds=round(time.time() - started, 1))
            _write_json(os.path.join(run_dir, "tune_result.json"), record)
            _write_hparams(run_dir, s.cfg, trial, s.objective.name, figure)
            return {s.objective.name: figure, "gan_steps": float(record["steps"]),
                    "seconds": record["seconds"]}
        except Exception as e:
            reason = f"{type(e).__name__}: {e}".splitlines()[0]
            record.update(status="FAILED", reason=reason, seconds=round(time.time() - started, 1),
                          traceback=traceback.format_exc())
            _write_json(os.path.join(run_dir, "tune_result.json"), record)
            _write_hparams(run_dir, s.cfg, trial, s.objective.name, None)
            print(f"trial {trial.trial_id}: failed: {reason}", flush=True)
            raise keras_tuner.errors.FailedTrialError(reason) from e
        finally:
            keras.mixed_precision.set_global_policy(self._base_policy)
