"""Quality while the GAN stage trains: the evaluate command's metrics, every `train.eval_every`
steps, on a fixed small subset of test captions; and the run's best checkpoint by one figure.

What is evaluated is what `python -m mirrorgan_tf.evaluate` evaluates, through the same parts:
the test captions in evaluation order (`evaluation.pairs.load_pairs`; the first
`train.eval_captions`, so the subset is fixed for the whole run and the same as `evaluate
--num-images N`), each drawn `train.eval_samples_per_caption` times with the noise of
`evaluation.generator.sample_noise` seeded by `train.seed`, through the EMA generator, scored by
the metrics registry (`metrics.REGISTRY`, built once with the same Context and options evaluate
builds, `Metric.reset` between evaluations). A figure at step s is therefore the figure
`evaluate --checkpoint ... --num-images N --samples-per-caption K --seed train.seed` gives for the
checkpoint of step s (every evaluation step is also a checkpoint step).

Each evaluation writes its figures (`scalars`) to TensorBoard as eval/<name> and appends them to
<run>/gan/metrics.json under `during_training.records` as {step, metric, value, images}: `images`
is the count the figure comes from (a group's own count for attributes/seen and the like). A few
hundred images give a trend within one run, not a figure to set beside a paper's (30,000 images),
and the records say so. Its cost (seconds, and the share of the stage's time so far) is printed
after each evaluation, with a warning above WARN_FRACTION.

With `train.best_metric` the run keeps the checkpoint of the best figure so far in <run>/gan/best/
(`runs.keep_best`: a copy of the regular checkpoint, outside keep_checkpoints' rotation) and
best.json (step, metric, value, direction); sample, evaluate and export read it with
`--checkpoint best`.
"""

from __future__ import annotations

import os
import time

import numpy as np
import tensorflow as tf

from mirrorgan_tf import data, runs
from mirrorgan_tf.evaluation.generator import TrainedGenerator
from mirrorgan_tf.evaluation.pairs import load_pairs
from mirrorgan_tf.metrics import REGISTRY, Context, EvalError, prepare_metrics

SPLIT = "test"
WARN_FRACTION = 0.10  # above this share of the stage's time, the printout suggests evaluating less
LOWER_IS_BETTER = ("fid", "kid")  # best_direction auto: min for these, max for every other figure
LABELLED = ("attributes", "spread")  # need the dataset's attribute labels (shapes)
INCEPTION = ("fid", "kid")
NOTE = ("a small fixed subset of the test captions: a trend within this run, not a figure to compare with "
        "published ones (30,000 images) or with evaluations of other counts")
# attributes and spread together give the figure `python -m mirrorgan_tf.tune` maximises on shapes.
PRODUCT = "attributes_x_spread"


def inception_options(path: str) -> dict:
    """train.eval_inception as evaluate's options: a .pb file is the 2015 graph, anything else a
    keras.applications.InceptionV3 weights file."""
    if not path:
        return {}
    return {"inception_graph": path} if path.endswith(".pb") else {"inception_weights": path}


def direction(cfg) -> str:
    """"max" or "min": train.best_direction, or for auto min for fid / kid figures, else max."""
    if cfg.train.best_direction != "auto":
        return cfg.train.best_direction
    return "min" if cfg.train.best_metric.split("/")[0] in LOWER_IS_BETTER else "max"


def check(cfg, manifest: dict) -> None:
    """The cheap checks of the train.eval_* and best_* keys, before any stage trains (the metrics'
    own checks run when the GAN stage starts). Raises EvalError naming the key."""
    t = cfg.train
    if not t.eval_every:
        return
    unknown = [n for n in t.eval_metrics if n not in REGISTRY]
    if unknown:
        raise EvalError(f"train.eval_metrics: unknown {', '.join(unknown)} (known: {', '.join(REGISTRY)})")
    if not data.attribute_names(manifest):
        labelled = [n for n in t.eval_metrics if n in LABELLED]
        if labelled:
            raise EvalError(f"train.eval_metrics: {', '.join(labelled)} need a dataset with attribute labels "
                            f"(shapes); {cfg.data.dir} has none")
    if any(n in INCEPTION for n in t.eval_metrics):
        if not t.eval_inception:
            raise EvalError("train.eval_metrics names fid or kid, which need Inception weights: set "
                            "train.eval_inception to classify_image_graph_def.pb (the 2015 graph) or a "
                            "keras.applications.InceptionV3 weights file")
        if not tf.io.gfile.exists(t.eval_inception):
            raise EvalError(f"train.eval_inception={t.eval_inception}: no such file")
    if "spread" in t.eval_metrics and t.eval_samples_per_caption < 2:
        raise EvalError(f"train.eval_metrics names spread, which needs train.eval_samples_per_caption >= 2 "
                        f"(got {t.eval_samples_per_caption})")
    if t.best_metric:
        head = t.best_metric.split("/")[0]
        needed = LABELLED if t.best_metric == PRODUCT else (head,)
        missing = [n for n in needed if n not in t.eval_metrics]
        if missing:
            raise EvalError(f"train.best_metric={t.best_metric}: needs {', '.join(missing)} in train.eval_metrics "
                            f"({', '.join(t.eval_metrics)})")


