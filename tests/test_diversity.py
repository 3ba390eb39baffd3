"""The diversity metric: constructed feature sets with known answers (a collapsed generator, a
second draw of the real distribution, twice the real spread), the arithmetic by hand, and the
metric end to end on the smoke run (DAMSM space, and the Inception path with a stand-in
extractor)."""

import numpy as np
import pytest

from mirrorgan_tf.metrics.base import EvalError
from mirrorgan_tf.metrics.diversity import (RANDOM_REFERENCE, fidelity_diversity, mean_pairwise_distance,
                                            pairwise_ratio, prdc_scores, random_pair_distance, real_groups,
                                            take_by_group, within_group_distance)

CLASSES, DIM = 40, 8
CENTRES = np.random.default_rng(100).normal(size=(CLASSES, DIM)) * 3.0  # classes well apart, spread 1 inside


def _real(per_class, seed):
    """Real images: per_class draws of each class, N(centre, I); returns (features, class labels)."""
    labels = np.repeat(np.arange(CLASSES), per_class)
    return CENTRES[labels] + np.random.default_rng(seed).normal(size=(len(labels), DIM)), labels


def _generated(captions_per_class, k, seed, scale=1.0, collapse=False):
    """k samples per caption, each caption of one class (the same number of captions per class, so
    the class mix is the real one); sample = centre + scale * noise, or for a collapsed generator one
    fixed point per caption whatever the noise. Returns (features, caption of each sample)."""
    rng = np.random.default_rng(seed)
    caption_class = np.repeat(np.arange(CLASSES), captions_per_class)
    captions = np.repeat(np.arange(len(caption_class)), k)
    if collapse:
        fixed = CENTRES[caption_class] + rng.normal(size=(len(caption_class), DIM))
        return fixed[captions], captions
    return CENTRES[caption_class[captions]] + scale * rng.normal(size=(len(captions), DIM)), captions


REAL, REAL_CLASS = _real(20, seed=1)  # 800 real images: halves of 400


def _scores(generated, captions):
    knn = fidelity_diversity(REAL, generated, captions, seed=0)
    ratio = pairwise_ratio(generated, captions, REAL, REAL_CLASS, "within class (class_id)", seed=0)
    return knn, ratio


# --- the known cases ---------------------------------------------------------------------------

def test_a_second_draw_of_the_real_distribution_scores_like_real_images():
    generated, captions = _generated(2, 5, seed=2)  # 80 captions x 5 = 400 samples, 10 per class
    knn, ratio = _scores(generated, captions)
    assert knn["counts"] == {"n": 400, "generated_total": 400, "real_total": 800}
    assert ratio["ratio"] == pytest.approx(1.0, abs=0.05)
    assert ratio["generated"]["groups"] == 80 and ratio["real"]["groups"] == 40 and ratio["real"]["images"] == 800
    for who in ("generated", "real"):  # the generated draw, and real half B: the same distribution as half A
        p5, p3 = knn[who]["prdc"], knn[who]["pr_k3"]
        assert (p5["real"], p5["generated"], p3["real"], p3["generated"]) == (400, 400, 400, 400)
        for p in (p5, p3):
            assert p["precision"] > 0.85 and p["recall"] > 0.85, (who, p)
            assert abs(p["precision"] - p["recall"]) < 0.05, (who, p)
        # Naeem et al.: one distribution gives density 1 and, at equal counts, coverage 1 - 2^-5.
        assert p5["density"] == pytest.approx(1.0, abs=0.1), who
        assert p5["coverage"] == pytest.approx(1 - 0.5**5, abs=0.03), who
    # random real pairs against within-class: the classes are about 3 * sqrt(2) apart per axis
    assert ratio["unconditional_ratio"] > 2.5


