"""Run directories: what training writes and every later command (sampling, evaluation, export,
serving) reads, found from the run directory alone.

A run directory holds:
    config.yaml                 the resolved config of the run
    stages.json                 which stages are finished (steps, seconds)
    <stage>/checkpoints/        tf.train.CheckpointManager of that stage
    <stage>/metrics.json        final losses, steps, time and throughput of the stage
    logs/<stage>/               TensorBoard events
    samples/                    image grids
    metrics.json                evaluation results

`load_run(path)` gives a run's config and vocabulary and builds its trained networks (STEM and the
EMA generator, the DAMSM image encoder), restored from the run's checkpoints. Paths go through
tf.io.gfile, so a run directory may live on gs://.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import tensorflow as tf

from mirrorgan_tf import data, distribute, images
from mirrorgan_tf.config import load_config
from mirrorgan_tf.models import networks

STAGES = ("damsm", "stream", "gan")
CONFIG = "config.yaml"


class RunDir:
    """The files of one run directory (created if missing)."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        tf.io.gfile.makedirs(self.root)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def config_path(self) -> str:
        return self.path(CONFIG)

    def checkpoints(self, stage: str) -> str:
        return self.path(stage, "checkpoints")

    def logs(self, stage: str) -> str:
        return self.path("logs", stage)

    def samples(self) -> str:
        path = self.path("samples")
        tf.io.gfile.makedirs(path)
        return path

    def read_json(self, name: str) -> dict:
        """The JSON object in file `name` of the run, {} when there is none."""
        path = self.path(name)
        if not tf.io.gfile.exists(path):
            return {}
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)

    def write_json(self, name: str, value: dict) -> None:
        images.atomic_write(self.path(name), json.dumps(value, indent=2, sort_keys=True) + "\n")

    def stages(self) -> dict:
        return self.read_json("stages.json")

    def is_done(self, stage: str) -> bool:
        return bool(self.stages().get(stage, {}).get("done"))

    def mark_done(self, stage: str, info: dict) -> None:
        stages = self.stages()
        stages[stage] = {"done": True, **info}
        self.write_json("stages.json", stages)

    def write_metrics(self, stage: str, metrics: dict) -> None:
        self.write_json(os.path.join(stage, "metrics.json"), metrics)


def checkpoint_dir(run: RunDir, stage: str, strategy: tf.distribute.Strategy) -> str:
    """Where this worker saves `stage`'s checkpoints. Under MultiWorkerMirroredStrategy every
    worker must save (the save is collective); only the chief writes into the run directory, the
    others into a scratch folder of their own."""
    if distribute.is_chief(strategy):
        return run.checkpoints(stage)
    resolver = strategy.cluster_resolver
    return os.path.join(run.root, f".worker-{resolver.task_type}-{resolver.task_id}", stage)


def find_checkpoint(path: str, stage: str) -> Optional[str]:
    """The latest `stage` checkpoint prefix in a run directory, a stage folder, a checkpoint
    folder, or the checkpoint prefix itself; None when there is none."""
    for candidate in (path, os.path.join(path, "checkpoints"), os.path.join(path, stage, "checkpoints")):
        latest = tf.train.latest_checkpoint(candidate) if tf.io.gfile.isdir(candidate) else None
        if latest:
            return latest
    if tf.io.gfile.exists(path + ".index"):
        return path
    return None


def restore_weights(path: str, stage: str, **objects) -> str:
    """Restore some objects (e.g. stem=...) from a `stage` checkpoint found under `path` (see
    `find_checkpoint`); returns the checkpoint prefix. Raises FileNotFoundError when there is no
    checkpoint, AssertionError when one of the objects is not in it."""
    prefix = find_checkpoint(path, stage)
    if prefix is None:
        raise FileNotFoundError(f"{path}: no {stage} checkpoint found (expected a run directory, "
                                f"a '{stage}' checkpoint folder or a checkpoint prefix)")
    tf.train.Checkpoint(**objects).restore(prefix).expect_partial().assert_existing_objects_matched()
    return prefix


def resolve_stage_checkpoint(run: RunDir, stage: str, configured: str) -> str:
    """Where a later stage finds a pretrained stage: the configured path, else this run's.
    Raises FileNotFoundError when it is this run's and the stage has not finished."""
    if configured:
        return configured
    if not run.is_done(stage):
        raise FileNotFoundError(f"{run.root}: stage '{stage}' has not finished; run it first "
                                f"(--stage {stage}) or set {stage}.checkpoint=PATH")
    return run.path(stage)


def vocabulary_path(cfg) -> str:
    """The vocabulary file a run's networks were trained with: the one place that says where it is
    (today the prepared dataset's; a run may later pin its own copy)."""
    return data.vocabulary_path(cfg.data.dir)


def restore_damsm(cfg, vocab_size: int, path: str):
    """(STEM, DAMSM image encoder) of configuration `cfg`, restored from the damsm checkpoint found
    under `path` (run directory, stage folder, checkpoint folder or prefix)."""
    stem = networks.build_stem(cfg, vocab_size)
    encoder = networks.build_damsm_image_encoder(cfg)
    restore_weights(path, "damsm", stem=stem, image_encoder=encoder)
    return stem, encoder


class Run:
    """A trained (or training) run directory, read only: its config, vocabulary and networks.

    Build with `load_run`. Attributes: `dir` (RunDir), `cfg` (the resolved Config),
    `vocab_path` (str), `vocab_size` (int)."""

    def __init__(self, run_dir: RunDir, cfg):
        self.dir, self.cfg = run_dir, cfg
        self.vocab_path = vocabulary_path(cfg)
        self.vocab_size = data.vocab_size(cfg)

    @property
    def root(self) -> str:
        return self.dir.root

    def gan_checkpoint(self) -> Optional[str]:
        """The latest gan checkpoint prefix of the run, None before the first one."""
        return find_checkpoint(self.dir.path("gan"), "gan")

    def generator(self, finished: bool = True):
        """(STEM, EMA GLAM) restored: STEM from the run's DAMSM stage (or the configured
        damsm.checkpoint), GLAM from the EMA weights of the latest gan checkpoint. With
        finished=True the gan stage must be done (FileNotFoundError otherwise); finished=False
        also takes a run that is still training."""
        cfg = self.cfg
        stem = networks.build_stem(cfg, self.vocab_size, batch=1)
        glam = networks.build_glam(cfg, batch=1)
        if finished and not self.dir.is_done("gan"):
            raise FileNotFoundError(f"{self.root}: the gan stage has not finished; nothing to export")
        restore_weights(resolve_stage_checkpoint(self.dir, "damsm", cfg.damsm.checkpoint), "damsm", stem=stem)
        restore_weights(self.dir.path("gan"), "gan", glam_ema=glam)
        return stem, glam

    def damsm_checkpoint(self) -> str:
        """Where this run's DAMSM is: the configured damsm.checkpoint, else the run's damsm stage."""
        return self.cfg.damsm.checkpoint or self.dir.path("damsm")

    def damsm(self):
        """(STEM, DAMSM image encoder) of the run, restored (FileNotFoundError without a checkpoint)."""
        return restore_damsm(self.cfg, self.vocab_size, self.damsm_checkpoint())


def load_run(path: str) -> Run:
    """The run directory at `path`. Raises FileNotFoundError when it has no config.yaml, and
    ConfigError when that config does not load."""
    config_path = os.path.join(path.rstrip("/"), CONFIG)
    if not tf.io.gfile.exists(config_path):
        raise FileNotFoundError(f"{config_path}: not a run directory (no {CONFIG})")
    return Run(RunDir(path), load_config(config_path))
