"""What the machine offers and what the install gives: the warning when NVIDIA GPUs are there but
TensorFlow sees none (a stand-in `nvidia-smi` on PATH; this machine has no GPU), the block each
stage prints about its devices, and setup.py's extras against the README's first section."""

import ast
import os
import re
import stat
import subprocess
import sys

import pytest
import tensorflow as tf

from mirrorgan_tf import distribute
from tests.conftest import REPO

A100 = "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-5f1e2d3c-0000-0000-0000-000000000000)"


def _tool(folder, body: str):
    """An executable `nvidia-smi` in `folder` running the shell `body`."""
    folder.mkdir(exist_ok=True)
    path = folder / "nvidia-smi"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.fixture
def no_driver(monkeypatch, tmp_path):
    """No NVIDIA driver folder, whatever the machine running the tests has."""
    monkeypatch.setattr(distribute, "NVIDIA_PROC", str(tmp_path / "no-driver"))


def test_gpus_the_machine_has_but_tensorflow_misses_are_reported_with_the_extra(monkeypatch, tmp_path, capsys,
                                                                                no_driver):
    assert not tf.config.list_physical_devices("GPU")  # this machine, and any without CUDA libraries
    bin_dir = _tool(tmp_path / "bin", f'[ "$1" = "-L" ] && echo "{A100}" && echo "GPU 1: NVIDIA A100-SXM4-80GB"')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert distribute.nvidia_gpus() == [A100, "GPU 1: NVIDIA A100-SXM4-80GB"]
    warning = distribute.unused_gpu_warning()
    assert warning.startswith("WARNING: this machine has 2 NVIDIA GPU(s) (GPU 0: NVIDIA A100")
    assert "TensorFlow sees none" in warning and warning.endswith('pip install -e ".[gpu]"')
    # The strategy builder says it before anything else happens.
    strategy = distribute.build_strategy("one_device")
    assert warning in capsys.readouterr().err
    assert strategy.num_replicas_in_sync == 1


def test_no_warning_without_the_tool_with_a_failing_tool_or_when_tensorflow_sees_the_gpu(monkeypatch, tmp_path,
                                                                                        no_driver):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no nvidia-smi at all
    assert distribute.nvidia_gpus() == [] and distribute.unused_gpu_warning() is None
    bin_dir = _tool(tmp_path / "bin", 'echo "NVIDIA-SMI has failed: no driver" >&2; exit 9')
    monkeypatch.setenv("PATH", str(bin_dir))
    assert distribute.nvidia_gpus() == [] and distribute.unused_gpu_warning() is None
    # GPUs that TensorFlow does see: nothing to say.
    _tool(bin_dir, f'echo "{A100}"')
    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: ["/physical_device:GPU:0"] if kind == "GPU" else real(kind))
    assert distribute.nvidia_gpus() == [A100] and distribute.unused_gpu_warning() is None


def test_the_drivers_proc_folder_counts_when_nvidia_smi_is_missing(monkeypatch, tmp_path):
    proc = tmp_path / "gpus"
    (proc / "0000:17:00.0").mkdir(parents=True)
    monkeypatch.setattr(distribute, "NVIDIA_PROC", str(proc))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert distribute.nvidia_gpus() == [f"{proc}/0000:17:00.0"]
    assert "1 NVIDIA GPU(s)" in distribute.unused_gpu_warning()


DESCRIBE_TWO = """
from mirrorgan_tf import distribute
distribute.split_cpu(2)
print(distribute.describe(distribute.build_strategy("mirrored"), "gan", 8, "mixed_bfloat16", False))
"""


def test_a_stage_block_names_strategy_devices_replicas_batches_precision_and_xla():
    # Two logical CPUs need a fresh TensorFlow runtime: a subprocess.
    r = subprocess.run([sys.executable, "-c", DESCRIBE_TWO], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines() == [
        "gan: strategy MirroredStrategy, 2 replicas",
        "gan:   devices (2): /job:localhost/replica:0/task:0/device:CPU:0, /job:localhost/replica:0/task:0/device:CPU:1",
        "gan:   batch: global 8, per replica 4",
        "gan:   precision: compute bfloat16 (policy mixed_bfloat16); XLA off",
    ]


def _setup_lists():
    """install_requires and extras_require as setup.py writes them (read, not run)."""
    call = next(n for n in ast.walk(ast.parse((REPO / "setup.py").read_text()))
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    return kw["install_requires"], kw["extras_require"]


def test_the_gpu_extra_is_tensorflow_with_cuda_at_our_version_and_the_readme_says_so():
    requires, extras = _setup_lists()
    tensorflow = next(r for r in requires if re.match(r"tensorflow[~=<>]", r))
    assert extras["gpu"] == [tensorflow.replace("tensorflow", "tensorflow[and-cuda]", 1)]
    first_section = (REPO / "README.md").read_text().split("\n## ")[1]
    assert first_section.startswith("Two commands on a fresh machine")
    assert 'pip install -e ".[gpu]"' in first_section and "pip install -e ." in first_section


def test_the_default_tuner_needs_nothing_beyond_the_plain_install():
    """`pip install -e .` then `python -m mirrorgan_tf.tune` with its defaults: the default tuner's
    libraries are install requirements, not an extra's."""
    from mirrorgan_tf.config import TuneConfig

    requires, _ = _setup_lists()
    names = {re.split(r"[~=<>\[ ;]", r, maxsplit=1)[0] for r in requires}
    assert TuneConfig().tuner == "bayesian"
    assert {"scipy", "scikit-learn"} <= names
