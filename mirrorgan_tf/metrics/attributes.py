"""Attribute accuracy for `shapes`: does a generated image show the colour, shape, size and
position its caption names? A classifier trained on the real training images reads each
attribute off the generated image; accuracy is reported per attribute and for all four at once,
for seen and for held-out (unseen) colour-shape pairs separately. The same classifier's accuracy
on the real test images is the ceiling.

The classifier is factorised so that it cannot learn the training split's colour-shape
correlations: the held-out pairs are exactly where such a shortcut would misjudge an image. A
joint CNN (our first design) did: on the 98 real unseen test images it called 5 orange circles
squares and 7 purple triangles red or blue (85.7 % all four, against 100 % on seen pairs).
- Colour is read by per-pixel layers (1x1 convolutions) pooled over the foreground: it sees the
  object's pixel colours and nothing of their arrangement, so it cannot see the shape.
- Shape, size and position are read by a CNN from the foreground map alone: each pixel's colour
  distance from the background (the median of the image border), divided by the object's contrast.
  Whatever the object's colour, that map is ~1 inside it and falls to 0 at its edge.

The classifier is trained once per dataset and cached in <data.dir>/eval_cache (weights and a
JSON record of how it was trained and how well it does on real test images).
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from mirrorgan_tf import data
from mirrorgan_tf.images import atomic_write, staged
from mirrorgan_tf.metrics.base import EvalError, Metric, percent

SIZE = 64  # every image is read at this size: enough to see a small shape (14 px across)
TRAIN_STEPS = 500
BATCH = 64


DESIGN = "factorised"  # part of the cache name: a cache of another design is never loaded
COLOUR = "colour"


def foreground(images):
    """images [B, S, S, 3] in [-1, 1] -> float32 [B, S, S, 1] in [0, 1], colour-blind.

    The background is flat and the object never covers most of the border, so the border's
    per-channel median is the background colour. The contrast is the mean distance of the 1 %
    most distant pixels (inside even the smallest object), floored so that an empty image stays
    near 0 instead of amplifying its noise."""
    images = tf.convert_to_tensor(images, tf.float32)
    border = tf.concat([images[:, 0], images[:, -1], images[:, 1:-1, 0], images[:, 1:-1, -1]], axis=1)
    n = tf.shape(border)[1]
    background = tf.sort(border, axis=1)[:, n // 2]  # [B, 3]
    distance = tf.norm(images - background[:, None, None, :], axis=-1)  # [B, S, S]
    flat = tf.reshape(distance, (tf.shape(images)[0], -1))
    k = tf.maximum(tf.shape(flat)[1] // 100, 1)
    contrast = tf.maximum(tf.reduce_mean(tf.math.top_k(flat, k).values, axis=1), 0.5)
    return tf.clip_by_value(distance / contrast[:, None, None], 0.0, 1.0)[..., None]



# No published protocol scores these rates; below this many images a rate's binomial standard
# error, sqrt(p (1 - p) / n), can exceed one percentage point (at p = 0.5, n = 2,500 gives 1.0).
NOTE_BELOW_IMAGES = 2_500


def small_count_note(group: str, rate: float, images: int) -> str | None:
    """The note an all-four rate `rate` in [0, 1] from `images` images needs: its binomial
    standard error in percentage points, when `images` < NOTE_BELOW_IMAGES; else None."""
    if images >= NOTE_BELOW_IMAGES:
        return None
    error = 100 * (rate * (1 - rate) / max(images, 1)) ** 0.5
    return (f"attributes/{group} from {images:,} images: the all-four rate carries a standard error of "
            f"{error:.1f} points (sqrt(p (1 - p) / n)); differences below about twice that are noise")


class AttributeClassifier(keras.Model):
    """images [-1, 1] -> one logit vector per attribute (in `names` order), factorised as the
    module says: colour from foreground-pooled per-pixel features, the rest from the foreground map."""

    def __init__(self, names: list[str], classes: list[int], name: str = "attribute_classifier", **kwargs):
        super().__init__(name=name, **kwargs)
        self.names = list(names)
        self.pixel = [layers.Conv2D(32, 1, activation="relu"), layers.Conv2D(32, 1, activation="relu")]
        self.body = [layer for width in (32, 64, 128, 128)
                     for layer in (layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False),
                                   layers.BatchNormalization(), layers.ReLU())]
        self.flatten = layers.Flatten()  # not pooled: where the object is is one of the answers
        self.hidden = layers.Dense(256, activation="relu")
        self.heads = [layers.Dense(n, name=f"head{i}") for i, n in enumerate(classes)]

    def call(self, images, training=None):
        images = tf.image.resize(images, (SIZE, SIZE), method="bilinear", antialias=True)
        mask = foreground(images)
        weights = tf.square(mask)  # the object's inside more than its anti-aliased rim
        pixels = images
        for layer in self.pixel:
            pixels = layer(pixels)
        colour = tf.reduce_sum(pixels * weights, axis=(1, 2)) / (tf.reduce_sum(weights, axis=(1, 2)) + 1e-3)
        x = mask
        for layer in self.body:
            x = layer(x, training=training)
        spatial = self.hidden(self.flatten(x))
        return [head(colour if name == COLOUR else spatial) for name, head in zip(self.names, self.heads)]


def _classes(manifest) -> tuple[list[str], list[int]]:
    names = data.attribute_names(manifest)
    return names, [len(manifest["attributes"][n]) for n in names]


def _held_out(manifest) -> tuple[dict, int, int]:
    """The split's held-out colour-shape pairs: ({"<colour> <shape>": (colour index, shape index)}
    in the manifest's order, the colour column, the shape column); ({}, -1, -1) for a dataset
    without them (or without colour and shape attributes)."""
    names = data.attribute_names(manifest)
    held = (manifest.get("details") or {}).get("held_out_pairs") or []
    if not held or "colour" not in names or "shape" not in names:
        return {}, -1, -1
    values = manifest["attributes"]
    pairs = {f"{a} {b}": (values["colour"].index(a), values["shape"].index(b)) for a, b in held}
    return pairs, names.index("colour"), names.index("shape")


def unseen_mask(manifest, attributes: np.ndarray) -> np.ndarray:
    """True where an image's (colour, shape) pair is one the training split never shows."""
    pairs, c, s = _held_out(manifest)
    held = set(pairs.values())
    return np.array([(int(x[c]), int(x[s])) in held for x in attributes], bool) if held else \
        np.zeros(len(attributes), bool)


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