def scalars(results: dict) -> dict[str, tuple[float, int]]:
    """{figure name: (value, the image count it comes from)} of the evaluate-style `results`
    ({metric: result()}). attributes: `attributes/<group>` (all four right) and
    `attributes/<group>/<attribute>`, and with two or more samples per caption
    `attributes/<group>/mixed` (the share of captions whose samples disagree on an attribute); spread: `spread/<group>/balance` and `spread/<group>/<factor>`
    (the ratio); both together also `attributes_x_spread` (tune's objective: the image-weighted
    all-four rate x spread/all/balance); every other metric `<name>` (its value) and `<name>/std`
    where it has one."""
    out: dict[str, tuple[float, int]] = {}
    for name, r in results.items():
        if name == "attributes":
            for group, g in r["value"].items():
                out[f"attributes/{group}"] = (g["all"], g["images"])
                out.update({f"attributes/{group}/{k}": (v, g["images"]) for k, v in g.items()
                            if k not in ("all", "images")})
                agree = r.get("per_caption", {}).get(group)
                if agree:
                    out[f"attributes/{group}/mixed"] = (agree["all"]["mixed"], g["images"])
        elif name == "spread":
            for group, g in r["value"].items():
                out[f"spread/{group}/balance"] = (g["balance"], g["images"])
                out.update({f"spread/{group}/{f}": (v, g["images"]) for f, v in g["ratio"].items()})
        elif isinstance(r.get("value"), (int, float)):
            out[name] = (float(r["value"]), int(r.get("images", 0)))
            if isinstance(r.get("std"), (int, float)):
                out[f"{name}/std"] = (float(r["std"]), int(r.get("images", 0)))
    if "attributes" in results and "spread" in results and "all" in results["spread"]["value"]:
        groups = results["attributes"]["value"].values()
        images = sum(g["images"] for g in groups)
        rate = sum(g["all"] * g["images"] for g in groups) / images
        out[PRODUCT] = (rate * results["spread"]["value"]["all"]["balance"], images)
    return {k: (float(v), int(n)) for k, (v, n) in out.items()}


def headline(name: str) -> bool:
    """Whether figure `name` is printed after each evaluation (all are logged): each metric's main
    figure per group, not its parts (attributes/seen, not attributes/seen/colour)."""
    parts = name.split("/")
    if parts[0] == "spread":
        return parts[-1] == "balance"
    return len(parts) == 1 or (parts[0] == "attributes" and len(parts) == 2)


def better(value: float, best: float | None, way: str) -> bool:
    """Whether `value` beats `best` (None: nothing yet) in direction `way` ("max" / "min"); a nan
    never does."""
    if not np.isfinite(value):
        return False
    return best is None or (value > best if way == "max" else value < best)


