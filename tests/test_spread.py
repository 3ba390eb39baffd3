"""The shapes spread metric on constructed cases with known answers: scenes rendered by the
dataset's own renderer, with the specification's jitter, twice it, or none (one picture per
caption), read from pixels and compared with independently rendered "real" images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf.metrics import spread
from pipelines import shapes

READ_SIZE = 64  # the default run's final size; real images are read at the generator's size
# Classes whose doubled jitter stays inside the picture and inside [0, 255] (no clipping, which
# would shrink the spread): small objects anywhere, large ones in the centre; no orange (240 + 24).
CLASSES = [(c, s, "small", p) for c in ("red", "green", "blue", "purple") for s in shapes.SHAPES
           for p in ("left", "top", "center")][:16] + [("yellow", "circle", "large", "center"),
                                                       ("blue", "square", "large", "center")]


def _scene(cls, rng, scale: float, index: int) -> shapes.Scene:
    """One scene of class `cls` with every jitter of the specification times `scale` (0: none),
    about a background level of 180 (so that twice the jitter is not clipped at 255)."""
    colour, shape, size, position = cls
    level = 180 + scale * (rng.integers(shapes.BACKGROUND_LEVEL[0], shapes.BACKGROUND_LEVEL[1] + 1) - 212.5)
    offsets = scale * rng.integers(-shapes.BACKGROUND_OFFSET, shapes.BACKGROUND_OFFSET + 1, size=3)
    jitter = scale * rng.integers(-shapes.COLOUR_JITTER, shapes.COLOUR_JITTER + 1, size=3)
    side = shapes.SIZES[size] * shapes.SIZE * (1 + scale * rng.uniform(-shapes.SIZE_JITTER, shapes.SIZE_JITTER))
    fx, fy = shapes.POSITIONS[position]
    centre = tuple((f + scale * rng.uniform(-shapes.POSITION_JITTER, shapes.POSITION_JITTER)) * shapes.SIZE
                   for f in (fx, fy))
    return shapes.Scene(1, index, colour, shape, size, position,
                        tuple(int(round(v)) for v in level + offsets),
                        tuple(int(round(v)) for v in np.array(shapes.COLOURS[colour]) + jitter), float(side), centre)


def _images(scenes) -> np.ndarray:
    pixels = np.stack([shapes.render(s) for s in scenes]).astype(np.float32) / 127.5 - 1.0
    return tf.image.resize(pixels, (READ_SIZE, READ_SIZE), antialias=True).numpy()


def _draw(scale: float, per_class: int, seed: int, fixed: bool = False):
    """(images, group ids): per_class scenes of every class; with `fixed`, one scene repeated."""
    rng = np.random.default_rng(seed)
    scenes, groups = [], []
    for g, cls in enumerate(CLASSES):
        first = _scene(cls, rng, scale, len(scenes))
        for k in range(per_class):
            scenes.append(first if fixed else _scene(cls, rng, scale, len(scenes)))
            groups.append(g)
    return _images(scenes), np.array(groups)


@pytest.fixture(scope="module")
def real():
    images, groups = _draw(1.0, 8, seed=1)
    return spread.spreads(spread.read_factors(images), groups)


def _ratios(real, scale, fixed=False):
    images, groups = _draw(scale, 8, seed=2, fixed=fixed)
    generated = spread.spreads(spread.read_factors(images), groups)
    return {f: generated[f] / real[f] for f in spread.FACTORS}


def test_the_factors_are_read_where_the_renderer_put_them():
    rng = np.random.default_rng(0)
    scenes = [_scene(cls, rng, 1.0, i) for i, cls in enumerate(CLASSES)]
    f = spread.read_factors(_images(scenes))
    truth_bg = np.array([s.background for s in scenes], float)
    truth_rgb = np.array([s.rgb for s in scenes], float)
    assert np.abs(f["background"] - truth_bg).max() < 3  # pixel noise sigma 3, median of the border
    assert np.abs(f["colour"] - truth_rgb).max() < 6  # the object's inside, rim excluded
    # Squares and circles are centred on their box; a triangle's centroid sits 1/6 side lower.
    box = np.array([s.centre for s in scenes]) / shapes.SIZE
    lower = np.array([s.side / 6 if s.shape == "triangle" else 0.0 for s in scenes]) / shapes.SIZE
    assert np.abs(f["centre_x"][:, 0] - box[:, 0]).max() < 0.01
    assert np.abs(f["centre_y"][:, 0] - (box[:, 1] + lower)).max() < 0.015
    large = np.array([s.size == "large" for s in scenes])
    assert f["size"][large].min() > f["size"][~large].max()  # log side: large ones read larger


def test_one_picture_per_caption_has_no_spread(real):
    ratios = _ratios(real, 1.0, fixed=True)
    assert max(ratios.values()) < 1e-6, ratios
    assert spread.balance(ratios) == 0.0


def test_real_against_real_is_about_one(real):
    ratios = _ratios(real, 1.0)
    for f, r in ratios.items():
        assert 0.8 < r < 1.25, (f, r)
    assert spread.balance(ratios) > 0.85


def test_twice_the_jitter_is_about_two(real):
    ratios = _ratios(real, 2.0)
    for f, r in ratios.items():
        assert 1.65 < r < 2.4, (f, r)
    assert spread.balance(ratios) < 0.6


def test_pooled_std_by_hand():
    values = np.array([[1.0], [3.0], [10.0], [10.0], [10.0], [7.0]])
    groups = np.array([0, 0, 1, 1, 1, 2])  # group 2 has one member: no degree of freedom
    std, dof = spread.pooled_std(values, groups)
    assert dof == 3 and std == pytest.approx(np.sqrt((1 + 1 + 0) / 3))
    assert np.isnan(spread.pooled_std(values[:1], groups[:1])[0])
    # channels pool together: two channels with variances 1 and 9 give sqrt(5)
    two = np.array([[0.0, 0.0], [np.sqrt(2), 3 * np.sqrt(2)]])
    assert spread.pooled_std(two, np.array([0, 0]))[0] == pytest.approx(np.sqrt(5))


def test_shift_is_about_one_for_images_like_the_data_and_large_for_a_wrong_background():
    real_images, groups = _draw(1.0, 8, seed=1)
    real_f = spread.read_factors(real_images)
    attributes = groups[:, None]  # one label per class is enough to key the class means
    means = {(g,): {f: v[groups == g].mean(axis=0) for f, v in real_f.items()} for g in np.unique(groups)}
    real_spread = spread.spreads(real_f, groups)
    images, gen_groups = _draw(1.0, 8, seed=2)
    shift = spread.shifts(spread.read_factors(images), gen_groups[:, None], means, real_spread)
    for f, v in shift.items():  # sqrt(1 + 1/8) = 1.06, with sampling noise
        assert 0.85 < v < 1.35, (f, v)
    # The same pictures on a background 3 real stds lighter: only the background shifts.
    lighter = np.clip(images + 3 * real_spread["background"] / 127.5, -1, 1)
    lighter = np.where(np.abs(images - images[:, :1, :1, :]).max(-1, keepdims=True) < 0.1, lighter, images)
    moved = spread.shifts(spread.read_factors(lighter), gen_groups[:, None], means, real_spread)
    assert moved["background"] > 2.5 and abs(moved["colour"] - shift["colour"]) < 0.3
