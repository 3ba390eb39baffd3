"""The GAN training step under two configs, timed alternately in one process: what a switch costs.

    python benchmarks/gan_step_ab.py [--config configs/shapes.yaml] [--batch 32] \\
        --b train.mode_seeking_weight=1 [--a key=value ...] [--rounds 12] [--steps 5]

Both steps (training/gan.py's own, random weights and a random batch of the config's shapes, as
`python -m mirrorgan_tf.benchmark` builds them) are built and warmed up first; then each round
times `--steps` steps of A, then of B. Alternating in one process keeps a shared or noisy
machine's load the same for both. Prints the median seconds per step of each and B / A.
"""

from __future__ import annotations

import argparse
import statistics
import time

import tensorflow as tf

from mirrorgan_tf.benchmark import train_step_on_random_batch
from mirrorgan_tf.config import load_config

VOCAB = 52  # shapes' vocabulary size; any size times the same


def build(config: str, overrides: list[str], batch: int):
    cfg = load_config(config, [*overrides, f"data.vocab_size={VOCAB}", "damsm.backbone_weights=random",
                               "stream.backbone_weights=random"])
    step, inputs = train_step_on_random_batch(tf, cfg, batch, VOCAB)
    for _ in range(3):  # trace and warm up
        [v.numpy() for v in step(inputs).values()]
    return step, inputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/shapes.yaml")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--a", action="append", default=[], help="overrides of config A (key=value)")
    p.add_argument("--b", action="append", default=[], help="overrides of config B (key=value)")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=5, help="steps per timed window")
    a = p.parse_args()
    runs = {"A": build(a.config, a.a, a.batch), "B": build(a.config, a.b, a.batch)}
    times = {k: [] for k in runs}
    for _ in range(a.rounds):
        for name, (step, inputs) in runs.items():
            t0 = time.perf_counter()
            for _ in range(a.steps):
                out = step(inputs)
            [v.numpy() for v in out.values()]  # wait for the last step
            times[name].append((time.perf_counter() - t0) / a.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"A {a.a or '(config)'}: {med['A'] * 1000:.1f} ms/step; B {a.b or '(config)'}: {med['B'] * 1000:.1f} ms/step; "
          f"B / A {med['B'] / med['A']:.3f} (medians of {a.rounds} alternating windows of {a.steps} steps, batch {a.batch})")


if __name__ == "__main__":
    main()
