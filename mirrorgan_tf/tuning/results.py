"""A search's results: one row per trial (hyperparameters, objective, steps, seconds, status,
reason), printed and written as R/trials.csv, and R/best.yaml, the best trial's config.

Rows come from Keras Tuner's oracle (status, objective, values, the failure message) and from
each trial's `tune_result.json` (steps trained, seconds, the reason in one line).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

import tensorflow as tf

from mirrorgan_tf import config as config_lib
from mirrorgan_tf.images import atomic_write

FIXED_COLUMNS = ("trial", "status", "objective", "steps", "seconds")


def _read_result(path: str) -> dict:
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def rows(search, oracle) -> list[dict]:
    """One dict per trial in creation order: FIXED_COLUMNS, then each searched key, then `reason`
    (empty for a completed trial). `objective` is the trial's score (the mean over executions);
    `steps` and `seconds` are summed over its executions (seconds include scoring)."""
    names = list(config_lib.search_space(search.cfg))
    out = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        results = [_read_result(os.path.join(search.trial_dir(trial_id, k), "tune_result.json"))
                   for k in range(search.cfg.tune.executions_per_trial)]
        results = [r for r in results if r]
        reasons = [r["reason"] for r in results if r.get("reason")]
        if not reasons and trial.message:
            reasons = [trial.message.strip().splitlines()[-1]]
        status = trial.status
        row = {"trial": trial_id, "status": status,
               "objective": trial.score if status == "COMPLETED" else None,
               "steps": sum(r.get("steps", 0) for r in results) if any("steps" in r for r in results) else None,
               "seconds": round(sum(r.get("seconds", 0.0) for r in results), 1) if results else None}
        values = trial.hyperparameters.values
        row.update({n: values.get(n) for n in names})
        if "tuner/epochs" in values:
            row["hyperband"] = f"{values['tuner/epochs']} units" + (
                f" from trial {values['tuner/trial_id']}" if values.get("tuner/trial_id") else "")
        row["reason"] = "" if status == "COMPLETED" else (reasons[0] if reasons else "")
        out.append(row)
    return out


def best_trial(oracle):
    """The best COMPLETED trial with a finite score (the oracle's objective and direction), or
    None when there is none. Not Keras Tuner's `get_best_trials`: with fewer completed trials than
    asked for, it pads its answer with FAILED trials, whose score is None."""
    done = [t for t in oracle.trials.values()
            if t.status == "COMPLETED" and t.score is not None and math.isfinite(t.score)]
    if not done:
        return None
    pick = max if oracle.objective.direction == "max" else min
    return pick(done, key=lambda t: t.score)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(rows_: list[dict], objective, scored_on: str = "") -> str:
    """The rows as aligned text, with a title line naming the objective, its direction and
    `scored_on` (what every figure is computed from, `Objective.scored_on`)."""
    title = f"objective: {objective.describe()}" + (f", on {scored_on}" if scored_on else "")
    if not rows_:
        return f"{title}; no trials yet"
    columns = list(dict.fromkeys(k for r in rows_ for k in r))
    cells = [[_cell(r.get(c)) for c in columns] for r in rows_]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [title,
             "  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def write_csv(rows_: list[dict], path: str) -> None:
    """The rows as CSV (header first; empty cells for missing values), written then renamed."""
    columns = list(dict.fromkeys(k for r in rows_ for k in r)) or list(FIXED_COLUMNS)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for r in rows_:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    atomic_write(path, buffer.getvalue())


def best_config(search, trial_id: str):
    """The config to train the best trial's values with: the trial's own resolved config (its
    values, the shared pretrained DAMSM and STREAM as damsm.checkpoint / stream.checkpoint), with
    the searched config's own step budget and seed instead of the trial's short budget."""
    cfg = config_lib.load_config(os.path.join(search.trial_dir(trial_id), "config.yaml"))
    return config_lib.with_values(cfg, {"train.max_steps": search.cfg.train.max_steps,
                                        "train.seed": search.cfg.train.seed}, f"best trial {trial_id}")


def write_best(search, trial_id: str, score: float, path: str) -> None:
    """R/best.yaml: `best_config` with a comment header saying where it came from. It loads with
    `--config` as every config file does; written then renamed."""
    cfg = best_config(search, trial_id)
    header = (f"# The best trial of the search in {search.root}: trial {trial_id}, "
              f"{search.objective.describe()} = {score:.6g} on {search.objective.scored_on(search.cfg)}.\n"
              f"# Its values, on the search's pretrained DAMSM and STREAM (damsm.checkpoint, stream.checkpoint;\n"
              f"# set both to \"\" to pretrain anew), with the searched config's train.max_steps and train.seed.\n"
              f"# The trial's own config (its short step budget) is {search.trial_dir(trial_id)}/config.yaml.\n"
              f"# Train it: python -m mirrorgan_tf.train --config {path}\n")
    atomic_write(path, header + config_lib.dump_config(cfg))
