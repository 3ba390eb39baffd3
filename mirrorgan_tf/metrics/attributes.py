"""Attribute accuracy for `shapes`: does a generated image show the colour, shape, size and
position its caption names? A classifier trained on the real training images reads each
attribute off the generated image; accuracy is reported per attribute and for all four at once,
for seen and for held-out (unseen) colour-shape pairs separately. The same classifier's accuracy
on the real test images is the ceiling.

The classifier is trained once per dataset and cached in <data.dir>/eval_cache (weights and a
JSON record of how it was trained and how well it does on real test images).
"""

from __future__ import annotations

import json
import os
import secrets

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from mirrorgan_tf import data
from mirrorgan_tf.metrics.base import EvalError, Metric

SIZE = 64  # every image is read at this size: enough to see a small shape (14 px across)
TRAIN_STEPS = 500
BATCH = 64


class AttributeClassifier(keras.Model):
    """images [-1, 1] -> one logit vector per attribute."""

    def __init__(self, classes: list[int], name: str = "attribute_classifier", **kwargs):
        super().__init__(name=name, **kwargs)
        self.body = [layer for width in (32, 64, 128, 128)
                     for layer in (layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False),
                                   layers.BatchNormalization(), layers.ReLU())]
        self.flatten = layers.Flatten()  # not pooled: where the object is is one of the answers
        self.hidden = layers.Dense(256, activation="relu")
        self.heads = [layers.Dense(n, name=f"head{i}") for i, n in enumerate(classes)]

    def call(self, images, training=None):
        x = tf.image.resize(images, (SIZE, SIZE), method="bilinear", antialias=True)
        for layer in self.body:
            x = layer(x, training=training)
        x = self.hidden(self.flatten(x))
        return [head(x) for head in self.heads]


def _classes(manifest) -> tuple[list[str], list[int]]:
    names = data.attribute_names(manifest)
    return names, [len(manifest["attributes"][n]) for n in names]


def unseen_mask(manifest, attributes: np.ndarray) -> np.ndarray:
    """True where an image's (colour, shape) pair is one the training split never shows."""
    names = data.attribute_names(manifest)
    held = (manifest.get("details") or {}).get("held_out_pairs") or []
    if not held or "colour" not in names or "shape" not in names:
        return np.zeros(len(attributes), bool)
    values = manifest["attributes"]
    c, s = names.index("colour"), names.index("shape")
    pairs = {(values["colour"].index(a), values["shape"].index(b)) for a, b in held}
    return np.array([(int(x[c]), int(x[s])) in pairs for x in attributes], bool)


def accuracies(predicted: np.ndarray, truth: np.ndarray, names: list[str], unseen: np.ndarray) -> dict:
    """predicted, truth int [N, A] -> {"seen"|"unseen": {attribute: accuracy, "all": ..., "images": n}}."""
    out = {}
    for group, mask in (("seen", ~unseen), ("unseen", unseen)):
        if not mask.any():
            continue
        right = predicted[mask] == truth[mask]
        out[group] = {**{n: float(right[:, i].mean()) for i, n in enumerate(names)},
                      "all": float(right.all(axis=1).mean()), "images": int(mask.sum())}
    return out


def _predict(model, images) -> np.ndarray:
    return np.stack([np.argmax(l, axis=-1) for l in model(tf.constant(images), training=False)], axis=1)


def train_classifier(cfg, manifest, path: str, steps: int = TRAIN_STEPS, seed: int = 0) -> dict:
    """Train on the real training images, measure on the real test images, save atomically."""
    names, classes = _classes(manifest)
    keras.utils.set_random_seed(seed)
    model = AttributeClassifier(classes)
    ds = (data.eval_images(cfg, "train", 256, size=SIZE).unbatch()
          .shuffle(4096, seed=seed).repeat().batch(BATCH).prefetch(data.AUTOTUNE))
    opt = keras.optimizers.Adam(1e-3)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            total = tf.add_n([loss(labels[:, i], l) for i, l in enumerate(logits)])
        grads = tape.gradient(total, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return total

    for i, batch in enumerate(ds.take(steps)):
        value = step(batch["images"], batch["attributes"])
        if (i + 1) % 100 == 0:
            print(f"attribute classifier: step {i + 1}/{steps}, loss {float(value):.4f}", flush=True)
    predicted, truth = [], []
    for batch in data.eval_images(cfg, "test", 256, size=SIZE):
        predicted.append(_predict(model, batch["images"].numpy()))
        truth.append(batch["attributes"].numpy())
    predicted, truth = np.concatenate(predicted), np.concatenate(truth)
    info = {"attributes": names, "image_size": SIZE, "train_steps": steps, "batch_size": BATCH,
            "seed": seed, "trained_on": "real train split",
            "real_test_accuracy": accuracies(predicted, truth, names, unseen_mask(manifest, truth))}
    tf.io.gfile.makedirs(os.path.dirname(path))
    tag = secrets.token_hex(4)
    model.save_weights(f"{path}.incomplete-{tag}.weights.h5")
    with open(f"{path}.incomplete-{tag}.json", "w") as f:
        json.dump(info, f, indent=2)
    os.replace(f"{path}.incomplete-{tag}.weights.h5", f"{path}.weights.h5")
    os.replace(f"{path}.incomplete-{tag}.json", f"{path}.json")  # written last: marks a complete cache
    return info


def load_classifier(cfg, manifest, steps: int = TRAIN_STEPS):
    """The cached classifier of this dataset, trained first if there is none."""
    path = os.path.join(cfg.data.dir, "eval_cache", f"attribute_classifier-{SIZE}px-{steps}steps")
    if not (os.path.exists(f"{path}.json") and os.path.exists(f"{path}.weights.h5")):
        print(f"attribute classifier: training on {cfg.data.dir} (cached at {path})", flush=True)
        train_classifier(cfg, manifest, path, steps)
    with open(f"{path}.json") as f:
        info = json.load(f)
    _, classes = _classes(manifest)
    model = AttributeClassifier(classes)
    model(tf.zeros((1, SIZE, SIZE, 3)))
    model.load_weights(f"{path}.weights.h5")
    return model, info, path


class AttributeAccuracy(Metric):
    name = "attributes"

    def __init__(self, ctx):
        super().__init__(ctx)
        if not data.attribute_names(ctx.manifest):
            raise EvalError(f"{ctx.cfg.data.dir}: the attributes metric needs a dataset with attribute labels "
                            f"(shapes); this one has none")

    def prepare(self):
        steps = int(self.ctx.option("classifier_steps", TRAIN_STEPS))
        self.model, self.info, self.path = load_classifier(self.ctx.cfg, self.ctx.manifest, steps)
        self.predicted = np.zeros((len(self.ctx.rows), len(self.info["attributes"])), np.int64)

    def update(self, images, samples):
        self.predicted[samples] = _predict(self.model, images)

    def result(self):
        ctx = self.ctx
        truth = ctx.all_pairs.attributes[ctx.rows]
        return {"value": accuracies(self.predicted, truth, self.info["attributes"],
                                    unseen_mask(ctx.manifest, truth)),
                "images": len(ctx.rows), "classifier": self.path,
                "real": {"value": self.info["real_test_accuracy"],
                         "what": "the classifier on the real test images: the ceiling"}}
