"""`python -m mirrorgan_tf.sample` in batches: the pixels do not depend on --batch-size or
--columns, pictures hold at most --columns samples, and peak memory does not grow with --num
(measured on the smoke-trained run, by benchmarks/sample_memory.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO

CAPTION = "a small red circle on the left"
SIZE = 64  # the smoke run's final image size
STAGES = 3


def _pictures(folder) -> dict:
    return {name: tf.io.decode_png((folder / name).read_bytes()).numpy() for name in sorted(os.listdir(folder))}


def _same_attention(actual, desired, err_msg):
    """Attention pictures from generator calls of different batch sizes: each word's map is nearly
    flat and stretched to its own min..max, which magnifies the last bits CPU kernels round
    differently at another batch size (seen in CI on an AVX2 machine: 2 of 239,616 values one level
    apart). A mix-up of samples or words would move whole tiles, far more than this."""
    assert actual.shape == desired.shape, err_msg
    diff = np.abs(actual.astype(int) - desired.astype(int))
    assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3, (err_msg, diff.max(), np.mean(diff > 0))


def test_same_seed_same_pixels_whatever_the_batch_size_and_columns(trained_run, tmp_path):
    from mirrorgan_tf.sample import main

    run_dir = str(trained_run[0])
    base = ["--run-dir", run_dir, "--caption", CAPTION, "--caption", "a huge blue block at the top", "--num", "5",
            "--seed", "3"]
    for name, batch, columns in (("whole", 5, 16), ("ones", 1, 16), ("parts", 2, 2)):
        assert main([*base, "--batch-size", str(batch), "--columns", str(columns), "--out", str(tmp_path / name)]) == 0
    whole, ones, parts = (_pictures(tmp_path / n) for n in ("whole", "ones", "parts"))
    assert list(whole) == ["000-a-small-red-circle-on-the-left-attention.png", "000-a-small-red-circle-on-the-left.png",
                           "001-a-huge-blue-block-at-the-top-attention.png", "001-a-huge-blue-block-at-the-top.png"]
    assert whole["000-a-small-red-circle-on-the-left.png"].shape == (STAGES * SIZE, 5 * SIZE, 3)
    assert list(ones) == list(whole)
    for name in whole:  # one sample per generator call against five: the same pictures
        (_same_attention if name.endswith("-attention.png") else np.testing.assert_array_equal)(
            ones[name], whole[name], err_msg=name)
    # Five samples at two per picture: three pictures of 2, 2 and 1 samples, side by side the whole grid.
    for caption in ("000-a-small-red-circle-on-the-left", "001-a-huge-blue-block-at-the-top"):
        names = [f"{caption}-{p:03d}.png" for p in range(3)]
        assert [n for n in parts if n.startswith(caption) and not n.endswith("attention.png")] == names
        assert [parts[n].shape[1] for n in names] == [2 * SIZE, 2 * SIZE, SIZE]
        np.testing.assert_array_equal(np.concatenate([parts[n] for n in names], axis=1), whole[f"{caption}.png"])
        _same_attention(parts[f"{caption}-attention.png"], whole[f"{caption}-attention.png"], err_msg=caption)
    assert not [n for n in os.listdir(tmp_path / "parts") if n.startswith(".")]  # no half-written file left


def test_batch_size_and_columns_below_one_are_refused(trained_run, tmp_path, capsys):
    from mirrorgan_tf.sample import main

    base = ["--run-dir", str(trained_run[0]), "--caption", CAPTION, "--out", str(tmp_path / "o")]
    for flag in ("--batch-size", "--columns"):
        assert main([*base, flag, "0"]) == 2
        assert f"{flag} 0: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_peak_memory_and_picture_size_do_not_grow_with_num(trained_run):
    """8 and 256 samples, 8 per generator call, 16 per picture. Before batching, 256 samples went
    through the generator at once into one 16,384 px wide picture, and peak RSS rose from 853 to
    1,188 MiB (measured on a smoke run). Batched, it rose from 853 to 867 MiB, and stayed at 866
    MiB at 1,024 samples: the step is a one-time cost of the second call and the 16-sample pictures,
    not a growth with --num. The 64 MiB margin takes that step and allocator noise, and is a fifth
    of the old growth."""
    cmd = [sys.executable, "benchmarks/sample_memory.py", "--run-dir", str(trained_run[0]), "--num", "8", "256",
           "--batch-size", "8", "--columns", "16", "--json"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    small, large = json.loads(r.stdout.splitlines()[-1])["runs"]
    assert (small["num"], large["num"]) == (8, 256)
    assert (small["files"], large["files"]) == (2, 256 // 16 + 1)  # the grids, and the attention picture
    assert small["widest_px"] == 8 * SIZE and large["widest_px"] == 16 * SIZE
    assert large["peak_rss_mib"] - small["peak_rss_mib"] < 64, (small, large)
