"""The one place that builds the tf.distribute strategy.

    auto          MirroredStrategy over all visible GPUs when there are several, the one GPU when
                  there is one, else the CPU
    one_device    the first GPU, else the CPU
    mirrored      MirroredStrategy (all GPUs; on a CPU-only machine, every logical CPU device)
    multi_worker  MultiWorkerMirroredStrategy, cluster taken from the TF_CONFIG environment variable,
                  else, inside a SLURM job step (srun, one task per worker), from SLURM's variables
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
    machine = nvidia_gpus()  # first: on the usual machine without GPUs, TensorFlow is not asked at all
    if not machine or tf.config.list_physical_devices("GPU"):
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
    """The strategy of `--strategy kind` (KINDS, see the module docstring). First, on stderr,
    `unused_gpu_warning`'s warning if there is one, so a GPU machine missing its CUDA libraries says
    so before any work. For multi_worker it must run before anything initialises the TensorFlow
    runtime. Raises ConfigError naming the bad kind, a missing or malformed TF_CONFIG, or missing or
    malformed SLURM variables."""
    if kind not in KINDS:
        raise ConfigError(f"--strategy must be one of {', '.join(KINDS)}, got {kind!r}")
    warning = unused_gpu_warning()
    if warning:
        print(warning, file=sys.stderr, flush=True)
    if kind == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            if any(name.startswith("SLURM_") for name in os.environ):
                return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=slurm_cluster_resolver())
            raise ConfigError("--strategy multi_worker needs the TF_CONFIG environment variable "
                              "(cluster and task of this worker), or a SLURM job step (srun) to take them from")
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


SLURM_STEP_VARIABLES = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE")
SLURM_PORT = "MIRRORGAN_SLURM_PORT"  # the first worker port on each node; the node's next tasks take the next ones


def _gpus_on_node() -> int:
    """GPUs this node shows without initialising TensorFlow: CUDA_VISIBLE_DEVICES when set, else
    nvidia-smi's list, else 0 (a CPU node)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def slurm_cluster_resolver() -> tf.distribute.cluster_resolver.ClusterResolver:
    """The cluster of a SLURM job step, one worker per task (`srun --ntasks-per-node=k ...`), from
    the variables srun sets for each task (SLURM_STEP_VARIABLES): workers are the step's nodes in
    SLURM_STEP_NODELIST order (expanded: `node[01-02]`), each node's tasks on ports
    MIRRORGAN_SLURM_PORT (default 8888), +1, ...; this task is worker SLURM_PROCID. On GPU nodes
    each task gets an equal share of its node's GPUs (CUDA_VISIBLE_DEVICES is set for it, as
    tf.distribute.cluster_resolver.SlurmClusterResolver does); on CPU nodes each uses the CPU
    (the stock resolver would fail there asking nvidia-smi for GPUs).

    Must run before anything initialises the TensorFlow runtime. Raises ConfigError naming the
    missing SLURM variables (e.g. the job script ran the program without srun), a malformed
    variable or port."""
    from tensorflow.python.distribute.cluster_resolver import slurm_cluster_resolver as slurm

    missing = [name for name in SLURM_STEP_VARIABLES if name not in os.environ]
    if missing:
        raise ConfigError(f"--strategy multi_worker without TF_CONFIG takes the cluster from a SLURM job step, but "
                          f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: start one task per "
                          f"worker with srun (or set TF_CONFIG)")
    try:
        port = int(os.environ.get(SLURM_PORT, "8888"))
        per_node = slurm.expand_tasks_per_node(os.environ["SLURM_STEP_TASKS_PER_NODE"])
        gpus = _gpus_on_node()
        resolver = slurm.SlurmClusterResolver(
            port_base=port, gpus_per_node=gpus or max(per_node), gpus_per_task=None if gpus else 1,
            auto_set_gpu=bool(gpus))
        spec = resolver.cluster_spec()  # also hands this task its GPUs (CUDA_VISIBLE_DEVICES)
    except (ValueError, RuntimeError, AssertionError) as e:
        names = ", ".join(f"{n}={os.environ.get(n)!r}" for n in (*SLURM_STEP_VARIABLES, SLURM_PORT))
        raise ConfigError(f"cannot build the cluster from SLURM's variables ({names}): {e}") from None
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec, task_type=resolver.task_type, task_id=resolver.task_id, rpc_layer="grpc",
        num_accelerators={"GPU": resolver.num_accelerators()["GPU"]} if gpus else {})


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one worker that writes the run directory (summaries, samples, stage records):
    always without a cluster; else the chief task, or worker 0 of a cluster without a chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict())


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """How many processes (chief and workers) train together: 1 without a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return max(1, sum(len(spec.get(role, [])) for role in ("chief", "worker")))


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True when `strategy` spans a cluster of several tasks (MultiWorkerMirroredStrategy under a
    TF_CONFIG naming more than one)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return False
    return sum(len(tasks) for tasks in resolver.cluster_spec().as_dict().values()) > 1
