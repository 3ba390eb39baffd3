"""Standing statistics (training/standing_statistics.py): the EMA generator's BatchNorm statistics
computed for its own weights."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import CONFIGS, REPO
from mirrorgan_tf import data, runs
from mirrorgan_tf.config import ConfigError, load_config
from mirrorgan_tf.models.networks import build_glam, build_stem, generate
from mirrorgan_tf.training.standing_statistics import StandingStatistics, batch_norms, pooled_moments


def test_pooled_moments_are_the_moments_of_the_chunks_together():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, size=(n, 5)) * rng.uniform(0.5, 2, 5) for n in (7, 32, 1, 19)]
    mean, variance = pooled_moments([c.mean(0) for c in chunks], [c.var(0) for c in chunks],
                                    [len(c) for c in chunks])
    whole = np.concatenate(chunks)
    np.testing.assert_allclose(mean, whole.mean(0), rtol=1e-12)
    np.testing.assert_allclose(variance, whole.var(0), rtol=1e-10)


def _smoke(prepared_shapes, n, batch_size):
    cfg = load_config(str(CONFIGS / "shapes_smoke.yaml"),
                      [f"data.dir={prepared_shapes}", f"train.ema_standing_statistics={n}",
                       f"train.batch_size={batch_size}"])
    stem = build_stem(cfg, data.vocab_size(cfg))
    glam = build_glam(cfg, seed=0)
    return cfg, stem, glam


def _moving(glam):
    return [(np.asarray(b.moving_mean), np.asarray(b.moving_variance)) for b in batch_norms(glam)]


def test_one_chunk_sets_every_batchnorm_to_the_moments_of_its_inputs(prepared_shapes):
    """Checked against Keras' own running average: one training-mode pass with momentum 0.9 from
    known statistics moves them a tenth of the way to the batch's moments."""
    cfg, stem, glam = _smoke(prepared_shapes, 16, 16)
    standing = StandingStatistics(cfg, stem, glam)
    norms = batch_norms(glam)
    assert len(norms) == sum(w.path.endswith("moving_mean") for w in glam.weights) > 0  # every one found
    trainable = [np.asarray(w) for w in glam.trainable_weights]
    standing()
    got = _moving(glam)
    assert all(np.array_equal(a, np.asarray(w)) for a, w in zip(trainable, glam.trainable_weights))
    assert [b.momentum for b in norms] == [0.9] * len(norms)  # put back

    old = [(np.full_like(m, 0.5), np.full_like(v, 2.0)) for m, v in got]
    for b, (m, v) in zip(norms, old):
        b.moving_mean.assign(m)
        b.moving_variance.assign(v)
    generate(stem, glam, tf.constant(standing.ids), tf.constant(standing.lengths), standing.z, standing.eps,
             training=True)
    for (m_new, v_new), (m_old, v_old), (m, v) in zip(_moving(glam), old, got):
        np.testing.assert_allclose(m, (m_new - 0.9 * m_old) / 0.1, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(v, (v_new - 0.9 * v_old) / 0.1, rtol=1e-3, atol=1e-4)


def test_the_statistics_depend_on_the_weights_only(prepared_shapes):
    """Called twice, or after the moving statistics were overwritten, the same numbers: nothing
    carries over from what the layers held, and no random state moves."""
    cfg, stem, glam = _smoke(prepared_shapes, 12, 4)
    standing = StandingStatistics(cfg, stem, glam)
    standing()
    first = _moving(glam)
    for b in batch_norms(glam):
        b.moving_mean.assign(np.ones(b.moving_mean.shape, np.float32) * 7)
    standing()
    for (m1, v1), (m2, v2) in zip(first, _moving(glam)):
        np.testing.assert_array_equal(m1, m2)
        np.testing.assert_array_equal(v1, v2)
    # Other inputs (another train.seed) give other, nearby statistics: the inputs are used.
    other = StandingStatistics(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=5)), stem, glam)
    other()
    assert any(not np.array_equal(v1, v2) for (_, v1), (_, v2) in zip(first, _moving(glam)))


def test_a_negative_count_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="train.ema_standing_statistics must be >= 0"):
        load_config(str(CONFIGS / "shapes_smoke.yaml"), ["train.ema_standing_statistics=-1"])


def test_a_trained_run_saves_the_ema_with_its_own_statistics(trained_run):
    """The smoke GAN stage (shapes_smoke.yaml: train.ema_standing_statistics 12) saved EMA BatchNorm statistics that
    are the standing statistics of the EMA weights saved with them, not the raw generator's."""
    run = runs.load_run(str(trained_run[0]))
    assert run.cfg.train.ema_standing_statistics == 12
    stem, ema = run.generator(weights="ema")
    _, raw = run.generator(weights="raw")
    saved = _moving(ema)
    StandingStatistics(run.cfg, stem, ema)()
    for (m, v), (ms, vs) in zip(_moving(ema), saved):
        np.testing.assert_allclose(ms, m, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(vs, v, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(vr, vs) for (_, vr), (_, vs) in zip(_moving(raw), saved))


MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    from mirrorgan_tf import distribute
    distribute.split_cpu(2)
    import tensorflow as tf
    from mirrorgan_tf import data
    from mirrorgan_tf.config import load_config
    from mirrorgan_tf.models.networks import build_glam, build_stem
    from mirrorgan_tf.training.standing_statistics import StandingStatistics, batch_norms

    cfg = load_config(sys.argv[1], ["data.dir=" + sys.argv[2], "train.ema_standing_statistics=12"])
    out = {}
    for name, strategy, sync in (("one", tf.distribute.OneDeviceStrategy("/cpu:0"), False),
                                 ("two", distribute.build_strategy("mirrored"), True)):
        with strategy.scope():
            stem, glam = build_stem(cfg, data.vocab_size(cfg)), build_glam(cfg, seed=0, sync_batch_norm=sync)
        if name == "one":
            weights = [w.numpy() for w in stem.weights + glam.weights]
        for w, value in zip(stem.weights + glam.weights, weights):
            w.assign(value)
        StandingStatistics(cfg, stem, glam)()  # cross-replica context, as the GAN stage calls it
        # every replica's copy of every moving variance
        out[name] = [[np.asarray(t).tolist() for t in getattr(b.moving_variance.value, "values", [b.moving_variance.value])]
                     for b in batch_norms(glam)]
    print(json.dumps(out))
""")


def test_under_mirrored_strategy_every_replica_gets_the_one_device_statistics(prepared_shapes):
    """Called in cross-replica context on two replicas with synchronised BatchNorm (the GAN stage's
    setting), both copies of every statistic equal what one device computes."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run([sys.executable, "-c", MIRRORED, str(CONFIGS / "shapes_smoke.yaml"), str(prepared_shapes)],
                       cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(out["one"]) == len(out["two"]) > 0
    for (one,), replicas in zip(out["one"], out["two"]):
        assert len(replicas) == 2
        for copy in replicas:
            np.testing.assert_allclose(copy, one, rtol=1e-4, atol=1e-6)
