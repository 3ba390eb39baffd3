"""Inception Score: exp(E_x KL(p(y|x) || p(y))) over 10 splits, mean +- std, from the classifier
the user gives: StackGAN's Inception fine-tuned on CUB or flowers, as its TF1 checkpoint (the CUB
protocol; `stackgan_inception`), the 2015-12-05 ImageNet graph (the COCO protocol), or a Keras
model file (images in [-1, 1] at its input size; probabilities or logits out).

IS depends on the image count: each split's marginal p(y) is estimated from its images, and with
fewer images per split it is estimated narrower, so the KL terms and the score come out lower
(`SMALL_SAMPLE_BIAS`). The published protocol scores 30,000 images in 10 splits; the printed
figure carries its count, and a note below 30,000."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mirrorgan_tf.metrics import inception, stackgan_inception
from mirrorgan_tf.metrics.base import EvalError, Metric, below_protocol, mean_std


SMALL_SAMPLE_BIAS = "IS rises with the image count (each split's marginal is estimated from fewer images)"


def inception_score(probabilities, splits: int = 10) -> tuple[float, float]:
    p = np.asarray(probabilities, np.float64)
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = np.sum(part * (np.log(np.clip(part, 1e-12, None)) - np.log(np.clip(marginal, 1e-12, None))), axis=1)
        scores.append(np.exp(kl.mean()))
    return mean_std(scores)


class _KerasClassifier:
    source = "keras model"

    def __init__(self, path: str):
        import keras

        try:
            self.model = keras.models.load_model(path, compile=False)
        except Exception as e:
            raise EvalError(f"--is-classifier {path}: cannot load a Keras model ({str(e).splitlines()[0][:200]})") from None
        self.size = self.model.input_shape[1:3]
        self.path = path

    def __call__(self, images):
        x = tf.image.resize(tf.constant(images, tf.float32), self.size, method="bilinear")
        out = np.asarray(self.model(x, training=False), np.float64)
        sums = out.sum(axis=1)
        if (out < 0).any() or not np.allclose(sums, 1.0, atol=1e-3):  # logits
            out = tf.nn.softmax(out).numpy()
        return None, out


def check_classifier(path: str) -> None:
    """The cheap part of `load_classifier`: raises EvalError for a missing path, or a TF checkpoint
    that is not StackGAN's Inception layout (names and shapes only, no values read)."""
    if not (tf.io.gfile.exists(path) or tf.io.gfile.exists(path + ".index")):
        raise EvalError(f"--is-classifier {path}: no such file")
    if not path.endswith(".pb") and stackgan_inception.looks_like_checkpoint(path):
        stackgan_inception.check_checkpoint(path)
    elif tf.io.gfile.isdir(path):  # Keras models are files
        raise EvalError(f"--is-classifier {path}: a directory without a TensorFlow checkpoint (model.ckpt*)")


def load_classifier(path: str, softmax_bias: bool = True):
    """`--is-classifier PATH` -> a classifier: called with images float [N, H, W, 3] in [-1, 1]
    (the generator's range, any size) it returns (features or None, class probabilities float
    [N, C]); its `source` names the kind and `path` the file. By the path: `*.pb` the 2015-12-05
    ImageNet graph (C = 1008); a TF checkpoint (a `model.ckpt` prefix or file, or its directory)
    StackGAN's fine-tuned Inception (C = its logits - 1: 50 for CUB, 20 for flowers); anything
    else a Keras model file. `softmax_bias` is the 2015 graph's (see InceptionGraph2015). Raises
    EvalError naming the file when it is none of these."""
    check_classifier(path)
    if path.endswith(".pb"):
        classifier = inception.InceptionGraph2015(path, softmax_bias)
        classifier.path = path
        return classifier
    if stackgan_inception.looks_like_checkpoint(path):
        return stackgan_inception.StackGANInception(path)
    return _KerasClassifier(path)


class InceptionScore(Metric):
    name = "is"
    applies_to_real = True

    def __init__(self, ctx):
        super().__init__(ctx)
        self.path = ctx.option("is_classifier")
        if not self.path:
            raise EvalError("the Inception Score needs --is-classifier PATH (StackGAN's fine-tuned Inception "
                            "checkpoint for CUB, e.g. inception_finetuned_models/birds_valid299/model.ckpt; "
                            "classify_image_graph_def.pb for COCO; or a Keras classifier)")
        check_classifier(self.path)
        self.splits = int(ctx.option("is_splits", 10))
        if len(ctx.rows) < 2 * self.splits:
            raise EvalError(f"--num-images {len(ctx.rows)}: the Inception Score needs at least 2 images per split "
                            f"({self.splits} splits)")

    def prepare(self):
        # The protocol's COCO score drops the softmax bias, as its original code (inception.py).
        self.classifier = load_classifier(self.path, softmax_bias=bool(self.ctx.option("is_softmax_bias", True)))
        self.probabilities = []

    def _order(self, probabilities):
        """StackGAN's script shuffles the images before cutting the splits, so each split's
        marginal sees every class; with its classifier we do the same (seeded by --seed).
        Otherwise the splits follow the generation order."""
        if isinstance(self.classifier, stackgan_inception.StackGANInception):
            return probabilities[np.random.default_rng(self.ctx.seed).permutation(len(probabilities))]
        return probabilities

    def update(self, images, samples):
        self.probabilities.append(self.classifier(images)[1])

    def result(self):
        from mirrorgan_tf import data

        ctx = self.ctx
        generated = self._order(np.concatenate(self.probabilities))
        mean, std = inception_score(generated, self.splits)
        real = [self.classifier(b["images"].numpy())[1] for b in data.eval_images(ctx.cfg, ctx.split, ctx.batch_size)]
        real = self._order(np.concatenate(real))
        real_mean, real_std = inception_score(real, self.splits)
        return {"value": mean, "std": std, "splits": self.splits, "images": len(generated),
                "classifier": self.path, "classifier_kind": self.classifier.source,
                "real": {"value": real_mean, "std": real_std, "images": len(real), "what": "the split's real images"}}

    @staticmethod
    def format(r):
        real = r["real"]
        count = f"{real['images']:,} " if "images" in real else ""  # older metrics.json files lack it
        note = below_protocol("IS", r["images"], why=SMALL_SAMPLE_BIAS)
        return [f"is: {r['value']:.3f} +- {r['std']:.3f} ({r['splits']} splits of {r['images']:,} images); "
                f"{count}real images {real['value']:.3f} +- {real['std']:.3f}"] + ([f"  note: {note}"] if note else [])
