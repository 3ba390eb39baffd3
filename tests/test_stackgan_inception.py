"""StackGAN's fine-tuned Inception (TF1 checkpoint) -> our Keras network, checked against the
original graph.

The reference is tests/tf1_reference/slim_inception_v3.py: the slim Inception-v3 in tf.compat.v1
graph mode with the original variable names. It saves random weights (BatchNorm statistics
calibrated on the photos and perturbed) in the released layout with a tf.compat.v1 Saver (every
variable, its ExponentialMovingAverage copy with other values, an optimizer slot, the step), and
scores photos the way StackGAN's script does. Inputs: 4 real CUB photographs at 256 px (the
generator's output size). Tolerance: max |ours - reference| <= 1e-5 x max reference probability,
float32 (measured: about 3e-7).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf.metrics import EvalError, inception_score, stackgan_inception
from mirrorgan_tf.metrics.base import Context
from tests.tf1_reference import slim_inception_v3 as reference

REL_TOL = 1e-5
CLASSES = 50  # CUB's checkpoint: 50 classes + the background logit


def cub_pictures(cub_sample, n: int, size: int = 256) -> np.ndarray:
    """n real CUB photographs, one per class folder, resized by PIL -> uint8 [n, size, size, 3]."""
    from PIL import Image

    folders = sorted((cub_sample / "CUB_200_2011" / "images").iterdir())
    files = [sorted(f.glob("*.jpg"))[0] for f in folders[:n]]
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files])


def stackgan_preprocess(pictures: np.ndarray) -> np.ndarray:
    """StackGAN's script on 8-bit pictures: scipy.misc.imresize(..., (299, 299), 'bilinear'), which
    is a Pillow bilinear resize giving 8 bits, then / 127.5 - 1."""
    from PIL import Image

    resized = [np.asarray(Image.fromarray(p).resize((299, 299), Image.BILINEAR)) for p in pictures]
    return np.stack(resized).astype(np.float32) / 127.5 - 1.0


@pytest.fixture(scope="module")
def released(cub_sample, tmp_path_factory):
    """A checkpoint in the released layout, the reference's probabilities on 4 photos, and our
    classifier loaded through the IS metric (the `--is-classifier DIR` path)."""
    pictures = cub_pictures(cub_sample, 4)
    x299 = stackgan_preprocess(pictures)
    folder = tmp_path_factory.mktemp("birds_valid299")
    prefix = reference.write_checkpoint(str(folder / "model.ckpt"), CLASSES + 1, calibration=x299, seed=3)
    expected = reference.probabilities(prefix, CLASSES + 1, x299)
    ctx = Context(cfg=None, run_dir="", split="test", all_pairs=None, rows=np.arange(20), manifest={},
                  options={"is_classifier": str(folder)})
    metric = inception_score.InceptionScore(ctx)
    metric.prepare()
    return {"folder": folder, "prefix": prefix, "images": pictures.astype(np.float32) / 127.5 - 1.0,
            "x299": x299, "expected": expected, "metric": metric, "classifier": metric.classifier}


def relative_error(ours, expected) -> float:
    assert np.shape(ours) == np.shape(expected)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - expected)) / np.max(np.abs(expected)))


def test_released_layout_matches_the_tf1_graph(released):
    classifier = released["classifier"]
    assert isinstance(classifier, stackgan_inception.StackGANInception)
    assert classifier.num_classes == CLASSES and classifier.path == released["prefix"]
    expected = released["expected"]
    # Random weights must still give a spread of classes, else the comparison sees little.
    assert expected.shape == (4, CLASSES) and expected.max() > 2.0 / CLASSES

    released["metric"].update(released["images"], np.arange(4))  # the metric's own path
    ours = released["metric"].probabilities[-1]
    err = relative_error(ours, expected)
    print(f"StackGAN inception probabilities: max |keras - tf1 graph| / max prob = {err:.2e}")
    assert err <= REL_TOL
    assert np.allclose(ours.sum(axis=1), 1.0)
    # Our preprocessing of [-1, 1] images is StackGAN's of the 8-bit pictures, exactly.
    assert np.array_equal(classifier.preprocess(released["images"]), released["x299"])
    # StackGAN's script shuffles the images before cutting the splits; the metric does, by --seed (0).
    order = released["metric"]._order(np.arange(20.0)[:, None])[:, 0]
    assert np.array_equal(order, np.random.default_rng(0).permutation(20)) and (order != np.arange(20)).any()


def _probabilities(model, x299):
    logits = model(tf.constant(x299), training=False).numpy()[:, 1:].astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_a_wrong_mapping_is_caught(released):
    """The comparison sees the mistakes a port can make: Keras' or PyTorch's BatchNorm eps, two
    same-shaped branches swapped, the raw values instead of StackGAN's averages."""
    model, x, expected = released["classifier"].model, released["x299"], released["expected"]
    assert relative_error(_probabilities(model, x), expected) <= REL_TOL
    errors = {}
    bns = [layer.bn for layer in model.convs.values()]
    for layer in bns:
        layer.epsilon = 1e-5
    errors["eps 1e-5"] = relative_error(_probabilities(model, x), expected)
    for layer in bns:
        layer.epsilon = stackgan_inception.BN_EPSILON

    a = model.convs["mixed_35x35x256a/branch1x1/Conv"]  # both 1x1, 192 -> 64
    b = model.convs["mixed_35x35x256a/branch3x3dbl/Conv"]
    saved_a, saved_b = [w.numpy() for w in a.weights], [w.numpy() for w in b.weights]
    for w, value in zip(a.weights + b.weights, saved_b + saved_a):
        w.assign(value)
    errors["swapped branches"] = relative_error(_probabilities(model, x), expected)
    for w, value in zip(a.weights + b.weights, saved_a + saved_b):
        w.assign(value)

    reader = tf.train.load_checkpoint(released["prefix"])
    averaged = [w.numpy() for w in model.weights]
    raw = {n: reader.get_tensor(n) for n in stackgan_inception.expected_variables(CLASSES + 1)}
    stackgan_inception.load_into(model, raw)
    errors["raw, not averaged"] = relative_error(_probabilities(model, x), expected)
    for w, value in zip(model.weights, averaged):
        w.assign(value)
    print("wrong mappings, max diff / max prob: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert all(e > 100 * REL_TOL for e in errors.values()), errors


def test_checkpoints_of_another_layout_are_refused_naming_file_and_variables(released, tmp_path):
    for named in (released["prefix"], released["prefix"] + ".index"):  # the prefix, or one of its files
        assert stackgan_inception.check_checkpoint(named) == (released["prefix"], CLASSES + 1)

    # A single-file (pre-0.12, V1) checkpoint with a wrongly shaped, an unknown and missing variables.
    ema = stackgan_inception.EMA
    graph = tf.Graph()
    with graph.as_default():
        v1 = tf.compat.v1
        for name, shape in ((f"logits/logits/biases/{ema}", [CLASSES + 1]), (f"conv0/weights/{ema}", [3, 3, 3, 16]),
                            ("conv0/BatchNorm/gamma", [32]), ("global_step", [])):
            v1.get_variable(name, shape, tf.float32)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            bad = v1.train.Saver(write_version=v1.train.SaverDef.V1).save(sess, str(tmp_path / "model.ckpt"),
                                                                           write_meta_graph=False)
    with pytest.raises(EvalError) as e:
        inception_score.check_classifier(str(tmp_path))
    message = str(e.value)
    print(message)
    assert message.startswith(f"{bad}: not StackGAN's Inception-v3 checkpoint layout (51 logits)")
    assert f"conv0/weights/{ema} has shape [3, 3, 3, 16], expected [3, 3, 3, 32]" in message
    assert "conv0/BatchNorm/gamma is not in the slim Inception-v3 definition" in message
    assert f"386 variable(s) missing: conv0/BatchNorm/beta/{ema}" in message
    assert "global_step" not in message

    with pytest.raises(EvalError, match="no such file"):
        inception_score.check_classifier(str(tmp_path / "nothing" / "model.ckpt"))
    (tmp_path / "other").mkdir()
    with pytest.raises(EvalError, match="other: a directory without a TensorFlow checkpoint"):
        inception_score.check_classifier(str(tmp_path / "other"))
    (tmp_path / "other" / "model.ckpt-5000").write_bytes(b"not a checkpoint")
    with pytest.raises(EvalError, match=r"model.ckpt-5000: not a readable TensorFlow checkpoint"):
        inception_score.load_classifier(str(tmp_path / "other"))