def test_a_collapsed_generator_scores_ratio_0_and_no_recall():
    generated, captions = _generated(1, 10, seed=3, collapse=True)  # 40 captions x 10 identical samples
    knn, ratio = _scores(generated, captions)
    assert ratio["ratio"] == 0.0 and ratio["generated"]["distance"] == 0.0
    g, r = knn["generated"], knn["real"]
    # 10 coincident samples >= k + 1: every k-NN radius is 0, so no real image is inside a ball.
    assert g["prdc"]["recall"] == 0.0 and g["pr_k3"]["recall"] == 0.0
    # A covered real image holds one of the 40 distinct points in its ball, and those lie in
    # density * k * M / 10 balls in all (each counted 10 times in density): at most that many are
    # covered. About k = 5 balls each: about half of the 400, against 97 % for real images.
    p = g["prdc"]
    assert p["coverage"] <= p["density"] * 5 * 400 / 10 / 400 + 1e-12
    assert p["coverage"] < 0.55 and r["prdc"]["coverage"] > 0.9
    assert g["prdc"]["precision"] > 0.8  # every image is realistic: fidelity is not what went wrong
    # At two samples per caption the ratio still reads 0.
    two, caps2 = _generated(5, 2, seed=4, collapse=True)
    assert pairwise_ratio(two, caps2, REAL, REAL_CLASS, "within class", seed=0)["ratio"] == 0.0


def test_twice_the_spread_scores_ratio_2():
    generated, captions = _generated(2, 5, seed=5, scale=2.0)
    knn, ratio = _scores(generated, captions)
    assert ratio["ratio"] == pytest.approx(2.0, abs=0.1)
    g = knn["generated"]["prdc"]
    assert g["recall"] > 0.9 and g["precision"] < 0.6 and g["density"] < 0.5  # beyond the real support


# --- the arithmetic ------------------------------------------------------------------------------

def test_distances_by_hand():
    line = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])  # pair distances 5, 10, 5
    assert mean_pairwise_distance(line) == (pytest.approx(20.0 / 3.0), 3)
    features = np.vstack([line, [[0.0, 0.0], [0.0, 1.0]], [[9.0, 9.0]], [[50.0, 50.0], [0.0, 0.0]]])
    groups = np.array([7, 7, 7, 2, 2, 5, -1, -1])  # a group of one and the -1 rows count for nothing
    within = within_group_distance(features, groups)
    assert within == {"distance": pytest.approx((20.0 / 3.0 + 1.0) / 2.0), "groups": 2, "images": 5, "pairs": 4}
    big = np.arange(40, dtype=float)[:, None]  # a group above max_group is measured on a subset
    assert within_group_distance(big, np.zeros(40), max_group=10)["pairs"] == 45
    assert random_pair_distance(np.array([[0.0, 0.0], [3.0, 4.0]]), pairs=50) == {"distance": 5.0, "images": 2,
                                                                                 "pairs": 50}
    # the denominator falls back to random real pairs where no class has two images
    r = pairwise_ratio(line, np.zeros(3), line, np.array([0, 1, 2]), "within class", seed=0)
    assert r["real"]["reference"] == RANDOM_REFERENCE and "unconditional_ratio" not in r


def test_real_groups_prefer_class_id_then_attribute_tuples_then_random_pairs():
    groups, name = real_groups(np.array([3, -1, 3, 8]), np.zeros((4, 2)))
    assert groups.tolist() == [3, -1, 3, 8] and "class_id" in name
    groups, name = real_groups(np.full(4, -1), np.array([[0, 1], [1, 0], [0, 1], [1, 1]]))
    assert groups[0] == groups[2] and len(set(groups.tolist())) == 3 and "attribute" in name
    groups, name = real_groups(np.full(3, -1), np.zeros((3, 0)))
    assert (groups == -1).all() and name == RANDOM_REFERENCE


def test_prdc_edge_cases_and_whole_caption_subsets():
    points = np.random.default_rng(0).normal(size=(30, 4))
    same = prdc_scores(points, points, 5)
    assert (same["precision"], same["recall"], same["coverage"]) == (1.0, 1.0, 1.0)
    far = prdc_scores(points, points + 1000.0, 5)
    assert (far["precision"], far["recall"], far["density"], far["coverage"]) == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(EvalError, match="at least 7"):
        prdc_scores(points[:6], points, 5)
    captions = np.repeat(np.arange(10), 4)
    chosen = take_by_group(captions, 10, np.random.default_rng(0))
    assert len(chosen) == 10 and len(set(captions[chosen].tolist())) == 3  # 4 + 4 + 2
    assert np.bincount(captions[chosen]).max() == 4
    with pytest.raises(EvalError, match="at least 7"):
        fidelity_diversity(points[:12], points, np.arange(30))