def caption_agreement(predicted: np.ndarray, truth: np.ndarray, captions: np.ndarray, names: list[str],
                      unseen: np.ndarray) -> dict:
    """Whether one caption's samples agree on what they show: the share of captions whose samples
    are read with more than one value of an attribute ("mixed": the noise changes what the caption
    fixes, e.g. a circle in some draws and a square in others) and the share whose samples all miss
    it ("all_wrong": the caption itself is drawn wrong, whatever the noise). Only captions with two
    or more samples count.

    predicted, truth int [N, A] (attribute value indices per sample), captions int [N] (samples of
    one caption share a number), unseen bool [N] -> {"seen"|"unseen": {attribute: {"mixed": share,
    "all_wrong": share}, "all": the same for the four at once (mixed: some attribute mixed;
    all_wrong: no sample right on all four), "captions": count}}, shares in [0, 1]; a group without
    such captions is left out."""
    _, caption, counts = np.unique(captions, return_inverse=True, return_counts=True)
    several = counts[caption] >= 2
    out = {}
    for group, mask in (("seen", ~unseen), ("unseen", unseen)):
        m = mask & several
        if not m.any():
            continue
        ids = np.unique(caption[m], return_inverse=True)[1]
        n = int(ids.max()) + 1
        right = predicted[m] == truth[m]

        def shares(values, correct):
            distinct = np.unique(np.stack([ids, values], axis=1), axis=0)[:, 0]
            mixed = np.bincount(distinct, minlength=n) > 1
            none_right = np.bincount(ids, weights=correct, minlength=n) == 0
            return mixed, none_right

        entry, any_mixed = {}, np.zeros(n, bool)
        for i, name in enumerate(names):
            mixed, none_right = shares(predicted[m][:, i], right[:, i])
            any_mixed |= mixed
            entry[name] = {"mixed": float(mixed.mean()), "all_wrong": float(none_right.mean())}
        entry["all"] = {"mixed": float(any_mixed.mean()),
                        "all_wrong": float((np.bincount(ids, weights=right.all(axis=1), minlength=n) == 0).mean())}
        out[group] = {**entry, "captions": n}
    return out


