"""The benchmark's helpers (no timing is asserted: times are measurements, not test outcomes)."""

import subprocess
import sys

import numpy as np
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


def test_peak_rss_resets_to_the_present_use():
    big = np.ones(64 * 2**20, np.uint8)  # 64 MiB resident
    before = benchmark.peak_rss_mb()
    del big
    assert benchmark.reset_peak_rss()
    assert benchmark.peak_rss_mb() <= before - 48


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
