"""The benchmark's helpers (no timing is asserted: times are measurements, not test outcomes)."""

import json
import math
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf import benchmark
from mirrorgan_tf.config import load_config
from tests.conftest import CONFIGS, REPO


def test_random_batch_has_the_pipelines_keys_shapes_and_ranges():
    cfg = load_config(CONFIGS / "cub.yaml")
    b = benchmark.random_batch(tf, cfg, 5, vocab_size=40)
    assert [tuple(x.shape) for x in b["images"]] == [(5, s, s, 3) for s in (64, 128, 256)]
    assert all(float(tf.reduce_max(tf.abs(x))) <= 1.0 for x in b["images"])
    ids, lengths = b["caption_ids"].numpy(), b["caption_len"].numpy()
    assert ids.shape == (5, 18) and ((lengths >= 9) & (lengths <= 18)).all()
    for row, n in zip(ids, lengths):  # words in [2, vocab), the END id 0 after the caption
        assert (row[:n] >= 2).all() and (row[:n] < 40).all() and (row[n:] == 0).all()
    assert tuple(b["noise"].shape) == (5, 100) and tuple(b["ca_noise"].shape) == (5, 100)


def test_random_vocabulary_words_are_distinct_letters():
    words = benchmark._random_vocabulary(800)
    assert len(set(words)) == 800 and all(w.isalpha() and w.islower() for w in words)


PEAK_RSS_CHECK = """
import numpy as np
from mirrorgan_tf import benchmark
assert benchmark.reset_peak_rss()  # the peak is now the present use
big = np.ones(64 * 2**20, np.uint8)  # 64 MiB resident
before = benchmark.peak_rss_mb()
del big
assert benchmark.reset_peak_rss()
after = benchmark.peak_rss_mb()
assert after <= before - 48, (before, after)
"""


def test_peak_rss_resets_to_the_present_use():
    # In a process of its own: in a test worker, the memory of the tests run before (and
    # TensorFlow's threads) decide the peak, not the 64 MiB this test allocates.
    r = subprocess.run([sys.executable, "-c", PEAK_RSS_CHECK], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_graph_flops_counts_a_matmul():
    f = tf.function(lambda a, b: tf.linalg.matmul(a, b))
    cf = f.get_concrete_function(tf.TensorSpec([8, 16]), tf.TensorSpec([16, 4]))
    assert benchmark.graph_flops(tf, cf) == 2 * 8 * 16 * 4


def test_bad_arguments_exit_2_naming_them():
    for args, word in ((["--batch", "0"], "--batch"), (["--precision", "float8"], "--precision"),
                       (["--config", "configs/nope.yaml"], "nope.yaml")):
        r = subprocess.run([sys.executable, "-m", "mirrorgan_tf.benchmark", *args, "--what", "infer"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and word in r.stderr, (args, r.stderr[-500:])


def _figures(value, path=""):
    """(path, number) of every number in a JSON value, bools excluded."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _figures(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _figures(v, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def test_the_cli_measures_the_smoke_config_end_to_end():
    r = subprocess.run([sys.executable, "-m", "mirrorgan_tf.benchmark", "--config", "configs/shapes_smoke.yaml",
                        "--what", "all", "--repeat", "1", "--warmup", "1", "--batch", "4", "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert {"train_s_per_iter", "infer_images_per_s", "infer_latency_s", "peak_rss_mb", "machine",
            "peak_gflops", "variants"} <= set(report)
    assert set(report["infer_latency_s"]) == {"batch1", "batch4"}
    (variant,) = report["variants"]
    assert (variant["precision"], variant["xla"]) == ("float32", False)
    (train,) = variant["train"]  # --batch 4 is also the small batch: one training size
    assert train["batch"] == 4 and train["traces"] == 1  # the step traced once: no retracing
    parts = {"generator_forward", "discriminator_updates", "stream_loss_forward_backward", "generator_half_step",
             "ema", "generator_backward_and_update"}
    assert set(train["breakdown_s"]) == parts and set(train["breakdown_cpu_s"]) == parts
    assert {"s_per_iter", "cpu_s_per_iter", "images_per_s", "first_step_s", "trace_s", "gflop_per_iter",
            "achieved_gflops", "peak_rss_mb"} <= set(train)
    assert {"export_s", "load_s", "batch1", "batch4", "gflop_per_image", "peak_rss_mb"} <= set(variant["infer"])
    assert report["train_s_per_iter"] == train["s_per_iter"]
    figures = dict(_figures(report))
    assert len(figures) > 40
    for path, value in figures.items():
        assert math.isfinite(value), path
        # The one derived figure, half-step minus two of its parts timed apart, may dip below 0
        # when the machine is busy; everything measured must be positive.
        if "generator_backward_and_update" not in path:
            assert value > 0, (path, value)


def test_train_batches_share_one_build_and_run_in_the_precision_asked_for(capsys):
    """bfloat16, generation then two batch sizes on one set of networks: every network really
    computes in bfloat16 (the export's clear_session once dropped training back to float32
    unnoticed), each size traces its own step once, the entries come back in the order asked
    for, and the derived parts are the step minus the timed ones."""
    try:
        assert benchmark.main(["--config", "configs/shapes_smoke.yaml", "--what", "all", "--precision", "bfloat16",
                               "--batch", "4", "--train-batches", "4,2", "--repeat", "1", "--warmup", "1",
                               # two stages: each batch size traces its step and its timed parts
                               # a third faster; the CLI test below keeps the smoke config's three
                               "--set", "model.stages=2", "--json"]) == 0
    finally:
        keras.mixed_precision.set_global_policy("float32")
    report = json.loads(capsys.readouterr().out)
    (variant,) = report["variants"]
    assert variant["precision"] == "bfloat16"
    assert variant["infer"]["compute_dtype"] == {"glam": "bfloat16"}
    for r in variant["train"]:
        assert r["compute_dtype"] == {"glam": "bfloat16", "stream_encoder": "bfloat16"}, r["batch"]
    large, small = variant["train"]
    assert (large["batch"], small["batch"]) == (4, 2)
    assert report["train_s_per_iter"] == large["s_per_iter"]
    assert large["build_s"] == small["build_s"] > 0  # one build, shared
    for r in (large, small):
        assert r["traces"] == 1 and r["gflop_per_iter"] > 0
        for parts, whole in ((r["breakdown_s"], r["s_per_iter"]), (r["breakdown_cpu_s"], r["cpu_s_per_iter"])):
            assert parts["generator_half_step"] == pytest.approx(
                whole - parts["discriminator_updates"] - parts["ema"], rel=1e-12)
            assert parts["generator_backward_and_update"] == pytest.approx(
                parts["generator_half_step"] - parts["generator_forward"] - parts["stream_loss_forward_backward"],
                rel=1e-12)
    # The cost model's count grows with the batch (its fixed part is the weights' updates).
    assert large["gflop_per_iter"] > small["gflop_per_iter"]
