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
import shutil
import subprocess
import sys

import tensorflow as tf

from mirrorgan_tf.config import ConfigError

KINDS = ("auto", "one_device", "mirrored", "multi_worker")
GPU_INSTALL = 'pip install -e ".[gpu]"'  # setup.py's extra: tensorflow[and-cuda] at our TF version
NVIDIA_PROC = "/proc/driver/nvidia/gpus"  # one folder per GPU while NVIDIA's kernel driver is loaded


def nvidia_gpus() -> list[str]:
    """The NVIDIA GPUs this machine has, whatever TensorFlow sees: the lines of `nvidia-smi -L`
    ("GPU 0: NVIDIA A100 ... (UUID: ...)") when the tool is on PATH and answers, else the entries
    of the driver's /proc folder (NVIDIA_PROC), else []. Never raises: no tool, a failing tool or
    no driver all mean "none known"."""
    tool = shutil.which("nvidia-smi")
    if tool:
        try:
            out = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=20).stdout
            gpus = [line.strip() for line in out.splitlines() if line.strip().startswith("GPU")]
            if gpus:
                return gpus
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return [f"{NVIDIA_PROC}/{name}" for name in sorted(os.listdir(NVIDIA_PROC))]
    except OSError:
        return []


def unused_gpu_warning() -> str | None:
    """A warning when the machine has NVIDIA GPUs (`nvidia_gpus`) but TensorFlow sees none (the
    usual cause: plain `tensorflow` from PyPI carries no CUDA libraries), naming the install that
    fixes it; None when there is nothing to say. Lists physical devices only, so it may run before
    the TensorFlow runtime is initialised (as MultiWorkerMirroredStrategy needs)."""
    if tf.config.list_physical_devices("GPU"):
        return None
    machine = nvidia_gpus()
    if not machine:
        return None
    return (f"WARNING: this machine has {len(machine)} NVIDIA GPU(s) ({machine[0]}"
            f"{', ...' if len(machine) > 1 else ''}) but TensorFlow sees none, so everything would run on "
            f"the CPU. Install TensorFlow's CUDA libraries: {GPU_INSTALL}")


def describe(strategy: tf.distribute.Strategy, stage: str, global_batch: int, precision: str, xla: bool) -> str:
    """The block a stage prints once at its start: what it trains on. Lines start with `stage:`.
    `global_batch`: examples per step over all replicas; `precision`: the Keras dtype policy's name
    ("float32", "mixed_float16", "mixed_bfloat16"); `xla`: whether this stage's step is
    jit-compiled."""
    devices = list(strategy.extended.worker_devices)
    replicas = strategy.num_replicas_in_sync
    compute = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}.get(precision, precision)
    return "\n".join([
        f"{stage}: strategy {type(strategy).__name__}, {replicas} replica{'s' if replicas != 1 else ''}",
        f"{stage}:   devices ({len(devices)}): {', '.join(devices)}",
        f"{stage}:   batch: global {global_batch}, per replica {global_batch // max(1, replicas)}",
        f"{stage}:   precision: compute {compute} (policy {precision}); XLA {'on' if xla else 'off'}",
    ])


def split_cpu(count: int) -> None:
    """Make `count` logical CPU devices, so MirroredStrategy can be exercised without GPUs.
    Must run before anything initialises the TensorFlow runtime."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def build_strategy(kind: str = "auto") -> tf.distribute.Strategy:
    """The strategy `kind` names (module docstring). First, on stderr, `unused_gpu_warning`'s
    warning if there is one, so a GPU machine missing its CUDA libraries says so before any work.
    Raises ConfigError for an unknown kind or a missing / malformed TF_CONFIG."""
    if kind not in KINDS:
        raise ConfigError(f"--strategy must be one of {', '.join(KINDS)}, got {kind!r}")
    warning = unused_gpu_warning()
    if warning:
        print(warning, file=sys.stderr, flush=True)
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
