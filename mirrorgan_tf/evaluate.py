"""python -m mirrorgan_tf.evaluate --run-dir R [--metrics ...] [--num-images N] [--split test] [--checkpoint best] [--weights raw]

Generates N images from the split's captions with the run's EMA generator (its latest checkpoint,
or with --checkpoint best the best one the run kept while training; --weights raw: the generator's
own weights, which the EMA averages, to see what the averaging changes) and scores them; prints
a table and merges the numbers, with the settings that produced each, into R/metrics.json.
Metrics (default: every one whose inputs are there):
  r_precision  top-1 among 1 + 99 mismatched captions by DAMSM similarity (default: the run's
               DAMSM; --damsm-run R2 for an independently trained one)
  fid          --inception-graph classify_image_graph_def.pb (published) or --inception-weights F
  kid          Kernel Inception Distance (unbiased MMD^2, cubic polynomial kernel, 100 subsets of up to
               1,000 images: mean +- std), same Inception features and flags as fid
  is           --is-classifier P (StackGAN's fine-tuned Inception checkpoint for CUB / flowers, e.g.
               inception_finetuned_models/birds_valid299/model.ckpt or its directory; the 2015
               ImageNet graph .pb for COCO; or a Keras model)
  attributes   shapes only: colour/shape/size/position accuracy, seen and unseen pairs
  spread       shapes only, --samples-per-caption K >= 2: within-caption spread of the five factors
               the data varies inside a class (background, colour, size, centre x / y), read from
               pixels, as a ratio to the real within-class spread (1.0 = as varied as the data)
  diversity    any dataset, --samples-per-caption K >= 2: precision / recall / density / coverage
               (k = 5, Naeem et al. 2020; P / R also at k = 3, Kynkaanniemi et al. 2019) against
               the real images, and within-caption pairwise distance / real within-class distance
               (0 = one picture per caption); Inception features as for fid, else the DAMSM code
--protocol cub|coco runs the published AttnGAN / MirrorGAN evaluation in one command: IS, FID and
R-precision on 30,000 images (--protocol-images N for fewer), generated in shards under --out
(default R/protocol-NAME) so that a re-run continues; prints the papers' table and writes it to
OUT/results.json (not metrics.json). CUB needs --is-classifier (StackGAN's fine-tuned Inception)
and --inception-graph; COCO --inception-graph (it scores IS too).
Every metric is also given on real test images where that means something. Every figure is
printed with the image count it comes from; IS, FID and R-precision add a note below the 30,000
images of the published protocol (their figures depend on the count: compare equal counts only),
attributes and spread one when their own standard error is large.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

AUTOMATIC = ("attributes", "r_precision")  # need no file from the user


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m mirrorgan_tf.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--metrics", help="comma-separated: r_precision,fid,kid,is,attributes,spread,diversity")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                   help="the run's latest gan checkpoint, or the best one it kept while training (train.best_metric)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema",
                   help="the generator's exponential moving average (what sample, export and serving use), or its own "
                        "weights, which the average smooths: to see what the averaging changes")
    p.add_argument("--num-images", type=int, help="captions to draw (default: every usable caption of the "
                   "split); each gives --samples-per-caption images")
    p.add_argument("--samples-per-caption", type=int, default=1,
                   help="images per caption, each with its own z and conditioning noise (spread and diversity "
                        "need at least 2)")
    p.add_argument("--split", default="test")
    p.add_argument("--folds", type=int, default=10, help="R-precision folds")
    p.add_argument("--damsm-run", help="run directory of an independently trained DAMSM")
    p.add_argument("--inception-graph", help="classify_image_graph_def.pb (2015-12-05)")
    p.add_argument("--inception-weights", help="keras.applications.InceptionV3 weights file")
    p.add_argument("--is-classifier", help="classifier for the Inception Score: StackGAN's fine-tuned Inception TF1 checkpoint "
                   "(model.ckpt prefix or its directory), the 2015 .pb graph, or a Keras model (.keras/.h5)")
    p.add_argument("--classifier-steps", type=int, default=500, help="training steps of the shapes attribute "
                   "classifier (trained once per dataset and cached)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, help="noise seed (default 0; 100 under --protocol, as the original)")
    g = p.add_argument_group("published protocol")
    g.add_argument("--protocol", choices=("cub", "coco"), help="the AttnGAN / MirrorGAN evaluation: 30,000 images, "
                   "IS, FID, R-precision as published (README: The published protocol)")
    g.add_argument("--protocol-images", type=int, help="image count instead of the published 30,000 (figures "
                   "then carry a note: not comparable)")
    g.add_argument("--out", help="folder of the protocol's image shards and results.json (default RUN/protocol-NAME); "
                   "a re-run with the same folder continues")
    g.add_argument("--shard-size", type=int, default=500, help="images per shard (the unit a re-run resumes from)")
    a = p.parse_args(argv)
    if a.seed is None:
        a.seed = 100 if a.protocol else 0
    if a.protocol and not a.out:
        a.out = os.path.join(a.run_dir, f"protocol-{a.protocol}")
    return a


def build_context(a):
    """Everything cheap: config, captions, metric checks. Raises EvalError / FileNotFoundError."""
    import numpy as np
    import tensorflow as tf

    from mirrorgan_tf import data
    from mirrorgan_tf.evaluation.pairs import load_pairs
    from mirrorgan_tf.metrics import REGISTRY, Context, EvalError
    from mirrorgan_tf.runs import find_checkpoint, gan_weights_path, load_run

    config_path = os.path.join(a.run_dir, "config.yaml")
    if not tf.io.gfile.exists(config_path):
        raise EvalError(f"--run-dir {a.run_dir}: not a run directory (no config.yaml)")
    if getattr(a, "protocol", None) and a.weights != "ema":
        raise EvalError("--weights raw: the published protocol (--protocol) scores the EMA generator, as every "
                        "figure it is compared with; use --weights raw without --protocol")
    if find_checkpoint(gan_weights_path(a.run_dir, a.checkpoint), "gan") is None:  # best: NoBestCheckpointError
        raise EvalError(f"{a.run_dir}: no gan checkpoint; train the gan stage first")
    run = load_run(a.run_dir)
    cfg = run.cfg
    run.check_data()  # the split's captions are word ids: they must be the run's words
    manifest = data.load_manifest(cfg.data.dir)
    if a.split not in manifest["splits"]:
        raise EvalError(f"--split {a.split}: {cfg.data.dir} has {', '.join(manifest['splits'])}")
    problems, note = data.check_shards(cfg.data.dir, manifest)  # sizes: one stat per shard
    if problems:
        raise data.DataError(f"{os.path.join(cfg.data.dir, data.MANIFEST)}: cannot evaluate on this dataset:\n  - "
                             + "\n  - ".join(problems))
    if note:
        print(f"note: {note}", flush=True)
    if getattr(a, "protocol", None):
        return _protocol_context(a, cfg, manifest)
    if a.metrics:
        names = [n.strip() for n in a.metrics.split(",") if n.strip()]
        unknown = [n for n in names if n not in REGISTRY]
        if unknown:
            raise EvalError(f"--metrics: unknown {', '.join(unknown)} (known: {', '.join(REGISTRY)})")
    else:
        names = [n for n in AUTOMATIC if n != "attributes" or data.attribute_names(manifest)]
        names += ["spread"] if a.samples_per_caption > 1 and data.attribute_names(manifest) else []
        names += ["fid"] if (a.inception_graph or a.inception_weights) else []
        names += ["is"] if a.is_classifier else []
    if a.num_images is not None and a.num_images < 1:
        raise EvalError(f"--num-images {a.num_images}: must be at least 1")
    if a.samples_per_caption < 1:
        raise EvalError(f"--samples-per-caption {a.samples_per_caption}: must be at least 1")
    if a.batch_size < 1:  # else range() fails mid-run (0) or generates nothing (negative)
        raise EvalError(f"--batch-size {a.batch_size}: must be at least 1")
    all_pairs = load_pairs(cfg, a.split)
    if not len(all_pairs):
        raise EvalError(f"split {a.split!r} of {cfg.data.dir} has no usable caption")
    # The samples of one caption are consecutive; each sample number draws its own noise.
    rows = np.repeat(all_pairs.first(a.num_images or len(all_pairs)), a.samples_per_caption)
    options = {"damsm_run": a.damsm_run, "inception_graph": a.inception_graph, "folds": a.folds,
               "inception_weights": a.inception_weights, "is_classifier": a.is_classifier,
               "classifier_steps": a.classifier_steps, "samples_per_caption": a.samples_per_caption}
    ctx = Context(cfg=cfg, run_dir=a.run_dir, split=a.split, all_pairs=all_pairs, rows=rows, manifest=manifest,
                  batch_size=a.batch_size, seed=a.seed, options=options)
    metrics = [REGISTRY[n](ctx) for n in names]  # each checks its inputs now
    return ctx, metrics


def _protocol_context(a, cfg, manifest):
    """build_context under --protocol: the protocol's captions, sample plan and metric settings;
    every input it needs is checked here, before any generation."""
    from mirrorgan_tf.config import with_values
    from mirrorgan_tf.evaluation import protocol as published
    from mirrorgan_tf.evaluation.pairs import load_pairs
    from mirrorgan_tf.metrics import REGISTRY, Context, EvalError

    spec = published.check(a)
    options = published.options(a, spec)
    names = options.pop("names")
    cfg = with_values(cfg, {"data.words_num": spec.words_num}, f"--protocol {spec.name}")
    all_pairs = load_pairs(cfg, a.split)
    if not len(all_pairs):
        raise EvalError(f"split {a.split!r} of {cfg.data.dir} has no usable caption")
    rows = published.plan(all_pairs.image_index, a.protocol_images or spec.images, a.seed)
    ctx = Context(cfg=cfg, run_dir=a.run_dir, split=a.split, all_pairs=all_pairs, rows=rows, manifest=manifest,
                  batch_size=a.batch_size, seed=a.seed, options=options)
    return ctx, [REGISTRY[n](ctx) for n in names]  # each checks its inputs now


def evaluate(a) -> dict:
    import numpy as np

    from mirrorgan_tf.evaluation.generator import TrainedGenerator

    ctx, metrics = build_context(a)
    if getattr(a, "protocol", None):
        from mirrorgan_tf.evaluation import protocol as published

        return published.run(a, ctx, metrics)
    from mirrorgan_tf.metrics import prepare_metrics

    generator = TrainedGenerator(a.run_dir, a.checkpoint, a.weights)
    prepare_metrics(metrics)
    pairs = ctx.all_pairs
    start = time.time()
    n = len(ctx.rows)
    for s in range(0, n, ctx.batch_size):
        samples = np.arange(s, min(n, s + ctx.batch_size))
        rows = ctx.rows[samples]
        images = generator(pairs.ids[rows], pairs.lengths[rows], samples, seed=ctx.seed)["images"][-1].numpy()
        for m in metrics:
            m.update(images, samples)
    seconds = time.time() - start
    settings = {"run_dir": a.run_dir, "split": a.split, "images": n, "seed": a.seed,
                "samples_per_caption": a.samples_per_caption,
                "generator": f"{'EMA' if a.weights == 'ema' else 'raw (not EMA)'} GLAM, final stage",
                "generation_seconds": round(seconds, 1),
                "checkpoint": generator.checkpoint_path}
    return {m.name: {**m.result(), "settings": settings} for m in metrics}


def table(results: dict) -> str:
    """The evaluation table: each metric's own lines (Metric.format), in the order given."""
    from mirrorgan_tf.metrics import REGISTRY

    return "\n".join(line for name, r in results.items() for line in REGISTRY[name].format(r))


def save(run_dir: str, split: str, results: dict) -> str:
    from mirrorgan_tf.runs import RunDir

    run = RunDir(run_dir)
    merged = run.read_json("metrics.json")
    merged.setdefault(split, {}).update(results)
    run.write_json("metrics.json", merged)
    return run.path("metrics.json")


def main(argv=None) -> int:
    a = parse(argv)
    from mirrorgan_tf.errors import run_cli

    def body() -> int:
        import tensorflow as tf

        try:
            results = evaluate(a)
        except tf.errors.DataLossError as e:  # a damaged record: name the shard (see train.train)
            from mirrorgan_tf import data
            from mirrorgan_tf.runs import load_run

            damaged = data.explain_read_error(load_run(a.run_dir).cfg.data.dir, e)
            if damaged is None:
                raise
            raise damaged from None
        if a.protocol:
            from mirrorgan_tf.evaluation import protocol as published

            print(published.table(results))
            print(f"written to {os.path.join(a.out, published.RESULTS)}")
            return 0
        print(table(results))
        print(f"written to {save(a.run_dir, a.split, results)}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
