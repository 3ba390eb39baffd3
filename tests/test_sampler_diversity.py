"""The GAN sampler's diversity figures (`training/sampler.py`): known answers on constructed
images, and the sampler itself on the session's prepared shapes data with stand-in networks
(no training): a generator that draws one picture per caption reads 0 everywhere, one that draws
varied real pictures reads above 0, the same at every step."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf import data
from mirrorgan_tf.config import load_config
from mirrorgan_tf.metrics import spread
from mirrorgan_tf.runs import RunDir
from mirrorgan_tf.training import sampler as sampler_lib
from tests.conftest import CONFIGS

SIZE = 64


def _squares(n: int, seed: int) -> np.ndarray:
    """n pictures [n, 64, 64, 3] in [-1, 1]: a flat background of a random grey level, a square of
    random colour, side and place: every spread factor varies."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, SIZE, SIZE, 3), np.float32)
    for i in range(n):
        out[i] = rng.uniform(0.3, 0.8)
        side = int(rng.integers(10, 20))
        x, y = rng.integers(4, SIZE - side - 4, size=2)
        out[i, y:y + side, x:x + side] = rng.uniform(-1.0, -0.2, size=3)
    return out


def test_pixel_pairwise_is_within_caption_over_real_pairwise_difference():
    # Real: 8 flat images at levels -1, -5/7, ..., 1: the mean |v_i - v_j| over the 28 pairs is
    # (2/7) x the mean index gap, 84 / 28 = 3, so 6/7.
    real = np.broadcast_to(np.linspace(-1, 1, 8, dtype=np.float32)[:, None, None, None], (8, 4, 4, 3))
    assert sampler_lib.pairwise_difference(real) == pytest.approx(6 / 7)
    # Each caption: 4 samples at +0.5, 4 at -0.5: 16 of 28 pairs differ, by 1.0, so 4/7; / (6/7) = 2/3.
    levels = np.array([0.5, -0.5] * 4, np.float32)
    samples = np.broadcast_to(levels[None, :, None, None, None], (3, 8, 4, 4, 3))
    assert sampler_lib.diversity(samples, real) == {"pixel_pairwise": pytest.approx(2 / 3)}
    collapsed = np.broadcast_to(real[:3, None], (3, 8, 4, 4, 3))  # one picture per caption
    assert sampler_lib.diversity(collapsed, real) == {"pixel_pairwise": 0.0}
    assert np.isnan(sampler_lib.pairwise_difference(real[:1]))
    with pytest.raises(ValueError, match=r"samples: expected \[captions, K >= 2, S, S, 3\], got shape \(3, 1, 4, 4, 3\)"):
        sampler_lib.diversity(samples[:, :1], real)
    with pytest.raises(ValueError, match="real: expected at least 2 images"):
        sampler_lib.diversity(samples, real[:1])


def test_spread_ratios_are_one_against_their_own_spread_and_zero_for_one_picture_per_caption():
    c, k = 6, 8
    pictures = _squares(c * k, seed=0)
    own = spread.spreads(spread.read_factors(pictures), np.repeat(np.arange(c), k))
    assert all(v > 0 for v in own.values())
    figures = sampler_lib.diversity(pictures.reshape(c, k, SIZE, SIZE, 3), pictures[:8], own)
    assert set(figures) == {"pixel_pairwise", "balance"} | {f"ratio_{f}" for f in spread.FACTORS}
    for f in spread.FACTORS:
        assert figures[f"ratio_{f}"] == pytest.approx(1.0, abs=1e-9)
    assert figures["balance"] == pytest.approx(1.0, abs=1e-9)
    # Against twice the spread every ratio is 0.5, so balance = exp(mean(log 0.5)) = 0.5.
    half = sampler_lib.diversity(pictures.reshape(c, k, SIZE, SIZE, 3), pictures[:8],
                                 {f: 2 * v for f, v in own.items()})
    assert half["balance"] == pytest.approx(0.5) and half["ratio_size"] == pytest.approx(0.5)
    collapsed = np.repeat(pictures.reshape(c, k, SIZE, SIZE, 3)[:, :1], k, axis=1)
    figures = sampler_lib.diversity(collapsed, pictures[:8], own)
    assert all(figures[f"ratio_{f}"] == 0.0 for f in spread.FACTORS)
    assert figures["balance"] == 0.0 and figures["pixel_pairwise"] == 0.0
    # A reference of 0 (no real variety to compare with) gives nan, and a balance of 0.
    zero = sampler_lib.diversity(pictures.reshape(c, k, SIZE, SIZE, 3), pictures[:8], {**own, "size": 0.0})
    assert np.isnan(zero["ratio_size"]) and zero["balance"] == 0.0


