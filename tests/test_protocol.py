"""The published evaluation protocol (`evaluate --protocol`): its sample plan and quantisation, the
published R-precision rule and IS softmax on constructed inputs with known answers, and a
resumable protocol run on the smoke-trained run."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf.evaluation.protocol import ShardStore, plan, to_uint8
from mirrorgan_tf.metrics.inception import InceptionGraph2015
from mirrorgan_tf.metrics.r_precision import draw_mismatches, r_precision


# --- the parts, on constructed inputs ----------------------------------------------------------

def test_the_plan_visits_every_image_once_per_pass_with_one_of_its_own_captions():
    # 7 images with 1 to 3 usable captions, rows ordered as load_pairs orders them (caption round first).
    image_index = np.array([0, 1, 2, 3, 4, 5, 6, 0, 2, 4, 6, 2, 6])
    rows = plan(image_index, 17, seed=100)
    images = image_index[rows]
    assert rows.shape == (17,)
    assert sorted(images[:7]) == sorted(images[7:14]) == list(range(7))  # two whole passes
    assert len(set(images[14:])) == 3  # then the third, cut at 17
    assert not np.array_equal(images[:7], images[7:14])  # each pass in its own order
    np.testing.assert_array_equal(plan(image_index, 17, seed=100), rows)
    assert not np.array_equal(plan(image_index, 17, seed=101), rows)
    # Image 6's captions are rows 6, 10 and 12: each drawn a third of the time, anew each pass.
    many = plan(image_index, 7 * 3000, seed=0)
    counts = np.bincount(many[image_index[many] == 6], minlength=13)
    assert counts.sum() == 3000 and set(np.flatnonzero(counts)) == {6, 10, 12}
    assert (np.abs(counts[[6, 10, 12]] - 1000) < 100).all()  # binomial sd 26


def test_images_are_quantised_by_truncation_as_the_original_writes_them():
    # ((x + 1) * 127.5).astype(uint8): 0 -> 127.5 -> 127, 0.999 -> 254.87 -> 254 (rounding would give 128, 255).
    assert to_uint8(np.array([-1.0, 0.0, 0.999, 1.0, 1.5])).tolist() == [0, 127, 254, 255, 255]


def test_published_r_precision_is_100_percent_on_matched_features_and_1_percent_on_random_ones():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(3000, 32))
    mismatches = rng.normal(size=(3000, 99, 32))
    mean, std, per_fold, _ = r_precision(2.0 * true, true, mismatches, 10, rule="published",
                                         rng=np.random.default_rng(1))
    assert (mean, std, len(per_fold)) == (1.0, 0.0, 10)
    # Random image codes: the true caption is the best of 100 exchangeable candidates 1 % of the time.
    mean, std, per_fold, _ = r_precision(rng.normal(size=(3000, 32)), true, mismatches, 10, rule="published",
                                         rng=np.random.default_rng(1))
    assert abs(mean - 0.01) < 0.006 and len(per_fold) == 10  # binomial sd over 2,990 images: 0.0018


def test_published_r_precision_counts_ties_as_hits_and_leaves_out_each_folds_last_image():
    # A tie (a mismatch as close as the true caption): a hit for argmax (published), a miss if strict.
    image, true, tie = np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]]), np.array([[[2.0, 0.0], [0.0, 1.0]]])
    images, trues, ties = (np.repeat(x, 4, axis=0) for x in (image, true, tie))
    assert r_precision(images, trues, ties, 2, rule="published", rng=np.random.default_rng(0))[0] == 1.0
    assert r_precision(images, trues, ties, 2)[0] == 0.0
    # 40 images, one miss, 10 folds of 4: each fold's rate comes from its first 3 shuffled images, so
    # the mean is 1 when the miss falls on a left-out place (10 of 40) and 1 - (1 / 3) / 10 otherwise.
    rng = np.random.default_rng(2)
    codes = rng.normal(size=(40, 8))
    truth = codes.copy()
    truth[17] = -codes[17]
    others = rng.normal(size=(40, 99, 8))  # below the true caption's cos 1, above row 17's cos -1
    means = np.array([r_precision(codes, truth, others, 10, rule="published", rng=np.random.default_rng(s))[0]
                      for s in range(400)])
    assert set(np.round(means, 12)) == {1.0, round(1 - 1 / 30, 12)}
    assert abs(np.isclose(means, 1.0).mean() - 0.25) < 0.07  # sd 0.022
    with pytest.raises(ValueError, match="rng"):
        r_precision(codes, truth, others, 10, rule="published")


def test_published_mismatches_are_captions_of_other_classes_drawn_uniformly_over_images():
    # Images 0-1 class 7 (the row's class), 2-3 class 8, 4 (nine captions) and 5 (one caption) class 9.
    image = np.array([0, 0, 1, 2, 3] + [4] * 9 + [5])
    classes = np.array([7, 7, 7, 8, 8] + [9] * 10)
    none = np.zeros((len(image), 0))
    out = draw_mismatches(image, none, [0], image, none, np.random.default_rng(0), k=20_000,
                          class_id=classes, pool_class=classes)[0]
    assert (classes[out] != 7).all()
    share = np.bincount(image[out], minlength=6)[2:] / 20_000  # images 2, 3, 4, 5: a quarter each
    assert (np.abs(share - 0.25) < 0.015).all()  # sd 0.003; by caption, image 4 would have 9 / 12
    # No class known (-1, e.g. COCO): any other image's caption.
    unknown = np.full(len(image), -1)
    out = draw_mismatches(image, none, [0], image, none, np.random.default_rng(0), k=2_000, class_id=unknown,
                          pool_class=unknown)[0]
    assert set(image[out]) == {1, 2, 3, 4, 5}


POOL = 16  # the real graph's pool_3 has 2,048 features; 16 keep FID's eigendecompositions instant


def _small_2015_graph(path, bias: float = 0.0):
    """A graph with the 2015 Inception graph's interface (node names, 0..255 input, 1,008 classes),
    small inside (POOL features)."""
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, None, None, 3], name="ExpandDims")
        pooled = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        proj = np.random.default_rng(0).normal(size=(3, POOL)).astype(np.float32) * 0.01
        tf.reshape(tf.matmul(tf.reshape(pooled, [-1, 3]), tf.constant(proj)), [-1, 1, 1, POOL], name="pool_3")
        tf.constant(np.random.default_rng(1).normal(size=(POOL, 1008)).astype(np.float32) * 0.05,
                    name="softmax/weights")
        tf.constant(np.random.default_rng(2).normal(size=1008).astype(np.float32) * bias, name="softmax/biases")
    path.write_bytes(g.as_graph_def().SerializeToString())
    return path


def test_the_protocols_inception_softmax_leaves_out_the_bias_as_improved_gans_code(tmp_path):
    path = _small_2015_graph(tmp_path / "graph.pb", bias=3.0)
    images = np.random.default_rng(3).uniform(-1, 1, size=(4, 32, 32, 3)).astype(np.float32)
    w = np.random.default_rng(1).normal(size=(POOL, 1008)).astype(np.float32) * 0.05
    b = np.random.default_rng(2).normal(size=1008).astype(np.float32) * 3.0

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    pool, without = InceptionGraph2015(str(path), softmax_bias=False)(images)
    np.testing.assert_allclose(without, softmax(pool.astype(np.float64) @ w), rtol=1e-4, atol=1e-7)
    _, with_bias = InceptionGraph2015(str(path))(images)
    np.testing.assert_allclose(with_bias, softmax(pool.astype(np.float64) @ w + b), rtol=1e-4, atol=1e-7)
    assert np.abs(with_bias - without).max() > 1e-3


# --- a protocol run on the smoke run -----------------------------------------------------------

def _main(args):
    from mirrorgan_tf.evaluate import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(x) for x in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def protocol_run(trained_run, tmp_path_factory):
    run_dir, _ = trained_run
    root = tmp_path_factory.mktemp("protocol")
    graph = _small_2015_graph(root / "graph.pb", bias=1.0)
    out = root / "coco"
    args = ["--run-dir", run_dir, "--protocol", "coco", "--inception-graph", graph, "--protocol-images", 40,
            "--shard-size", 10, "--batch-size", 8, "--out", out]
    code, stdout, stderr = _main(args)
    assert code == 0, stderr[-3000:]
    return args, out, stdout, json.loads((out / "results.json").read_text())


def test_a_protocol_run_prints_the_papers_table_with_every_count(protocol_run):
    _, out, stdout, results = protocol_run
    m = results["metrics"]
    assert set(m) == {"is", "fid", "r_precision"}
    assert m["is"]["images"] == m["fid"]["images"] == m["r_precision"]["images"] == 40
    assert m["is"]["splits"] == 10 and m["fid"]["reference_images"] == 48
    rp = m["r_precision"]
    assert (rp["rule"], rp["folds"], rp["fold_images"], rp["candidates"]) == ("published", 10, 3, 100)
    p = results["protocol"]
    assert (p["images"], p["published_images"], p["seed"], p["words_num"], p["is_softmax_bias"]) == \
        (40, 30_000, 100, 20, False)
    assert results["generation"] == {**results["generation"], "generated": 40, "reused": 0, "shards": 4}
    lines = stdout.splitlines()
    row = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in ("IS", "FID", "R-precision")}
    assert "+-" in row["IS"] and "40 images in 10 splits of 4" in row["IS"]
    assert "40 generated vs 48 real images" in row["FID"]
    assert "+-" in row["R-precision"] and "40 images in 10 folds of 3; 1 + 99 captions each" in row["R-precision"]
    assert any("40 generated now, 0 reused" in line for line in lines)
    assert any(line.startswith("published (coco, 30,000 images): MirrorGAN IS 26.47") for line in lines)
    assert f"written to {out / 'results.json'}" in stdout


def test_a_killed_protocol_run_continues_from_its_complete_shards(protocol_run):
    args, out, _, first = protocol_run
    store = ShardStore(str(out), 40, 10)
    before = [open(store.path(k), "rb").read() for k in range(4)]
    kept = [os.stat(store.path(k)).st_mtime_ns for k in range(2)]
    # What a kill leaves: shard 2 never renamed (only its temporary file, half written), shard 3
    # cut short under its final name (e.g. a partial copy); shards 0 and 1 whole.
    os.remove(store.path(2))
    (out / ".incomplete-0badc0de-images-00002.npz").write_bytes(before[2][: len(before[2]) // 2])
    (out / os.path.basename(store.path(3))).write_bytes(before[3][: len(before[3]) // 2])
    code, stdout, stderr = _main([*args, "--metrics", "is"])  # one metric suffices to read the shards back
    assert code == 0, stderr[-3000:]
    again = json.loads((out / "results.json").read_text())
    assert (again["generation"]["generated"], again["generation"]["reused"]) == (20, 20)
    assert "20 generated now, 20 reused" in stdout and "images-00003.npz is damaged" in stdout
    assert [os.stat(store.path(k)).st_mtime_ns for k in range(2)] == kept  # not rewritten
    for k in (2, 3):  # regenerated: the same pictures (noise is a function of seed and sample number)
        with np.load(io.BytesIO(before[k])) as f:
            np.testing.assert_array_equal(store.read(k)[0], f["images"])
    assert not [n for n in os.listdir(out) if n.startswith(".incomplete-")]
    assert set(again["metrics"]) == {"is"}
    assert again["metrics"]["is"]["value"] == pytest.approx(first["metrics"]["is"]["value"], rel=1e-5)


def test_a_protocol_folder_refuses_images_of_other_settings(protocol_run):
    args, out, _, _ = protocol_run
    code, _, stderr = _main([*args, "--seed", 5])
    assert code == 2 and f"{out / 'protocol.json'}" in stderr and "seed: 100 there, 5 now" in stderr


@pytest.mark.parametrize("args, message", [
    (["--protocol", "cub"], "--protocol cub: the Inception Score needs --is-classifier: StackGAN's Inception"),
    (["--protocol", "coco"], "--protocol coco: the Inception Score needs --is-classifier"),
    (["--protocol", "coco", "--is-classifier", "/nonexistent/graph.pb", "--metrics", "is"],
     "--is-classifier /nonexistent/graph.pb: no such file"),
    (["--protocol", "cub", "--metrics", "fid"], "FID needs --inception-graph"),
    (["--protocol", "cub", "--metrics", "r_precision", "--num-images", "40"], "use --protocol-images N"),
    (["--protocol", "cub", "--metrics", "attributes"], "not part of --protocol cub"),
])
def test_a_protocol_without_its_inputs_stops_before_generating(trained_run, tmp_path, args, message):
    run_dir, _ = trained_run
    code, _, stderr = _main(["--run-dir", run_dir, "--out", tmp_path / "out", *args])
    assert code == 2 and message in stderr, stderr
    assert not (tmp_path / "out").exists()
