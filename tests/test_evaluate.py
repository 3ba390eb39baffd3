"""Evaluation and sampling: metric arithmetic against hand-computed references, and both
commands on the smoke-trained run (reproducibility, bad input)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf.metrics.attributes import (AttributeClassifier, AttributeAccuracy, accuracies, caption_agreement,
                                             foreground, held_out_pairs, unseen_mask)
from mirrorgan_tf.metrics.base import EvalError
from mirrorgan_tf.metrics.fid import frechet_distance, statistics
from mirrorgan_tf.metrics.inception import InceptionGraph2015
from mirrorgan_tf.metrics.inception_score import inception_score
from mirrorgan_tf.metrics.r_precision import draw_mismatches, r_precision
from tests.conftest import REPO

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _cli(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=ENV)


# --- arithmetic ------------------------------------------------------------------------------

def test_frechet_distance_matches_the_scipy_reference():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6)) + 0.5
    (mu1, s1), (mu2, s2) = statistics(a), statistics(b)
    covmean = linalg.sqrtm(s1 @ s2).real  # the pytorch-fid / TTUR formula
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    # By hand: 1-D Gaussians N(0, 1) and N(3, 4): 3^2 + 1 + 4 - 2 * 2 = 10.
    assert frechet_distance([0.0], [[1.0]], [3.0], [[4.0]]) == pytest.approx(10.0)


def test_r_precision_counts_strict_top1_hits_per_fold():
    # 4 images, 2 mismatches each, 2 folds. Codes chosen so the hits are obvious by hand.
    images = np.array([[1, 0], [0, 1], [1, 1], [1, -1]], float)
    true = np.array([[1, 0], [0, 1], [-1, -1], [1, -1]], float)  # image 2's caption points away
    mismatches = np.array([
        [[0, 1], [-1, 0]],   # cos 1 vs 0, -1: hit
        [[1, 0], [0, 2]],    # cos 1 vs 0 and 1 (same direction): a tie is a miss
        [[1, 0], [0, 1]],    # true cos -1: miss
        [[-1, 1], [0, -1]],  # cos 1 vs -1, 0.71: hit
    ], float)
    mean, std, per_fold, hits = r_precision(images, true, mismatches, folds=2)
    assert hits.tolist() == [True, False, False, True]
    assert per_fold == [0.5, 0.5] and mean == 0.5 and std == 0.0
    mean, std, per_fold, _ = r_precision(images[[0, 3, 1, 2]], true[[0, 3, 1, 2]], mismatches[[0, 3, 1, 2]], 2)
    assert per_fold == [1.0, 0.0] and mean == 0.5 and std == 0.5


def test_mismatches_come_from_other_images_with_other_labels():
    image = np.repeat(np.arange(50), 4)
    attributes = np.stack([image % 5, np.zeros_like(image)], axis=1)  # images 0, 5, 10... share labels
    out = draw_mismatches(image, attributes, np.arange(len(image)), image, attributes, np.random.default_rng(0), k=20)
    assert out.shape == (200, 20)
    for r, row in enumerate(out):
        assert len(set(row)) == 20
        assert (image[row] != image[r]).all()
        assert (attributes[row] != attributes[r]).any(axis=1).all()
    with pytest.raises(EvalError, match="mismatched captions"):
        draw_mismatches(image, attributes, [0], image, attributes, np.random.default_rng(0), k=170)


def test_inception_score_by_hand():
    uniform = np.full((40, 5), 0.2)
    assert inception_score(uniform, splits=4) == pytest.approx((1.0, 0.0))
    onehot = np.eye(8)[np.arange(40) % 8]  # each split of 10 covers the 8 classes: exp(H(p(y)))
    p_y = np.bincount(np.arange(10) % 8, minlength=8) / 10
    expected = np.exp(-np.sum(p_y * np.log(p_y, where=p_y > 0, out=np.zeros(8))))
    mean, std = inception_score(onehot, splits=4)
    assert mean == pytest.approx(expected) and std == pytest.approx(0.0, abs=1e-12)


def test_the_foreground_map_does_not_depend_on_the_objects_colour():
    import dataclasses

    from pipelines import shapes

    scene, _ = shapes.sample_scene("test", 3)
    maps = []
    for colour in ("red", "yellow", "purple", "orange"):
        pixels = shapes.render(dataclasses.replace(scene, rgb=shapes.COLOURS[colour]))
        maps.append(foreground(pixels[None].astype(np.float32) / 127.5 - 1.0).numpy()[0, ..., 0])
    inside = maps[0] > 0.5
    assert 0.01 < inside.mean() < 0.5  # an object, not the background
    for m in maps[1:]:
        assert np.abs(m - maps[0]).max() < 0.12 and np.abs(m - maps[0]).mean() < 0.01
    empty = np.full((1, 64, 64, 3), 0.6, np.float32) + np.random.default_rng(0).normal(0, 0.02, (1, 64, 64, 3))
    assert foreground(empty.astype(np.float32)).numpy().max() < 0.3  # noise is not amplified into an object


def _flat_scene(rgb, box=(20, 36, 24, 44)):
    image = np.full((64, 64, 3), 0.7, np.float32)
    y0, y1, x0, x1 = box
    image[y0:y1, x0:x1] = np.array(rgb, np.float32) / 127.5 - 1.0
    return image


def test_the_attribute_classifier_reads_colour_without_shape_and_shape_without_colour():
    names = ["colour", "shape", "size", "position"]
    model = AttributeClassifier(names, [6, 3, 2, 5])
    red, green = _flat_scene((210, 35, 35)), _flat_scene((35, 150, 60))
    out = [t.numpy() for t in model(tf.constant(np.stack([red, green])), training=False)]
    for spatial in out[1:]:  # same foreground map: the same shape, size and position logits
        np.testing.assert_allclose(spatial[0], spatial[1], atol=1e-5)
    assert np.abs(out[0][0] - out[0][1]).max() > 1e-3  # the colour logits see the colour
    # Rearranging the inner pixels (the border fixes the background) moves nothing the colour head sees.
    rng = np.random.default_rng(0)
    shuffled = red.copy()
    inner = shuffled[1:-1, 1:-1].reshape(-1, 3)
    shuffled[1:-1, 1:-1] = inner[rng.permutation(len(inner))].reshape(62, 62, 3)
    colour, spatial = [t.numpy() for t in model(tf.constant(np.stack([red, shuffled])), training=False)[:2]]
    np.testing.assert_allclose(colour[0], colour[1], atol=1e-5)
    assert np.abs(spatial[0] - spatial[1]).max() > 1e-4  # while the shape logits do see it


def test_attribute_accuracy_splits_seen_and_unseen_pairs():
    manifest = {"attribute_order": ["colour", "shape", "size", "position"],
                "attributes": {"colour": ["red", "purple"], "shape": ["circle", "triangle"],
                               "size": ["small", "large"], "position": ["left", "right"]},
                "details": {"held_out_pairs": [["purple", "triangle"]]}}
    truth = np.array([[0, 0, 0, 0], [1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 0]])
    predicted = np.array([[0, 0, 0, 0], [1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 0]])
    unseen = unseen_mask(manifest, truth)
    assert unseen.tolist() == [False, True, False, True]
    acc = accuracies(predicted, truth, manifest["attribute_order"], unseen)
    assert acc["seen"] == {"colour": 1.0, "shape": 1.0, "size": 0.5, "position": 1.0, "all": 0.5, "images": 2}
    assert acc["unseen"] == {"colour": 1.0, "shape": 0.5, "size": 1.0, "position": 1.0, "all": 0.5, "images": 2}


def test_per_caption_agreement_tells_a_noise_that_changes_the_shape_from_a_caption_drawn_wrong():
    """Three samples each of four captions (attributes: colour, shape): caption 0 always right,
    caption 1 a circle in one draw and a square in two (mixed), caption 2 always the wrong shape
    (all wrong, not mixed), caption 3 (unseen) right in colour, shape mixed and never right. A
    caption drawn once is left out."""
    names = ["colour", "shape"]
    captions = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4])
    truth = np.array([[0, 0]] * 9 + [[1, 1]] * 3 + [[0, 0]])
    predicted = np.array([[0, 0]] * 3 + [[0, 0], [0, 1], [0, 1]] + [[0, 1]] * 3 + [[1, 0], [1, 2], [1, 0], [0, 1]])
    unseen = np.array([False] * 9 + [True] * 3 + [False])
    got = caption_agreement(predicted, truth, captions, names, unseen)
    assert got["seen"] == {"colour": {"mixed": 0.0, "all_wrong": 0.0}, "shape": {"mixed": 1 / 3, "all_wrong": 1 / 3},
                           "all": {"mixed": 1 / 3, "all_wrong": 1 / 3}, "captions": 3}
    assert got["unseen"] == {"colour": {"mixed": 0.0, "all_wrong": 0.0}, "shape": {"mixed": 1.0, "all_wrong": 1.0},
                             "all": {"mixed": 1.0, "all_wrong": 1.0}, "captions": 1}
    assert caption_agreement(predicted[:1], truth[:1], captions[:1], names, unseen[:1]) == {}  # one sample each
    lines = AttributeAccuracy.format({"value": accuracies(predicted, truth, names, unseen), "per_caption": got,
                                      "real": {"value": {g: {"colour": 1.0, "shape": 1.0, "all": 1.0}
                                                         for g in ("seen", "unseen")}}})
    assert "  per caption [3 captions], mixed / all samples wrong: colour 0.0 % / 0.0 %, shape 33.3 % / 33.3 %, " \
           "all 33.3 % / 33.3 %" in lines


def test_each_held_out_pair_is_read_on_its_own_with_what_its_images_were_read_as():
    """Two held-out pairs: four orange circles (one read as a square, one as a red square) and two
    purple triangles (both right); a seen red circle counts for neither. A pair with no image is
    left out; a split without held-out pairs gives nothing."""
    manifest = {"attribute_order": ["colour", "shape", "size", "position"],
                "attributes": {"colour": ["red", "purple", "orange"], "shape": ["circle", "square", "triangle"],
                               "size": ["small", "large"], "position": ["left", "right"]},
                "details": {"held_out_pairs": [["orange", "circle"], ["purple", "triangle"], ["red", "triangle"]]}}
    truth = np.array([[2, 0, 0, 0]] * 4 + [[1, 2, 1, 1]] * 2 + [[0, 0, 0, 0]])
    predicted = np.array([[2, 0, 0, 0], [2, 1, 0, 0], [0, 1, 0, 0], [2, 0, 1, 0], [1, 2, 1, 1], [1, 2, 1, 1],
                          [0, 2, 0, 0]])
    got = held_out_pairs(predicted, truth, manifest)
    assert list(got) == ["orange circle", "purple triangle"]
    assert got["orange circle"] == {"images": 4, "all": 0.25, "colour": 0.75, "shape": 0.5,
                                    "read_as": {"colour": {"red": 0.25, "orange": 0.75},
                                                "shape": {"circle": 0.5, "square": 0.5}}}
    assert got["purple triangle"] == {"images": 2, "all": 1.0, "colour": 1.0, "shape": 1.0,
                                      "read_as": {"colour": {"purple": 1.0}, "shape": {"triangle": 1.0}}}
    assert held_out_pairs(predicted, truth, {**manifest, "details": {}}) == {}
    names = manifest["attribute_order"]
    unseen = unseen_mask(manifest, truth)
    lines = AttributeAccuracy.format({"value": accuracies(predicted, truth, names, unseen), "held_out_pairs": got,
                                      "real": {"value": {g: {n: 1.0 for n in names + ["all"]}
                                                         for g in ("seen", "unseen")}}})
    assert "  orange circle [4 images]: all 25.0 %; colour read as red 25.0 %, orange 75.0 %; " \
           "shape read as circle 50.0 %, square 50.0 %" in lines
    assert lines.index("  purple triangle [2 images]: all 100.0 %; colour read as purple 100.0 %; "
                       "shape read as triangle 100.0 %") > [i for i, l in enumerate(lines)
                                                            if l.startswith("attributes/unseen")][0]


def test_the_2015_inception_graph_loader_batches_and_applies_its_softmax(tmp_path):
    # A graph with the published graph's interface (names, shapes, 0..255 input), small inside.
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, None, None, 3], name="ExpandDims")
        pooled = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        proj = np.random.default_rng(0).normal(size=(3, 2048)).astype(np.float32)
        tf.reshape(tf.matmul(tf.reshape(pooled, [-1, 3]), tf.constant(proj)), [-1, 1, 1, 2048], name="pool_3")
        tf.constant(np.random.default_rng(1).normal(size=(2048, 1008)).astype(np.float32) * 0.01,
                    name="softmax/weights")
        tf.constant(np.zeros(1008, np.float32), name="softmax/biases")
    path = tmp_path / "graph.pb"
    path.write_bytes(g.as_graph_def().SerializeToString())
    images = np.random.default_rng(2).uniform(-1, 1, size=(3, 64, 64, 3)).astype(np.float32)
    pool, probs = InceptionGraph2015(str(path))(images)
    assert pool.shape == (3, 2048) and probs.shape == (3, 1008)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    mean255 = ((images + 1) * 127.5).mean(axis=(1, 2))  # resizing keeps the mean colour closely
    np.testing.assert_allclose(pool, mean255 @ proj, rtol=2e-2, atol=0.5)
    (tmp_path / "bad.pb").write_bytes(b"not a graph")
    with pytest.raises(EvalError, match="bad.pb"):
        InceptionGraph2015(str(tmp_path / "bad.pb"))


def test_each_metric_formats_its_own_result_with_its_image_counts():
    from mirrorgan_tf.evaluate import table
    from mirrorgan_tf.metrics import REGISTRY, Metric

    for cls in REGISTRY.values():  # the table has no branch per metric: each brings its own lines
        assert cls.format is not Metric.format, cls.name
    fid = {"value": 123.456, "images": 24, "reference_images": 48, "features": "keras.applications.InceptionV3",
           "note": "not comparable"}
    from mirrorgan_tf.metrics.fid import small_sample_warning

    lines = table({"fid": {**fid, "warning": small_sample_warning(24, 48)}}).splitlines()
    assert lines[0] == "fid: 123.46 (24 generated vs 48 real images; keras.applications.InceptionV3)"
    assert lines[1] == "  note: not comparable"
    assert lines[2].startswith("  warning: FID from 24 generated vs 48 real images: below 2,048 images")
    assert "the published protocol uses 30,000 generated images" in lines[2]
    assert small_sample_warning(30_000, 2_048) is None and small_sample_warning(2_047, 30_000) is not None
    is_ = {"value": 3.21, "std": 0.1, "splits": 10, "images": 40, "real": {"value": 4.5, "std": 0.2, "images": 48}}
    assert table({"is": is_}).splitlines()[0] == "is: 3.210 +- 0.100 (10 splits of 40 images); 48 real images 4.500 +- 0.200"
    rp = {"value": 0.5, "std": 0.25, "folds": 2, "images": 24, "candidates": 100, "real": {"value": 0.875, "std": 0.0}}
    assert table({"r_precision": rp}).splitlines()[0] == (
        "r_precision: 50.00 +- 25.00 % over 2 folds of 24 images (1 + 99 candidates each); real images 87.50 +- 0.00 %")
    acc = {"value": {"seen": {"colour": 0.5, "all": 0.25, "images": 4}},
           "real": {"value": {"seen": {"colour": 1.0, "all": 0.9, "images": 48}}}}
    assert table({"attributes": acc}).splitlines()[0] == "attributes/seen [4 images]: colour 50.0 % (100.0 %), all 25.0 % (90.0 %)"


def _lines(name, result) -> list[str]:
    from mirrorgan_tf.metrics import REGISTRY

    return REGISTRY[name].format(result)


def _notes(name, result) -> list[str]:
    return [line for line in _lines(name, result) if line.startswith("  note:")]


def test_a_figure_from_fewer_images_than_its_protocol_says_so_and_from_enough_does_not():
    """IS, FID and R-precision: a note below the published protocol's 30,000 images, none at it.
    The other figures have no published count: a note when their own standard error is large."""
    real = {"value": 4.5, "std": 0.2, "images": 48}
    for n, expected in ((2_928, True), (29_999, True), (30_000, False), (60_000, False)):
        is_notes = _notes("is", {"value": 4.0, "std": 0.1, "splits": 10, "images": n, "real": real})
        fid_notes = _notes("fid", {"value": 30.0, "images": n, "reference_images": 3_000, "features": "x"})
        rp_notes = _notes("r_precision", {"value": 0.5, "std": 0.1, "folds": 10, "images": n, "candidates": 100,
                                          "real": {"value": 0.9, "std": 0.0}})
        assert [len(is_notes), len(fid_notes), len(rp_notes)] == [int(expected)] * 3, n
        if expected:
            assert is_notes[0] == (f"  note: IS from {n:,} images, below the 30,000 of the published protocol: IS rises "
                                   f"with the image count (each split's marginal is estimated from fewer images); "
                                   f"compare it only with figures from {n:,} images")
            assert fid_notes[0].startswith(f"  note: FID from {n:,} images, below the 30,000 of the published protocol")
            assert rp_notes[0].startswith(f"  note: R-precision from {n:,} images, below the 30,000 of the published")
            assert f"the std over folds of {n // 10:,} images" in rp_notes[0]
    # Below 2,048 images FID's warning says it, once.
    from mirrorgan_tf.metrics.fid import small_sample_warning

    fid = {"value": 30.0, "images": 200, "reference_images": 3_000, "features": "x",
           "warning": small_sample_warning(200, 3_000)}
    assert _notes("fid", fid) == [] and "below 2,048 images" in _lines("fid", fid)[1]

    # attributes: the binomial standard error of the all-four rate, below 2,500 images.
    def attributes(n, rate):
        return {"value": {"unseen": {"colour": 0.9, "all": rate, "images": n}},
                "real": {"value": {"unseen": {"colour": 1.0, "all": 1.0, "images": 98}}}}

    assert _notes("attributes", attributes(100, 0.8)) == [
        "  note: attributes/unseen from 100 images: the all-four rate carries a standard error of 4.0 points "
        "(sqrt(p (1 - p) / n)); differences below about twice that are noise"]
    assert len(_notes("attributes", attributes(2_499, 0.5))) == 1
    assert _notes("attributes", attributes(2_500, 0.5)) == []

    # spread: the relative standard error of a ratio of pooled stds, above 5 %.
    def spread(captions, k, real_images, real_classes):
        g = {"ratio": {"size": 1.0}, "balance": 1.0, "captions": captions, "images": captions * k,
             "real_images": real_images, "real_classes": real_classes}
        return {"value": {"all": g, "seen": g}, "samples_per_caption": k, "factors": ["size"]}

    # 20 captions x 4: 60 degrees of freedom; 500 real images in 100 classes: 400.
    assert _notes("spread", spread(20, 4, 500, 100)) == [
        "  note: spread/seen from 60 generated and 400 real degrees of freedom: each ratio carries a relative "
        "standard error of about 10 % (sqrt(1 / (2 df) + 1 / (2 df_real)))"]
    assert _notes("spread", spread(2_000, 4, 3_000, 100)) == []


# --- the commands on the smoke run ---------------------------------------------------------

@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    run_dir, _ = trained_run
    weights = tmp_path_factory.mktemp("inception") / "inception_v3_notop.weights.h5"
    import keras

    keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg").save_weights(str(weights))
    args = ["--run-dir", run_dir, "--num-images", 24, "--folds", 2, "--classifier-steps", 20,
            "--inception-weights", weights, "--batch-size", 12]
    first = _cli("mirrorgan_tf.evaluate", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    from mirrorgan_tf.evaluate import main

    assert main([*map(str, args), "--metrics", "attributes,r_precision"]) == 0  # again, in this process
    return run_dir, first.stdout, metrics, json.loads((run_dir / "metrics.json").read_text()), weights


def test_evaluate_prints_a_table_and_writes_metrics_json_with_settings(evaluated):
    run_dir, stdout, metrics, _, _ = evaluated
    test = metrics["test"]
    assert set(test) == {"attributes", "r_precision", "fid"}
    for r in test.values():
        assert r["settings"]["images"] == 24 and r["settings"]["split"] == "test"
    rp = test["r_precision"]
    assert rp["folds"] == 2 and rp["candidates"] == 100 and len(rp["per_fold"]) == 2
    assert 0.0 <= rp["value"] <= 1.0 and 0.0 <= rp["real"]["value"] <= 1.0 and rp["damsm_is_the_runs_own"]
    assert "flatters" in rp["note"]
    acc = test["attributes"]["value"]
    assert sum(g["images"] for g in acc.values()) == 24
    assert set(acc["seen"]) == {"colour", "shape", "size", "position", "all", "images"}
    assert "seen" in test["attributes"]["real"]["value"]
    fid = test["fid"]
    assert np.isfinite(fid["value"]) and fid["value"] >= 0 and fid["features"] == "keras.applications.InceptionV3"
    assert fid["reference_images"] == 48 and os.path.exists(fid["reference_cache"])
    assert "not comparable" in fid["note"]
    for text in ("attributes/seen", "r_precision:", "fid:", "written to", "(24 generated vs 48 real images;",
                 "warning: FID from 24 generated vs 48 real images"):
        assert text in stdout


def test_evaluation_does_not_depend_on_the_batch_size(evaluated):
    from mirrorgan_tf.evaluate import evaluate, parse

    run_dir, _, first, _, weights = evaluated
    # 24 images in batches of 5: the last batch holds 4, and must count like the others.
    again = evaluate(parse(["--run-dir", str(run_dir), "--num-images", "24", "--folds", "2", "--classifier-steps",
                            "20", "--inception-weights", str(weights), "--batch-size", "5"]))
    assert set(again) == set(first["test"])
    for name, r in again.items():
        before = first["test"][name]
        assert r["settings"]["images"] == before["settings"]["images"] == 24, name
        if name == "attributes":
            assert r["value"] == before["value"] and r["real"] == before["real"]
        elif name == "r_precision":
            assert (r["value"], r["per_fold"], r["real"]) == (before["value"], before["per_fold"], before["real"])
        else:
            assert (r["images"], r["reference_images"]) == (24, 48)
            assert r["value"] == pytest.approx(before["value"], rel=1e-4)
            assert "warning" in r and "24 generated vs 48 real" in r["warning"]


def test_evaluate_in_a_mixed_precision_process_scores_as_a_float32_one(evaluated):
    """A library user may call evaluate in a process whose Keras policy is mixed (a notebook that
    trained with train.mixed_precision). The metrics' own networks (the attribute classifier,
    read here from the data's cache; the DAMSM) must still build and compute in float32."""
    from mirrorgan_tf.evaluate import evaluate, parse
    from mirrorgan_tf.models.networks import dtype_policy

    run_dir, _, first, _, _ = evaluated
    args = ["--run-dir", str(run_dir), "--num-images", "24", "--folds", "2", "--classifier-steps", "20",
            "--batch-size", "12", "--metrics", "attributes,r_precision"]
    with dtype_policy("mixed_bfloat16"):
        mixed = evaluate(parse(args))
    assert set(mixed) == {"attributes", "r_precision"}
    for name, r in mixed.items():
        before = dict(first["test"][name])
        r = dict(r)
        r.pop("settings"), before.pop("settings")
        assert r == before, name