# --- the metric on the smoke run ---------------------------------------------------------------

def _evaluate(run_dir, *extra):
    from mirrorgan_tf.evaluate import evaluate, parse

    # evaluate() (not main): nothing is written to the shared run's metrics.json.
    return evaluate(parse(["--run-dir", str(run_dir), "--metrics", "diversity", "--num-images", "8",
                           "--batch-size", "8", *map(str, extra)]))["diversity"]


def test_diversity_on_the_smoke_run_in_the_damsm_space(trained_run, capsys):
    from mirrorgan_tf.evaluate import main, table

    run_dir, _ = trained_run
    r = _evaluate(run_dir, "--samples-per-caption", 2)
    assert "Num real" not in capsys.readouterr().out  # prdc's progress print is kept out of the table
    assert r["features"] == "DAMSM image encoder global code (the run's own)" and "DAMSM" in r["note"]
    assert r["counts"] == {"n": 16, "generated_total": 16, "real_total": 48}  # 8 captions x 2; 48 test images
    for block in (r["value"], r["real"]["value"]):
        counts = (block["prdc"]["k"], block["pr_k3"]["k"], block["prdc"]["generated"], block["prdc"]["real"])
        assert counts == (5, 3, 16, 16)
        for key in ("precision", "recall", "coverage"):
            assert 0.0 <= block["prdc"][key] <= 1.0
    pairwise = r["value"]["pairwise"]
    assert pairwise["generated"]["groups"] == 8 and pairwise["generated"]["images"] == 16
    assert pairwise["real"]["reference"].startswith("within attribute class") and pairwise["ratio"] >= 0.0
    lines = table({"diversity": r}).splitlines()
    assert lines[0].startswith("diversity/prdc [k=5; 16 generated vs 16 real]: precision ")
    assert lines[2].startswith("diversity/pairwise [8 captions x 2 samples; real: ")
    assert lines[3].endswith("16-d; sets drawn from 16 generated and 48 real images")
    assert main(["--run-dir", str(run_dir), "--metrics", "diversity"]) == 2  # one sample per caption
    assert "--samples-per-caption 1: the diversity metric needs at least 2" in capsys.readouterr().err
    assert main(["--run-dir", str(run_dir), "--metrics", "diversity", "--samples-per-caption", "2",
                 "--num-images", "3"]) == 2
    assert "--num-images 3 x --samples-per-caption 2 = 6 images" in capsys.readouterr().err


def test_diversity_with_inception_features_caches_the_real_ones(trained_run, tmp_path, monkeypatch):
    """The Inception path, with a stand-in extractor (a real InceptionV3 at 299 px would take most
    of a minute here): the pool features it returns are the ones scored, and the real ones are
    cached for the next evaluation."""
    from mirrorgan_tf.metrics import diversity

    calls = []

    class Extractor:
        source, path = "keras.applications.InceptionV3", str(tmp_path / "w.h5")

        def __call__(self, images):
            calls.append(len(images))
            x = np.asarray(images, np.float64)
            return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1), None

    monkeypatch.setattr(diversity.inception, "load", lambda graph, weights, what: Extractor())
    (tmp_path / "w.h5").write_bytes(b"stand-in")
    run_dir, _ = trained_run
    first = _evaluate(run_dir, "--samples-per-caption", 3, "--inception-weights", tmp_path / "w.h5")
    assert first["feature_dim"] == 6 and first["features"].startswith("keras.applications.InceptionV3")
    assert "not comparable" in first["note"] and first["counts"]["generated_total"] == 24
    assert sum(calls) == 48 + 24 and first["real_features_cache"].endswith(".npz")
    calls.clear()
    again = _evaluate(run_dir, "--samples-per-caption", 3, "--inception-weights", tmp_path / "w.h5")
    assert sum(calls) == 24  # the real features came from the cache
    assert again["value"] == first["value"] and again["real"] == first["real"]
