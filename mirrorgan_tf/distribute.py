"""The one place that builds the tf.distribute strategy.

    auto          MirroredStrategy over all visible GPUs when there are several, the one GPU when
                  there is one, else the CPU
    one_device    the first GPU, else the CPU
    mirrored      MirroredStrategy (all GPUs; on a CPU-only machine, every logical CPU device)
    multi_worker  MultiWorkerMirroredStrategy, cluster taken from the TF_CONFIG environment variable
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from mirrorgan_tf.config import ConfigError

KINDS = ("auto", "one_device", "mirrored", "multi_worker")


def split_cpu(count: int) -> None:
    """Make `count` logical CPU devices, so MirroredStrategy can be exercised without GPUs.
    Must run before anything initialises the TensorFlow runtime."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def build_strategy(kind: str = "auto") -> tf.distribute.Strategy:
    if kind not in KINDS:
        raise ConfigError(f"--strategy must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("--strategy multi_worker needs the TF_CONFIG environment variable "
                              "(cluster and task of this worker)")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as e:
            raise ConfigError(f"TF_CONFIG is not valid JSON ({e})") from None
        # Must come before anything initialises the runtime (listing devices does).
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "mirrored" or (kind == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one worker that writes the run directory (summaries, samples, stage records):
    always without a cluster; else the chief task, or worker 0 of a cluster without a chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict())


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True when `strategy` spans a cluster of several tasks (MultiWorkerMirroredStrategy under a
    TF_CONFIG naming more than one)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return False
    return sum(len(tasks) for tasks in resolver.cluster_spec().as_dict().values()) > 1