def test_evaluate_is_reproducible_for_a_seed(evaluated):
    _, _, first, second, _ = evaluated
    for name in ("attributes", "r_precision"):
        a, b = dict(first["test"][name]), dict(second["test"][name])
        a.pop("settings"), b.pop("settings")
        assert a == b, name


@pytest.mark.parametrize("args, message", [
    (["--metrics", "fid"], "needs Inception weights"),
    (["--metrics", "fid", "--inception-weights", "/nonexistent/w.h5"], "/nonexistent/w.h5: no such file"),
    (["--metrics", "is"], "--is-classifier"),
    (["--metrics", "is", "--is-classifier", "/nonexistent/birds_valid299/model.ckpt"],
     "--is-classifier /nonexistent/birds_valid299/model.ckpt: no such file"),
    (["--metrics", "r_precision", "--num-images", "3", "--folds", "10"], "at least one image per fold"),
    (["--metrics", "bleu"], "unknown bleu"),
    (["--metrics", "r_precision", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--metrics", "r_precision", "--damsm-run", "/nonexistent-run"], "not a run directory"),
])
def test_evaluate_bad_input_fails_fast_with_a_clear_error(trained_run, args, message, capsys):
    from mirrorgan_tf.evaluate import main

    run_dir, _ = trained_run
    assert main(["--run-dir", str(run_dir), *map(str, args)]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_needs_a_trained_generator(trained_run, tmp_path, capsys):
    from mirrorgan_tf.evaluate import main

    run_dir, _ = trained_run
    empty = tmp_path / "untrained"
    empty.mkdir()
    (empty / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    assert main(["--run-dir", str(empty)]) == 2
    assert "no gan checkpoint" in capsys.readouterr().err
    assert main(["--run-dir", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_sample_writes_stage_grids_and_attention_reproducibly(trained_run, tmp_path):
    run_dir, _ = trained_run
    captions = ["a small red circle on the left", "a huge blue block at the top"]
    args = ["--run-dir", run_dir, "--num", 3, "--caption", captions[0], "--caption", captions[1]]
    from mirrorgan_tf.sample import main

    outs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        if name == "a":  # the command itself once; the same function in this process after
            r = _cli("mirrorgan_tf.sample", *args, "--seed", seed, "--out", tmp_path / name)
            assert r.returncode == 0, r.stderr[-3000:]
        else:
            assert main([*map(str, args), "--seed", str(seed), "--out", str(tmp_path / name)]) == 0
        outs[name] = {p: (tmp_path / name / p).read_bytes() for p in sorted(os.listdir(tmp_path / name))}
    assert list(outs["a"]) == ["000-a-small-red-circle-on-the-left-attention.png",
                               "000-a-small-red-circle-on-the-left.png",
                               "001-a-huge-blue-block-at-the-top-attention.png", "001-a-huge-blue-block-at-the-top.png"]
    grid = tf.io.decode_png(outs["a"]["000-a-small-red-circle-on-the-left.png"]).numpy()
    assert grid.shape == (3 * 64, 3 * 64, 3)  # 3 stages x 3 samples at the final 64 px
    attention = tf.io.decode_png(outs["a"]["001-a-huge-blue-block-at-the-top-attention.png"]).numpy()
    assert attention.shape[1] == (1 + 7) * 64  # the image, then one tile per word (7 words)
    assert outs["a"] == outs["b"]  # same seed, same pictures
    assert outs["a"]["000-a-small-red-circle-on-the-left.png"] != outs["c"]["000-a-small-red-circle-on-the-left.png"]


def test_sample_says_which_words_it_ignored_as_unknown(trained_run, tmp_path, capsys):
    from mirrorgan_tf.sample import main

    captions = ["a racoon detective with a huge blue block", "a small red circle", "Racoon: a red circle, racoon"]
    args = ["--run-dir", str(trained_run[0]), "--num", "1", "--out", str(tmp_path)]
    assert main([*args, *(x for c in captions for x in ("--caption", c))]) == 0
    out, err = capsys.readouterr()
    assert out.split() == [str(tmp_path / f) for f in (
        "000-a-racoon-detective-with-a-huge-blue-bloc.png", "000-a-racoon-detective-with-a-huge-blue-bloc-attention.png",
        "001-a-small-red-circle.png", "001-a-small-red-circle-attention.png",
        "002-racoon-a-red-circle-racoon.png", "002-racoon-a-red-circle-racoon-attention.png")]
    assert [line for line in err.splitlines() if line.startswith("ignored")] == ["ignored as unknown in 'a racoon detective with a huge blue block': racoon detective with",
                                "ignored as unknown in 'Racoon: a red circle, racoon': racoon racoon"]


def test_sample_says_which_words_the_length_limit_cut(trained_run, tmp_path, capsys):
    from mirrorgan_tf.sample import main

    # 18 known words; the smoke config's data.words_num is 16
    caption = "a small red circle on the left a huge blue block at the top a small red circle"
    assert main(["--run-dir", str(trained_run[0]), "--num", "1", "--out", str(tmp_path), "--caption", caption]) == 0
    _, err = capsys.readouterr()
    assert [line for line in err.splitlines() if line.startswith(("cut", "ignored"))] == [
        f"cut by the length limit (data.words_num 16) in {caption!r}: red circle"]


def test_sample_bad_input(trained_run, tmp_path, capsys):
    from mirrorgan_tf.sample import main

    run_dir = str(trained_run[0])
    assert main(["--run-dir", run_dir, "--caption", "a red circle", "--caption", "zzz qqq", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "'zzz qqq'" in err and "vocabulary" in err
    assert not (tmp_path / "o").exists()  # nothing written for a request that cannot be met
    assert main(["--run-dir", run_dir, "--captions-file", str(tmp_path / "none.txt"), "--out", str(tmp_path)]) == 2
    assert "none.txt: no such file" in capsys.readouterr().err
    assert main(["--run-dir", run_dir, "--caption", "a red circle", "--num", "0", "--out", str(tmp_path)]) == 2
    assert "--num 0" in capsys.readouterr().err


def test_evaluate_refuses_a_truncated_shard_before_generating(trained_run, prepared_shapes, tmp_path, capsys):
    import json
    import shutil

    from mirrorgan_tf.config import load_config, save_config
    from mirrorgan_tf.evaluate import main

    run_dir, _ = trained_run
    data_copy, run_copy = tmp_path / "data", tmp_path / "run"
    shutil.copytree(prepared_shapes, data_copy)
    shutil.copytree(run_dir, run_copy)
    save_config(load_config(run_copy / "config.yaml", [f"data.dir={data_copy}"]), str(run_copy / "config.yaml"))
    shard = data_copy / json.loads((data_copy / "manifest.json").read_text())["splits"]["test"]["shards"][0]
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 1000)
    metrics = run_copy / "metrics.json"
    before = metrics.read_text() if metrics.exists() else None
    assert main(["--run-dir", str(run_copy), "--metrics", "r_precision"]) == 2
    err = capsys.readouterr().err
    assert f"{shard}: {size - 1000} bytes, but the manifest records {size} (truncated)" in err
    assert (metrics.read_text() if metrics.exists() else None) == before
