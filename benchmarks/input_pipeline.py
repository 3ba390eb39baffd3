"""Input pipeline throughput: images per second the tf.data pipeline delivers, with no model.

    python benchmarks/input_pipeline.py [--config configs/shapes.yaml] [--data DIR] [--set k=v ...]

Prepares the shapes dataset first if --data has none. Prints each timed window and the median.
Compare with what training consumes (steps/s x batch size): the pipeline must stay well ahead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import tensorflow as tf

from mirrorgan_tf import data
from mirrorgan_tf.config import load_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/shapes.yaml")
    p.add_argument("--data", help="prepared dataset (default: data.dir of the config)")
    p.add_argument("--split", default="train")
    p.add_argument("--batches", type=int, default=50, help="batches per timed window")
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args()
    overrides = a.overrides + ([f"data.dir={a.data}"] if a.data else [])
    cfg = load_config(a.config, overrides)
    if not tf.io.gfile.exists(os.path.join(cfg.data.dir, data.MANIFEST)):
        if cfg.data.dataset != "shapes":
            raise SystemExit(f"{cfg.data.dir}: no prepared dataset; run python -m pipelines.prepare first")
        from pipelines.prepare import prepare

        print(f"preparing shapes into {cfg.data.dir} ...", flush=True)
        prepare("shapes", cfg.data.dir)
    ds = data.make_dataset(cfg, a.split, training=True, repeat=True)
    it = iter(ds)
    for _ in range(5):  # warm-up: fill the prefetch and shuffle buffers
        next(it)
    batch = cfg.train.batch_size
    rates = []
    for w in range(a.windows):
        start = time.perf_counter()
        for _ in range(a.batches):
            next(it)
        rate = a.batches * batch / (time.perf_counter() - start)
        rates.append(rate)
        print(f"window {w + 1}: {rate:8.1f} images/s")
    print(f"{cfg.data.dataset} {a.split}, sizes {cfg.image_sizes}, batch {batch}, {os.cpu_count()} CPU cores: "
          f"median {statistics.median(rates):.1f} images/s over {a.windows} windows of {a.batches} batches")


if __name__ == "__main__":
    main()
