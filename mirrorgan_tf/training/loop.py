"""Machinery every training stage shares: the run directory, checkpoints, the step loop with its
progress line, TensorBoard summaries, the non-finite guard, and image grids.

A run directory holds:
    config.yaml                 the resolved config of the run
    stages.json                 which stages are finished (steps, seconds)
    <stage>/checkpoints/        tf.train.CheckpointManager of that stage
    <stage>/metrics.json        final losses, steps, time and throughput of the stage
    logs/<stage>/               TensorBoard events
    samples/                    image grids
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow as tf

STAGES = ("damsm", "stream", "gan")


class NonFiniteLoss(RuntimeError):
    pass


class RunDir:
    def __init__(self, root: str):
        self.root = root.rstrip("/")
        tf.io.gfile.makedirs(self.root)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def checkpoints(self, stage: str) -> str:
        return self.path(stage, "checkpoints")

    def logs(self, stage: str) -> str:
        return self.path("logs", stage)

    def samples(self) -> str:
        path = self.path("samples")
        tf.io.gfile.makedirs(path)
        return path

    def _read_json(self, name: str) -> dict:
        path = self.path(name)
        if not tf.io.gfile.exists(path):
            return {}
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)

    def _write_json(self, name: str, value: dict) -> None:
        path = self.path(name)
        tf.io.gfile.makedirs(os.path.dirname(path))
        with tf.io.gfile.GFile(path + ".tmp", "w") as f:
            f.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
        tf.io.gfile.rename(path + ".tmp", path, overwrite=True)

    def stages(self) -> dict:
        return self._read_json("stages.json")

    def is_done(self, stage: str) -> bool:
        return bool(self.stages().get(stage, {}).get("done"))

    def mark_done(self, stage: str, info: dict) -> None:
        stages = self.stages()
        stages[stage] = {"done": True, **info}
        self._write_json("stages.json", stages)

    def write_metrics(self, stage: str, metrics: dict) -> None:
        self._write_json(os.path.join(stage, "metrics.json"), metrics)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict())


def checkpoint_dir(run: RunDir, stage: str, strategy: tf.distribute.Strategy) -> str:
    """Under MultiWorkerMirroredStrategy every worker must save (the save is collective); only the
    chief writes into the run directory, the others into a scratch folder of their own."""
    if is_chief(strategy):
        return run.checkpoints(stage)
    resolver = strategy.cluster_resolver
    return os.path.join(run.root, f".worker-{resolver.task_type}-{resolver.task_id}", stage)


def find_checkpoint(path: str, stage: str) -> Optional[str]:
    """The latest `stage` checkpoint in a run directory, a stage folder, a checkpoint folder, or a
    checkpoint prefix itself."""
    for candidate in (path, os.path.join(path, "checkpoints"), os.path.join(path, stage, "checkpoints")):
        latest = tf.train.latest_checkpoint(candidate) if tf.io.gfile.isdir(candidate) else None
        if latest:
            return latest
    if tf.io.gfile.exists(path + ".index"):
        return path
    return None


def restore_weights(path: str, stage: str, **objects) -> str:
    """Restore some objects (e.g. stem=...) from another stage's or run's checkpoint."""
    prefix = find_checkpoint(path, stage)
    if prefix is None:
        raise FileNotFoundError(f"{path}: no {stage} checkpoint found (expected a run directory, "
                                f"a '{stage}' checkpoint folder or a checkpoint prefix)")
    tf.train.Checkpoint(**objects).restore(prefix).expect_partial().assert_existing_objects_matched()
    return prefix


def resolve_stage_checkpoint(run: RunDir, stage: str, configured: str) -> str:
    """Where a later stage finds a pretrained stage: the configured path, else this run's."""
    if configured:
        return configured
    if not run.is_done(stage):
        raise FileNotFoundError(f"{run.root}: stage '{stage}' has not finished; run it first "
                                f"(--stage {stage}) or set {stage}.checkpoint=PATH")
    return run.path(stage)


class Progress:
    """One console line per `every` steps (rewritten in place on a terminal): rate, ETA, losses."""

    def __init__(self, stage: str, start: int, total: int, every: int):
        self.stage, self.start, self.total, self.every = stage, start, total, max(1, every)
        self.t0 = time.time()
        self.tty = sys.stdout.isatty()

    def update(self, step: int, losses: dict, final: bool = False) -> None:
        if step % self.every and not final:
            return
        done = step - self.start
        elapsed = time.time() - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "--:--:--"
        text = " ".join(f"{k} {v:.4g}" for k, v in losses.items())
        line = f"{self.stage:>6} {step:>7}/{self.total} {rate:6.2f} it/s ETA {eta_text} | {text}"
        if self.tty:
            sys.stdout.write("\r" + line + ("\n" if final else ""))
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()


@dataclass
class LoopResult:
    start: int  # the step this session resumed from
    steps: int  # the step it ended at
    seconds: float
    last_losses: dict
    checkpoint: tf.train.Checkpoint


