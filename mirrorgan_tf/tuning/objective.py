"""What a search trial is scored by: one figure from the metrics registry, on a fixed subset of
test captions (the first `tune.eval_captions` of the split in evaluation order, seed 0 noise), so
every trial is judged on the same captions and the same noise.

| objective | metric | figure | direction |
|---|---|---|---|
| attributes | attributes | all four attributes right, seen and unseen colour-shape pairs as one rate (image-weighted) | max |
| attributes_seen / attributes_unseen | attributes | all four right, on that group only | max |
| r_precision | r_precision | top-1 rate with an independently trained DAMSM (never the trial's own STEM's) | max |
| fid | fid | Frechet Inception distance to the test images | min |

`auto` means attributes when the dataset carries attribute labels (shapes), else r_precision.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from mirrorgan_tf.metrics import EvalError

METRIC = {"attributes": "attributes", "attributes_seen": "attributes", "attributes_unseen": "attributes",
          "r_precision": "r_precision", "fid": "fid"}


@dataclass(frozen=True)
class Objective:
    name: str  # a key of METRIC; also the metric name Keras Tuner records
    direction: str  # "max" or "min"

    @property
    def metric(self) -> str:
        return METRIC[self.name]

    def describe(self) -> str:
        return f"{self.name} ({'maximised' if self.direction == 'max' else 'minimised'})"


def resolve(name: str, manifest: dict) -> Objective:
    """The objective `tune.objective` names (`auto` resolved against the dataset's `manifest`).
    Raises EvalError when the dataset cannot give it (attributes without attribute labels)."""
    labelled = bool(manifest.get("attributes"))
    if name == "auto":
        name = "attributes" if labelled else "r_precision"
    if name not in METRIC:
        raise EvalError(f"tune.objective: unknown {name!r} (known: auto, {', '.join(METRIC)})")
    if METRIC[name] == "attributes" and not labelled:
        raise EvalError(f"tune.objective={name}: the dataset has no attribute labels (only shapes has); "
                        f"use r_precision or fid")
    return Objective(name, "min" if name == "fid" else "max")


def value(objective: Objective, result: dict) -> float:
    """The objective's figure from its metric's `result()` (as `evaluate` returns it)."""
    if objective.metric != "attributes":
        return float(result["value"])
    groups = result["value"]
    if objective.name == "attributes":
        images = sum(g["images"] for g in groups.values())
        return float(sum(g["all"] * g["images"] for g in groups.values()) / images)
    group = objective.name.split("_")[1]
    if group not in groups:
        raise EvalError(f"tune.objective={objective.name}: the first tune.eval_captions test captions "
                        f"hold no {group} colour-shape pair; raise tune.eval_captions")
    return float(groups[group]["all"])


def evaluation_args(objective: Objective, cfg, run_dir: str, eval_damsm: str) -> list[str]:
    """The `python -m mirrorgan_tf.evaluate` arguments that compute the objective for `run_dir`.
    Raises EvalError when fid has no `tune.inception` file."""
    args = ["--run-dir", run_dir, "--metrics", objective.metric, "--num-images", str(cfg.tune.eval_captions),
            "--split", "test", "--seed", "0", "--classifier-steps", str(cfg.tune.classifier_steps)]
    if objective.metric == "r_precision":
        args += ["--damsm-run", eval_damsm, "--folds", str(min(10, cfg.tune.eval_captions))]
    if objective.metric == "fid":
        path = cfg.tune.inception
        if not path:
            raise EvalError("tune.objective=fid needs tune.inception: classify_image_graph_def.pb (the "
                            "published 2015 graph) or a Keras InceptionV3 weights file")
        args += ["--inception-graph" if path.endswith(".pb") else "--inception-weights", path]
    return args


def score(objective: Objective, cfg, run_dir: str, eval_damsm: str = "") -> tuple[float, dict]:
    """Evaluate a trained trial run: (the objective's figure, every figure the metric gave). The
    results are also merged into `run_dir/metrics.json` as `evaluate` does."""
    from mirrorgan_tf import evaluate as evaluate_cli

    a = evaluate_cli.parse(evaluation_args(objective, cfg, run_dir, eval_damsm))
    results = evaluate_cli.evaluate(a)
    evaluate_cli.save(run_dir, "test", results)
    figure = value(objective, results[objective.metric])
    return figure, results[objective.metric]


def is_finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def damsm_is_separate(path: str, pretrained_damsm: str) -> bool:
    """Whether an evaluation DAMSM is not the one the trials' STEM comes from."""
    return os.path.realpath(path) != os.path.realpath(pretrained_damsm)