class _Stem:
    """STEM's interface: (ids, lengths) -> (words [B, D, T], sentence [B, D], mask [B, T]); the
    sentence carries the caption's id sum, so a stand-in GLAM can tell captions apart."""

    def __call__(self, ids, lengths, training=False):
        key = tf.cast(tf.reduce_sum(ids, axis=1, keepdims=True), tf.float32)
        return tf.zeros([tf.shape(ids)[0], 2, tf.shape(ids)[1]]), key, tf.zeros_like(ids, tf.bool)


class _Glam:
    """GLAM's interface over a pool of real test images: picture = pool[(caption key + noise key)
    mod N] at every stage size. `varied`: the noise key comes from z (other pictures for other
    noise); else 0 (one picture per caption, whatever the noise)."""

    def __init__(self, pool, sizes, varied: bool):
        self.pool, self.sizes, self.varied = pool, sizes, varied

    def __call__(self, z, sentence, words, mask, eps=None, training=False):
        key = tf.cast(sentence[:, 0], tf.int64)
        if self.varied:
            key += tf.cast(tf.abs(z[:, 0]) * 1000.0, tf.int64)
        picked = tf.gather(self.pool, key % len(self.pool))
        return {"images": [tf.image.resize(picked, (s, s), method="area") for s in self.sizes],
                "word_attention": []}


def _events(log_dir) -> dict:
    """{tag: {step: value or image shape}} of the event files under log_dir."""
    out = {}
    for path in tf.io.gfile.glob(f"{log_dir}/events.out.tfevents.*"):
        for e in tf.compat.v1.train.summary_iterator(path):
            for v in e.summary.value:
                if v.metadata.plugin_data.plugin_name == "images":
                    value = tuple(int(x) for x in tf.make_ndarray(v.tensor)[:2])  # width, height
                elif v.metadata.plugin_data.plugin_name == "scalars":
                    value = float(tf.make_ndarray(v.tensor))
                else:
                    continue
                out.setdefault(v.tag, {})[e.step] = value
    return out


def descriptions(log_dir) -> dict:
    """{tag: its summary description} of the event files under log_dir."""
    out = {}
    for path in tf.io.gfile.glob(f"{log_dir}/events.out.tfevents.*"):
        for e in tf.compat.v1.train.summary_iterator(path):
            for v in e.summary.value:
                if v.metadata.summary_description:
                    out[v.tag] = v.metadata.summary_description
    return out


@pytest.fixture(scope="module")
def smoke_cfg(prepared_shapes):
    return load_config(CONFIGS / "shapes_smoke.yaml", [f"data.dir={prepared_shapes}"])


@pytest.fixture(scope="module")
def pool(smoke_cfg):
    return tf.concat([b["images"] for b in data.eval_images(smoke_cfg, "test")], axis=0)


