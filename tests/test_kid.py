"""Kernel Inception Distance (metrics/kid.py) on constructed features with known answers."""

import numpy as np
import pytest

from mirrorgan_tf.metrics.base import EvalError
from mirrorgan_tf.metrics.kid import kernel_inception_distance, mmd2_unbiased


def expected_kernel(mu, sigma, nu, tau):
    """E[(x . y / d + 1)^3] for independent x ~ N(mu, sigma^2 I), y ~ N(nu, tau^2 I) in d dims,
    derived by hand for this test: with s = x . y and m = mu . nu, conditioning on x gives
    s | x ~ N(x . nu, tau^2 |x|^2), hence
      E[s]   = m
      E[s^2] = m^2 + sigma^2 |nu|^2 + tau^2 (|mu|^2 + d sigma^2)
      E[s^3] = m^3 + 3 m sigma^2 |nu|^2 + 3 tau^2 m (|mu|^2 + d sigma^2 + 2 sigma^2)."""
    mu, nu = np.asarray(mu, np.float64), np.asarray(nu, np.float64)
    d, m = len(mu), float(mu @ nu)
    s1 = m
    s2 = m ** 2 + sigma ** 2 * (nu @ nu) + tau ** 2 * (mu @ mu + d * sigma ** 2)
    s3 = m ** 3 + 3 * m * sigma ** 2 * (nu @ nu) + 3 * tau ** 2 * m * (mu @ mu + d * sigma ** 2 + 2 * sigma ** 2)
    return s3 / d ** 3 + 3 * s2 / d ** 2 + 3 * s1 / d + 1


def closed_form_mmd2(mu, sigma, nu, tau):
    return (expected_kernel(mu, sigma, mu, sigma) + expected_kernel(nu, tau, nu, tau)
            - 2 * expected_kernel(mu, sigma, nu, tau))


def test_the_unbiased_mmd_equals_a_pair_by_pair_sum():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 5)), rng.normal(0.3, 1.2, size=(7, 5))

    def k(a, b):
        return (float(np.dot(a, b)) / 5 + 1) ** 3

    m = 7
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m ** 2
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    # One subset holding every row is the whole-set estimate, whatever order the rows were drawn in.
    mean, std, size = kernel_inception_distance(x, y, subsets=1, subset_size=100)
    assert (mean, std, size) == (pytest.approx(xx + yy - 2 * xy, rel=1e-12), 0.0, 7)


def test_shifted_gaussians_give_the_closed_form_mmd():
    d = 4
    mu, nu, sigma, tau = np.zeros(d), np.full(d, 0.8), 1.0, 1.3
    truth = closed_form_mmd2(mu, sigma, nu, tau)
    # The closed form itself, against a plain Monte Carlo of the kernel's expectation.
    rng = np.random.default_rng(0)
    x, y = rng.normal(mu, sigma, (100_000, d)), rng.normal(nu, tau, (100_000, d))
    assert np.mean((np.sum(x * y, 1) / d + 1) ** 3) == pytest.approx(expected_kernel(mu, sigma, nu, tau), rel=0.02)
    assert truth > 0.05
    mean, std, size = kernel_inception_distance(x[:2000], y[:2000], subsets=20, subset_size=500, seed=3)
    assert size == 500
    # The mean of 20 subset estimates: its standard error is at most std / sqrt(20) (subsets overlap).
    assert abs(mean - truth) < 4 * std / np.sqrt(20) + 0.02 * truth


def test_the_same_distribution_gives_zero_on_average_not_a_positive_bias():
    rng = np.random.default_rng(0)
    d, m, draws = 8, 20, 400
    unbiased, biased = [], []
    for _ in range(draws):
        x, y = rng.normal(size=(m, d)), rng.normal(size=(m, d))
        unbiased.append(mmd2_unbiased(x, y))
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())  # the V-statistic keeps the diagonals
    unbiased, biased = np.array(unbiased), np.array(biased)
    se = unbiased.std() / np.sqrt(draws)
    assert abs(unbiased.mean()) < 3 * se
    assert (unbiased < 0).mean() > 0.3  # a small-sample estimate of a zero distance is often negative
    assert biased.mean() > 10 * biased.std() / np.sqrt(draws)  # what the diagonal adds: a clear upward bias


def test_kid_refuses_too_few_images_and_mismatched_features():
    with pytest.raises(EvalError, match="at least 2 images"):
        kernel_inception_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(EvalError, match="feature sizes differ"):
        kernel_inception_distance(np.zeros((4, 3)), np.zeros((5, 2)))


def _small_graph(path):
    """A graph with the 2015 Inception graph's interface (ExpandDims in, pool_3 out, the softmax
    weights) whose pool_3 is a fixed projection of each image's mean colour: cheap, deterministic."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, None, None, 3], name="ExpandDims")
        pooled = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        proj = np.random.default_rng(0).normal(size=(3, 2048)).astype(np.float32) / 100
        tf.reshape(tf.matmul(tf.reshape(pooled, [-1, 3]), tf.constant(proj)), [-1, 1, 1, 2048], name="pool_3")
        tf.constant(np.zeros((2048, 1008), np.float32), name="softmax/weights")
        tf.constant(np.zeros(1008, np.float32), name="softmax/biases")
    path.write_bytes(g.as_graph_def().SerializeToString())
    return path


def test_evaluate_kid_scores_the_generated_features_against_the_cached_real_ones(trained_run, tmp_path):
    from mirrorgan_tf.evaluate import evaluate, parse, table
    from mirrorgan_tf.evaluation.generator import TrainedGenerator
    from mirrorgan_tf.evaluation.pairs import load_pairs
    from mirrorgan_tf.metrics.inception import InceptionGraph2015

    run_dir = str(trained_run[0])
    graph = str(_small_graph(tmp_path / "graph.pb"))
    r = evaluate(parse(["--run-dir", run_dir, "--metrics", "kid", "--inception-graph", graph, "--num-images", "24",
                        "--batch-size", "12"]))["kid"]
    assert (r["images"], r["reference_images"], r["subsets"], r["subset_size"]) == (24, 48, 100, 24)
    with np.load(r["reference_cache"]) as f:
        real = f["features"]
    assert real.shape == (48, 2048)
    # The same 24 images drawn again (same seed and sample numbers), through the same features.
    generator = TrainedGenerator(run_dir)
    pairs = load_pairs(generator.cfg, "test")
    rows = pairs.first(24)
    images = generator(pairs.ids[rows], pairs.lengths[rows], np.arange(24), seed=0)["images"][-1].numpy()
    generated = InceptionGraph2015(graph)(images)[0]
    expected, spread, _ = kernel_inception_distance(generated, real, subsets=100, subset_size=1000, seed=0)
    assert r["value"] == pytest.approx(expected, rel=1e-4, abs=1e-9) and r["std"] == pytest.approx(spread, rel=1e-3)
    assert table({"kid": r}).startswith(f"kid: {r['value']:.5f} +- {r['std']:.5f} (x 1,000: ")