def _first_non_finite(variables) -> Optional[str]:
    for v in variables:
        if not bool(tf.reduce_all(tf.math.is_finite(v))):
            return v.path if hasattr(v, "path") else v.name
    return None


def run_loop(*, stage: str, run: RunDir, strategy: tf.distribute.Strategy, checkpoint: tf.train.Checkpoint,
             step_var: tf.Variable, step_fn: Callable[[dict], dict], iterator: Iterator, total_steps: int,
             checkpoint_every: int, keep: int, log_every: int, global_batch: int,
             on_sample: Optional[Callable[[int, tf.summary.SummaryWriter], None]] = None,
             sample_every: int = 0, learning_rates: Optional[Callable[[int], dict]] = None,
             trained_variables=()) -> LoopResult:
    """Run `step_fn` until `total_steps`, resuming from the latest checkpoint of `stage`.

    `step_fn(batch)` returns a dict of scalar losses (already reduced across replicas). A
    non-finite loss stops the run before anything is saved, and so do non-finite
    `trained_variables` at a checkpoint, so the last checkpoint always is a good one.
    """
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir(run, stage, strategy), max_to_keep=keep)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        print(f"{stage}: resumed from {manager.latest_checkpoint} at step {int(step_var.numpy())}", flush=True)
    chief = is_chief(strategy)
    writer = tf.summary.create_file_writer(run.logs(stage)) if chief else tf.summary.create_noop_writer()
    start = int(step_var.numpy())
    progress = Progress(stage, start, total_steps, log_every)
    t0 = time.time()
    losses: dict = {}
    step = start
    with writer.as_default():
        while step < total_steps:
            batch = next(iterator)
            values = step_fn(batch)
            step += 1
            losses = {k: float(v) for k, v in values.items()}
            bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
            if bad:
                name, value = next(iter(bad.items()))
                raise NonFiniteLoss(
                    f"stage '{stage}', step {step}: loss '{name}' is {value}; stopped without saving. "
                    f"The latest checkpoint is still {manager.latest_checkpoint or '(none yet)'}")
            step_var.assign(step)
            if step % log_every == 0 or step == total_steps:
                for k, v in losses.items():
                    tf.summary.scalar(f"loss/{k}", v, step=step)
                for k, v in (learning_rates(step) if learning_rates else {}).items():
                    tf.summary.scalar(f"learning_rate/{k}", v, step=step)
            progress.update(step, losses, final=step == total_steps)
            if on_sample and sample_every and (step % sample_every == 0 or step == total_steps):
                on_sample(step, writer)
            if step % checkpoint_every == 0 or step == total_steps:
                broken = _first_non_finite(trained_variables)
                if broken:
                    raise NonFiniteLoss(
                        f"stage '{stage}', step {step}: weight '{broken}' is not finite; stopped without "
                        f"saving. The latest checkpoint is still {manager.latest_checkpoint or '(none yet)'}")
                manager.save(checkpoint_number=step)
        writer.flush()
    seconds = time.time() - t0
    done = step - start
    if chief:
        run.write_metrics(stage, {
            "steps": step, "steps_this_session": done, "seconds_this_session": round(seconds, 2),
            "images_per_second": round(done * global_batch / seconds, 2) if seconds > 0 and done else None,
            "last_losses": losses, "replicas": strategy.num_replicas_in_sync, "global_batch": global_batch,
        })
        run.mark_done(stage, {"steps": step, "checkpoint": manager.latest_checkpoint})
    return LoopResult(start, step, seconds, losses, checkpoint)


def replica_scale() -> float:
    """1 / replicas: each replica's batch-mean loss times this sums to the global-batch mean."""
    return 1.0 / tf.distribute.get_strategy().num_replicas_in_sync


def reduce_losses(strategy: tf.distribute.Strategy, per_replica: dict) -> dict:
    """Per-replica losses (each already scaled by 1 / replicas) -> global values."""
    return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}


def clip_by_global_norm_across_replicas(grads, clip_norm: float):
    """Clip the global-batch gradient (the sum over replicas) by its norm, exactly as one device
    would; returns per-replica shares that the optimizer's own all-reduce sums back together."""
    ctx = tf.distribute.get_replica_context()
    n = tf.distribute.get_strategy().num_replicas_in_sync
    grads = [tf.convert_to_tensor(g) for g in grads]  # embedding gradients arrive as IndexedSlices
    total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads) if n > 1 else grads
    clipped, _ = tf.clip_by_global_norm(total, clip_norm)
    return [g / n for g in clipped]


def image_grid(rows: list[np.ndarray]) -> np.ndarray:
    """rows: list of [N, H, W, 3] float arrays in [-1, 1] (different H allowed) -> uint8 grid,
    each row upscaled to the largest size (nearest), one row per array."""
    size = max(r.shape[1] for r in rows)
    out = []
    for r in rows:
        k = size // r.shape[1]
        r = np.repeat(np.repeat(r, k, axis=1), k, axis=2)
        out.append(np.concatenate(list(r), axis=1))
    grid = np.concatenate(out, axis=0)
    return np.clip((grid + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path: str) -> None:
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(tf.io.encode_png(array).numpy())
