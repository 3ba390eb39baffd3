"""What a search trial is scored by: one figure from the metrics registry, on a fixed subset of
test captions (the first `tune.eval_captions` of the split in evaluation order, seed 0 noise), so
every trial is judged on the same captions and the same noise.

| objective | metrics | figure | direction |
|---|---|---|---|
| attributes_x_spread | attributes, spread | all four attributes right (as `attributes`) x the spread `balance` (group "all"), each caption drawn `tune.samples_per_caption` times; in [0, 1] | max |
| attributes | attributes | all four attributes right, seen and unseen colour-shape pairs as one rate (image-weighted) | max |
| attributes_seen / attributes_unseen | attributes | all four right, on that group only | max |
| r_precision | r_precision | top-1 rate with an independently trained DAMSM (never the trial's own STEM's) | max |
| fid | fid | Frechet Inception distance to the test images | min |

`auto` means attributes_x_spread when the dataset carries attribute labels (shapes), else
r_precision.

Why the product: the attribute accuracy alone is won by drawing, for each caption, the single most
typical picture (mode collapse: the classifier reads it right every time). The spread balance
(`metrics/spread.py`: the geometric mean over the five within-class factors - background, colour,
size, centre x and y - of min(r, 1/r), r the generated within-caption spread over the real
within-class one) is 0 for one picture per caption and 1 for the data's variety, so the product
rewards a trial only for right attributes drawn with the data's variety. The other objectives draw
one image per caption (`--samples-per-caption 1`), as before.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from mirrorgan_tf.metrics import EvalError

# objective -> the metrics it needs, the first its main one (evaluated in one `evaluate` call).
METRICS = {"attributes_x_spread": ("attributes", "spread"), "attributes": ("attributes",),
           "attributes_seen": ("attributes",), "attributes_unseen": ("attributes",),
           "r_precision": ("r_precision",), "fid": ("fid",)}
METRIC = {name: metrics[0] for name, metrics in METRICS.items()}  # the main metric of each
LABELLED = ("attributes", "spread")  # metrics that need the dataset's attribute labels (shapes)


@dataclass(frozen=True)
class Objective:
    name: str  # a key of METRICS; also the metric name Keras Tuner records
    direction: str  # "max" or "min"

    @property
    def metric(self) -> str:
        """The main metric ("attributes" for attributes_x_spread)."""
        return METRIC[self.name]

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric the figure needs, evaluated together."""
        return METRICS[self.name]

    def samples_per_caption(self, cfg) -> int:
        """Images per caption the evaluation draws: `tune.samples_per_caption` when the figure
        has a within-caption spread, else 1."""
        return int(cfg.tune.samples_per_caption) if "spread" in self.metrics else 1

    def describe(self) -> str:
        return f"{self.name} ({'maximised' if self.direction == 'max' else 'minimised'})"

    def scored_on(self, cfg) -> str:
        """What every trial's figure is computed from, to print beside it: "2,000 test captions x
        4 samples = 8,000 images". The same for every trial, so trials compare with each other;
        not with figures from other counts (an `evaluate` of 30,000 images, published figures)."""
        k = self.samples_per_caption(cfg)
        n = int(cfg.tune.eval_captions)
        return f"{n:,} test captions" + (f" x {k} samples = {n * k:,} images" if k > 1 else " (1 image each)")


def resolve(name: str, manifest: dict) -> Objective:
    """The objective `tune.objective` names (`auto` resolved against the dataset's `manifest`:
    attributes_x_spread with attribute labels, else r_precision). Raises EvalError naming
    tune.objective for an unknown name, or when the dataset cannot give it (an attributes
    objective without attribute labels)."""
    labelled = bool(manifest.get("attributes"))
    if name == "auto":
        name = "attributes_x_spread" if labelled else "r_precision"
    if name not in METRICS:
        raise EvalError(f"tune.objective: unknown {name!r} (known: auto, {', '.join(METRICS)})")
    if not labelled and any(m in LABELLED for m in METRICS[name]):
        raise EvalError(f"tune.objective={name}: the dataset has no attribute labels (only shapes has); "
                        f"use r_precision or fid")
    return Objective(name, "min" if name == "fid" else "max")


def _attributes_all(result: dict) -> float:
    """All four right over seen and unseen pairs, image-weighted, from `attributes`' result()."""
    groups = result["value"]
    images = sum(g["images"] for g in groups.values())
    return float(sum(g["all"] * g["images"] for g in groups.values()) / images)


def value(objective: Objective, results: dict) -> float:
    """The objective's figure from `results` = {metric name: that metric's `result()`}, as
    `evaluate` returns them (every metric of `objective.metrics` must be there: KeyError else).
    attributes_x_spread: `attributes`' image-weighted all-four rate (in [0, 1]) x `spread`'s
    balance of group "all" (in [0, 1]). Raises EvalError when a group the figure needs is
    missing from the evaluated captions."""
    result = results[objective.metric]
    if objective.metric != "attributes":
        return float(result["value"])
    if objective.name == "attributes":
        return _attributes_all(result)
    if objective.name == "attributes_x_spread":
        groups = results["spread"]["value"]
        if "all" not in groups:
            raise EvalError("tune.objective=attributes_x_spread: the spread metric gave no group 'all' (no "
                            "real reference on the test split)")
        return _attributes_all(result) * float(groups["all"]["balance"])
    group = objective.name.split("_")[1]
    if group not in result["value"]:
        raise EvalError(f"tune.objective={objective.name}: the first tune.eval_captions test captions "
                        f"hold no {group} colour-shape pair; raise tune.eval_captions")
    return float(result["value"][group]["all"])


def evaluation_args(objective: Objective, cfg, run_dir: str, eval_damsm: str) -> list[str]:
    """The `python -m mirrorgan_tf.evaluate` arguments that compute the objective for `run_dir`:
    every metric of `objective.metrics` in one call, `tune.eval_captions` captions, each drawn
    `objective.samples_per_caption(cfg)` times. Raises EvalError when fid has no `tune.inception`
    file, or when a spread objective has tune.samples_per_caption < 2."""
    k = objective.samples_per_caption(cfg)
    if "spread" in objective.metrics and k < 2:
        raise EvalError(f"tune.samples_per_caption {k}: tune.objective={objective.name} measures the spread "
                        f"between samples of one caption and needs at least 2")
    args = ["--run-dir", run_dir, "--metrics", ",".join(objective.metrics),
            "--num-images", str(cfg.tune.eval_captions), "--samples-per-caption", str(k),
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
    """Evaluate a trained trial run: (the objective's figure, {metric name: every figure that
    metric gave} for the objective's metrics). The results are also merged into
    `run_dir/metrics.json` as `evaluate` does."""
    from mirrorgan_tf import evaluate as evaluate_cli

    a = evaluate_cli.parse(evaluation_args(objective, cfg, run_dir, eval_damsm))
    results = evaluate_cli.evaluate(a)
    evaluate_cli.save(run_dir, "test", results)
    figure = value(objective, results)
    return figure, {m: results[m] for m in objective.metrics}


def is_finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def damsm_is_separate(path: str, pretrained_damsm: str) -> bool:
    """Whether an evaluation DAMSM is not the one the trials' STEM comes from."""
    return os.path.realpath(path) != os.path.realpath(pretrained_damsm)
