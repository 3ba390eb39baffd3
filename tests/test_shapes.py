"""The built-in dataset against its specification (docs/shapes_dataset.md)."""

import filecmp
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from pipelines import shapes
from pipelines.prepare import prepare


def test_splits_follow_the_compositional_hold_out():
    train = [shapes.sample_scene("train", i)[0] for i in range(shapes.NUM_TRAIN)]
    test = [shapes.sample_scene("test", i)[0] for i in range(shapes.NUM_TEST)]
    train_pairs = {(s.colour, s.shape) for s in train}
    assert len(train_pairs) == 16 and not train_pairs & set(shapes.HELD_OUT_PAIRS)
    unseen = sum((s.colour, s.shape) in shapes.HELD_OUT_PAIRS for s in test)
    assert 0.08 < unseen / len(test) < 0.15  # about one ninth
    for attr, values in shapes.ATTRIBUTES.items():
        counts = {v: sum(getattr(s, attr) == v for s in test) for v in values}
        assert min(counts.values()) > 0.6 * len(test) / len(values), (attr, counts)


def test_captions_name_all_four_attributes_in_varied_orders():
    templates = set()
    for i in range(300):
        scene, captions = shapes.sample_scene("train", i)
        assert len(captions) == 10
        for c in captions:
            assert scene.colour in c
            assert any(w in c for w in shapes.SIZE_WORDS[scene.size])
            assert any(w in c for w in shapes.SHAPE_WORDS[scene.shape])
            assert any(w in c for w in shapes.POSITION_WORDS[scene.position])
            assert not re.search(r"\ba [aeiou]", c)  # "an orange", never "a orange"
            templates.add(next(t for t in shapes.TEMPLATES
                               if re.fullmatch(re.escape(t).replace(r"\{size\}", ".+").replace(r"\{colour\}", ".+")
                                               .replace(r"\{shape\}", ".+").replace(r"\{pos\}", ".+")
                                               .replace("a\\ ", "an?\\ "), c)))
    assert len(templates) >= 8


def test_caption_attributes_reads_back_what_every_caption_was_written_from():
    for split in shapes.SPLITS:
        for i in range(200):
            scene, captions = shapes.sample_scene(split, i)
            want = {"colour": scene.colour, "shape": scene.shape, "size": scene.size, "position": scene.position}
            for c in captions:
                assert shapes.caption_attributes(c) == want, c
    with pytest.raises(ValueError, match=r"'a red blue disc on the left' names colour red and blue, no size"):
        shapes.caption_attributes("a red blue disc on the left")


def _object_mask(pixels, scene):
    diff = np.abs(pixels.astype(int) - np.array(scene.background)).sum(-1)
    return diff > 60


@pytest.mark.parametrize("index", range(12))
def test_rendered_image_matches_its_scene(index):
    scene, _ = shapes.sample_scene("test", index)
    pixels = shapes.render(scene)
    assert pixels.shape == (128, 128, 3) and pixels.dtype == np.uint8
    # Background: a flat near-neutral grey with sigma-3 noise.
    corner = pixels[:6, :6].reshape(-1, 3).astype(float)
    mask = _object_mask(pixels, scene)
    if not mask[:6, :6].any():
        assert np.all(np.abs(corner.mean(0) - scene.background) < 3)
        assert 1.5 < corner.std(0).mean() < 4.5
        assert all(190 - 12 <= v <= 235 + 12 for v in scene.background)
    # Object: filled with its jittered colour, where the spec puts it, at its size.
    ys, xs = np.nonzero(mask)
    inner = pixels[mask & np.roll(mask, 2, 0) & np.roll(mask, -2, 0) & np.roll(mask, 2, 1) & np.roll(mask, -2, 1)]
    assert np.all(np.abs(inner.mean(0) - scene.rgb) < 3)
    assert np.all(np.abs(np.array(scene.rgb) - shapes.COLOURS[scene.colour]) <= 12)
    fx, fy = shapes.POSITIONS[scene.position]
    box_cx, box_cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    assert abs(box_cx - fx * 128) <= 0.03 * 128 + 1.5 and abs(box_cy - fy * 128) <= 0.03 * 128 + 1.5
    nominal = shapes.SIZES[scene.size] * 128
    assert abs((xs.max() - xs.min() + 1) - scene.side) <= 2.5 and abs(scene.side / nominal - 1) <= 0.08
    area = mask.sum() / scene.side**2
    assert abs(area - {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}[scene.shape]) < 0.1
    if scene.shape == "triangle":  # upright: wide at the bottom, a point at the top
        rows = mask[ys.min():ys.max() + 1].sum(1)
        assert rows[-2] > 5 * max(rows[1], 1)


def test_prepared_shapes_hold_images_captions_and_labels(prepared_shapes):
    import tensorflow as tf
    from mirrorgan_tf import records

    manifest = json.loads((prepared_shapes / "manifest.json").read_text())
    assert manifest["splits"]["train"]["examples"] == 96 and manifest["splits"]["test"]["examples"] == 48
    assert manifest["attributes"] == shapes.ATTRIBUTES
    assert len(manifest["splits"]["train"]["shards"]) >= 2  # 1 MB shards: bounded size
    files = [str(prepared_shapes / s) for s in manifest["splits"]["test"]["shards"]]
    first = next(iter(tf.data.TFRecordDataset(files)))
    ex = records.parse_example(first)
    scene, captions = shapes.sample_scene("test", 0)
    assert ex["key"].numpy() == b"test/00000"
    assert [c.decode() for c in ex["captions"].numpy()] == captions
    assert ex["attributes"].numpy().tolist() == [shapes.ATTRIBUTES[a].index(getattr(scene, a)) for a in shapes.ATTRIBUTES]
    stored = np.asarray(Image.open(io.BytesIO(ex["image"].numpy())))
    np.testing.assert_array_equal(stored, shapes.render(scene))  # lossless: exactly the rendered pixels


def test_preparation_is_byte_identical_across_runs_and_worker_counts(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    prepare("shapes", str(a), num_train=20, num_test=6, workers=1)
    prepare("shapes", str(b), num_train=20, num_test=6, workers=2)
    _assert_identical_datasets(a, b)


def _assert_identical_datasets(a, b):
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors and len(match) == len(names) == 4


def test_preparation_is_byte_identical_across_processes(tmp_path):
    """Protobuf serialises a map in hash order, and Python's string hashes change per process."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    for seed in ("1", "2"):
        code = f"from pipelines.prepare import prepare; prepare('shapes', {str(tmp_path / seed)!r}, num_train=4, num_test=2)"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    _assert_identical_datasets(tmp_path / "1", tmp_path / "2")