def test_the_sampler_logs_zero_diversity_for_a_collapsed_generator_and_more_for_a_varied_one(
        smoke_cfg, pool, tmp_path):
    sizes = smoke_cfg.image_sizes  # 16, 32, 64
    results = {}
    for name, varied in (("collapsed", False), ("varied", True)):
        run = RunDir(str(tmp_path / name))
        s = sampler_lib.Sampler(smoke_cfg, run, _Stem(), _Glam(pool, sizes, varied))
        writer = tf.summary.create_file_writer(run.logs("gan"))
        s(2, writer)
        s(4, writer)
        writer.flush()
        results[name] = _events(run.logs("gan"))
        # The existing files and images stay, the variety grid is added: 8 captions x 8 samples at 64 px.
        names = sorted(p.name for p in (tmp_path / name / "samples").iterdir())
        assert names == ["gan-0000002-variety.png", "gan-0000002.png", "gan-0000004-variety.png", "gan-0000004.png"]
        grid = tf.io.decode_png((tmp_path / name / "samples" / "gan-0000004-variety.png").read_bytes()).numpy()
        assert grid.shape == (8 * 64, 8 * 64, 3)
        assert tf.io.decode_png((tmp_path / name / "samples" / "gan-0000004.png").read_bytes()).shape == (4 * 64, 8 * 64, 3)
    collapsed, varied = results["collapsed"], results["varied"]
    # Each curve says what it is computed from.
    assert descriptions(tmp_path / "varied" / "logs" / "gan")["diversity/balance"] == (
        "8 fixed test captions x 8 samples (56 degrees of freedom) against 8 real images: a trend within this "
        "run, not comparable with the figures of `python -m mirrorgan_tf.evaluate --metrics spread` from more captions")
    scalars = {"diversity/pixel_pairwise", "diversity/balance"} | {f"diversity/ratio_{f}" for f in spread.FACTORS}
    assert scalars | {"samples/grid", "samples/stage1", "samples/stage3", "samples/variety"} <= set(collapsed)
    assert collapsed["samples/variety"][4] == (8 * 64, 8 * 64)
    # One picture per caption, whatever the noise: every figure is 0 at every step.
    for tag in scalars:
        assert collapsed[tag] == {2: 0.0, 4: 0.0}, tag
    # Varied real pictures: every figure above 0 and finite; the noise is fixed, so both steps agree.
    for tag in scalars:
        assert varied[tag][2] == varied[tag][4], tag
        assert 0.0 < varied[tag][4] < float("inf"), (tag, varied[tag])


def test_the_grid_keeps_its_noise_and_a_dataset_without_labels_gets_the_pixel_figure_only(
        smoke_cfg, pool, tmp_path, monkeypatch):
    s = sampler_lib.Sampler(smoke_cfg, RunDir(str(tmp_path / "run")), _Stem(), _Glam(pool, smoke_cfg.image_sizes, True))
    rng = np.random.default_rng(smoke_cfg.train.seed)  # the grid's noise: the first draws, as before
    np.testing.assert_array_equal(s.z.numpy(), rng.normal(size=(8, smoke_cfg.model.z_dim)).astype(np.float32))
    np.testing.assert_array_equal(s.eps.numpy(), rng.normal(size=(8, smoke_cfg.model.condition_dim)).astype(np.float32))
    assert s.variety_z.shape == (64, smoke_cfg.model.z_dim)
    # Caption c's K samples are rows c K .. c K + K - 1.
    np.testing.assert_array_equal(s.variety_ids.numpy()[8:16], np.repeat(s.batch["caption_ids"].numpy()[1:2], 8, axis=0))

    monkeypatch.setattr(sampler_lib.data, "attribute_names", lambda manifest: [])
    unlabelled = sampler_lib.Sampler(smoke_cfg, RunDir(str(tmp_path / "plain")), _Stem(),
                                     _Glam(pool, smoke_cfg.image_sizes, True))
    assert unlabelled.reference is None
    writer = tf.summary.create_file_writer(str(tmp_path / "plain" / "logs"))
    figures = unlabelled.variety(3, writer)
    writer.flush()
    assert list(figures) == ["pixel_pairwise"] and figures["pixel_pairwise"] > 0
    assert {t for t in _events(tmp_path / "plain" / "logs") if t.startswith("diversity/")} == {"diversity/pixel_pairwise"}