class QualityDuringTraining:
    """`evaluator(step, writer, checkpoint)` after the checkpoint of `step` was saved (the loop's
    `on_evaluate`): evaluates, logs, records and keeps the best checkpoint, as the module says.

    Built at the start of the GAN stage, on the chief, with the stage's STEM and EMA GLAM:
    reads the test captions, builds the metrics (their input checks: EvalError naming the
    train.eval_* key) and prepares them (the shapes attribute classifier is trained once per
    dataset and cached; Inception features of the real test images likewise), outside the
    stage's timed steps. `seconds` is the time the evaluations took so far this session."""

    def __init__(self, cfg, run: runs.RunDir, stem, glam):
        t = cfg.train
        self.cfg, self.run = cfg, run
        manifest = data.load_manifest(cfg.data.dir)
        check(cfg, manifest)
        pairs = load_pairs(cfg, SPLIT)
        self.captions, self.k = min(t.eval_captions, len(pairs)), t.eval_samples_per_caption
        rows = np.repeat(pairs.first(self.captions), self.k)
        options = {"samples_per_caption": self.k, "folds": min(10, len(rows)),
                   "classifier_steps": cfg.tune.classifier_steps, **inception_options(t.eval_inception)}
        self.ctx = Context(cfg=cfg, run_dir=run.root, split=SPLIT, all_pairs=pairs, rows=rows, manifest=manifest,
                           batch_size=max(32, t.batch_size), seed=t.seed, options=options)
        self.metrics = []
        for name in t.eval_metrics:
            try:
                self.metrics.append(REGISTRY[name](self.ctx))
            except EvalError as e:  # its message names evaluate's flags: say which keys they are here
                raise EvalError(f"train.eval_metrics: {name}: {e} (here --num-images is train.eval_captions x "
                                f"train.eval_samples_per_caption, --inception-* train.eval_inception)") from None
        start = time.time()
        # The metrics' own networks are built in float32 as evaluate builds them (prepare_metrics),
        # not under the stage's mixed policy; the generator keeps the stage's policy.
        prepare_metrics(self.metrics)
        self.prepared = False  # the first evaluation scores with what prepare() set up; later ones reset()
        self.setup_seconds = time.time() - start
        self.generator = TrainedGenerator.from_networks(cfg, stem, glam)
        self.best_metric, self.way = t.best_metric, direction(cfg) if t.best_metric else None
        self.seconds, self.evaluations = 0.0, 0
        self.stage_start = time.time()
        self.first_call = True
        print(f"gan: quality every {t.eval_every} steps: {', '.join(t.eval_metrics)} on {self.counts} "
              f"(set up in {self.setup_seconds:.1f} s)", flush=True)

    @property
    def counts(self) -> str:
        n = len(self.ctx.rows)
        return f"the first {self.captions:,} test captions" + (f" x {self.k} = {n:,} images" if self.k > 1 else "")

    def evaluate(self) -> dict:
        """{metric: result()} of the generator as it is now: every metric, as evaluate computes it."""
        if self.prepared:
            prepare_metrics(self.metrics, reset=True)  # a reset may prepare anew (Metric.reset): float32 too
        self.prepared = True
        ctx, pairs = self.ctx, self.ctx.all_pairs
        n = len(ctx.rows)
        for s in range(0, n, ctx.batch_size):  # evaluate.evaluate's loop, on the networks in memory
            samples = np.arange(s, min(n, s + ctx.batch_size))
            rows = ctx.rows[samples]
            out = self.generator(pairs.ids[rows], pairs.lengths[rows], samples, seed=ctx.seed)
            images = np.asarray(tf.cast(out["images"][-1], tf.float32))
            for m in self.metrics:
                m.update(images, samples)
        return {m.name: m.result() for m in self.metrics}

    def __call__(self, step: int, writer, checkpoint: str | None) -> dict[str, tuple[float, int]]:
        start = time.time()
        figures = scalars(self.evaluate())
        seconds = time.time() - start
        self.seconds += seconds
        self.evaluations += 1
        with writer.as_default():
            for name, (value, images) in figures.items():
                tf.summary.scalar(f"eval/{name}", value, step=step,
                                  description=f"{images:,} images from {self.counts}: {NOTE}")
            tf.summary.scalar("eval/seconds", seconds, step=step)
        writer.flush()
        self._record(step, figures, seconds)
        elapsed = time.time() - self.stage_start
        fraction = self.seconds / elapsed if elapsed > 0 else 0.0
        shown = ", ".join(f"{k} {v:.4g}" for k, (v, _) in figures.items() if headline(k))
        print(f"gan: quality at step {step} ({self.counts}; {seconds:.1f} s, evaluations {100 * fraction:.1f} % of "
              f"the stage's {elapsed:.0f} s so far): {shown}", flush=True)
        if fraction > WARN_FRACTION and self.evaluations > 1:
            print(f"gan: warning: the evaluations took {100 * fraction:.0f} % of the stage's time so far; raise "
                  f"train.eval_every or lower train.eval_captions", flush=True)
        if self.best_metric:
            self._keep_best(step, figures, checkpoint)
        return figures

    def _record(self, step: int, figures: dict, seconds: float) -> None:
        name = os.path.join("gan", "metrics.json")
        current = self.run.read_json(name)
        during = current.get("during_training") or {}
        records = during.get("records", [])
        if self.first_call:
            # A resume (after a stop, or a fallback past a damaged checkpoint) trains these steps again.
            records = [r for r in records if r["step"] < step]
            self.first_call = False
        records += [{"step": step, "metric": k, "value": v, "images": n} for k, (v, n) in figures.items()]
        t = self.cfg.train
        timing = during.get("seconds", [])
        timing = [x for x in timing if x["step"] < step] + [{"step": step, "seconds": round(seconds, 2)}]
        self.run.write_metrics("gan", {"during_training": {
            "note": NOTE, "split": SPLIT, "captions": self.captions, "samples_per_caption": self.k,
            "images": len(self.ctx.rows), "seed": t.seed, "metrics": list(t.eval_metrics), "every": t.eval_every,
            "records": records, "seconds": timing}})

    def _keep_best(self, step: int, figures: dict, checkpoint: str | None) -> None:
        if self.best_metric not in figures:
            print(f"gan: warning: train.best_metric={self.best_metric} is not among this evaluation's figures "
                  f"({', '.join(figures)}); no best checkpoint at step {step}", flush=True)
            return
        value, images = figures[self.best_metric]
        best = runs.read_best(self.run.root)
        same = best.get("metric") == self.best_metric and best.get("direction") == self.way
        if best and not same:
            print(f"gan: the best checkpoint was kept by {best.get('metric')} ({best.get('direction')}); from now on "
                  f"by {self.best_metric} ({self.way})", flush=True)
        if not better(value, best.get("value") if same else None, self.way) or checkpoint is None:
            return
        path = runs.keep_best(self.run.root, checkpoint, {
            "step": step, "metric": self.best_metric, "value": value, "direction": self.way, "images": images,
            "captions": self.captions, "samples_per_caption": self.k, "seed": self.cfg.train.seed,
            "copied_from": checkpoint})
        print(f"gan: best {self.best_metric} so far ({value:.4g}, {self.way}) at step {step}: kept as {path}",
              flush=True)