def held_out_pairs(predicted: np.ndarray, truth: np.ndarray, manifest) -> dict:
    """Each held-out colour-shape pair on its own, and what its images were read as.

    The unseen group's rate mixes every held-out pair; this tells which pair fails and how (on
    the default shapes split, "orange circle" drawn as a rounded square is read as a square).
    predicted, truth int [N, A] (attribute value indices, in `data.attribute_names` order) ->
    {"<colour> <shape>": {"images": n, "all": share right on all four, "colour": share,
    "shape": share, "read_as": {"colour": {value: share}, "shape": {value: share}}}}, shares in
    [0, 1] (read_as lists only values read at least once, in the manifest's order); a pair
    without images is left out, and a dataset without held-out pairs gives {}."""
    pairs, c, s = _held_out(manifest)
    values = manifest["attributes"]
    out = {}
    for pair, (colour, shape) in pairs.items():
        mask = (truth[:, c] == colour) & (truth[:, s] == shape)
        if not mask.any():
            continue
        read, right = predicted[mask], predicted[mask] == truth[mask]
        read_as = {}
        for attribute, i in (("colour", c), ("shape", s)):
            counts = np.bincount(read[:, i], minlength=len(values[attribute]))
            read_as[attribute] = {v: float(k / len(read)) for v, k in zip(values[attribute], counts) if k}
        out[pair] = {"images": len(read), "all": float(right.all(axis=1).mean()),
                     "colour": float(right[:, c].mean()), "shape": float(right[:, s].mean()), "read_as": read_as}
    return out


def _predict(model, images) -> np.ndarray:
    return np.stack([np.argmax(l, axis=-1) for l in model(tf.constant(images), training=False)], axis=1)


def train_classifier(cfg, manifest, path: str, steps: int = TRAIN_STEPS, seed: int = 0) -> dict:
    """Train on the real training images, measure on the real test images, save atomically."""
    names, classes = _classes(manifest)
    keras.utils.set_random_seed(seed)
    model = AttributeClassifier(names, classes)
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
            "seed": seed, "trained_on": "real train split", "design": DESIGN,
            "real_test_accuracy": accuracies(predicted, truth, names, unseen_mask(manifest, truth))}
    with staged(f"{path}.weights.h5") as tmp:
        model.save_weights(tmp)
    atomic_write(f"{path}.json", json.dumps(info, indent=2))  # written last: marks a complete cache
    return info


def load_classifier(cfg, manifest, steps: int = TRAIN_STEPS):
    """The cached classifier of this dataset, trained first if there is none."""
    path = os.path.join(cfg.data.dir, "eval_cache", f"attribute_classifier-{DESIGN}-{SIZE}px-{steps}steps")
    if not (os.path.exists(f"{path}.json") and os.path.exists(f"{path}.weights.h5")):
        print(f"attribute classifier: training on {cfg.data.dir} (cached at {path})", flush=True)
        train_classifier(cfg, manifest, path, steps)
    with open(f"{path}.json") as f:
        info = json.load(f)
    names, classes = _classes(manifest)
    model = AttributeClassifier(names, classes)
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
        self.reset()

    def reset(self):
        self.predicted = np.zeros((len(self.ctx.rows), len(self.info["attributes"])), np.int64)

    def update(self, images, samples):
        self.predicted[samples] = _predict(self.model, images)

    def result(self):
        ctx = self.ctx
        truth = ctx.all_pairs.attributes[ctx.rows]
        unseen = unseen_mask(ctx.manifest, truth)
        agreement = caption_agreement(self.predicted, truth, ctx.rows, self.info["attributes"], unseen)
        pairs = held_out_pairs(self.predicted, truth, ctx.manifest)
        return {"value": accuracies(self.predicted, truth, self.info["attributes"], unseen),
                **({"per_caption": agreement} if agreement else {}),
                **({"held_out_pairs": pairs} if pairs else {}),
                "images": len(ctx.rows), "classifier": self.path,
                "real": {"value": self.info["real_test_accuracy"],
                         "what": "the classifier on the real test images: the ceiling"}}

    @staticmethod
    def format(r):
        lines = []
        for group, acc in r["value"].items():
            ceiling = r["real"]["value"].get(group, {})
            cells = ", ".join(f"{k} {percent(v)} ({percent(ceiling[k])})" for k, v in acc.items()
                              if k != "images" and k in ceiling)
            lines.append(f"attributes/{group} [{acc['images']:,} images]: {cells}")
            note = small_count_note(group, acc["all"], acc["images"])
            lines += [f"  note: {note}"] if note else []
            agree = r.get("per_caption", {}).get(group)
            if agree:
                cells = ", ".join(f"{k} {percent(v['mixed'])} / {percent(v['all_wrong'])}"
                                  for k, v in agree.items() if k != "captions")
                lines.append(f"  per caption [{agree['captions']:,} captions], mixed / all samples wrong: {cells}")
            if group == "unseen":
                for pair, p in r.get("held_out_pairs", {}).items():
                    read = "; ".join(f"{a} read as " + ", ".join(f"{v} {percent(x)}" for v, x in shares.items())
                                     for a, shares in p["read_as"].items())
                    lines.append(f"  {pair} [{p['images']:,} images]: all {percent(p['all'])}; {read}")
        return lines + ["  (in brackets: the same classifier on real test images)"]
