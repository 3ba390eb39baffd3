"""Inception-v3 features for FID and class probabilities for the Inception Score.

Two sources, never mixed: the TensorFlow Inception graph of 2015-12-05
(`classify_image_graph_def.pb`, the published FID/IS protocol: pool_3 features and its 1008-way
softmax) or `keras.applications.InceptionV3` with a local ImageNet weights file (different,
non-comparable numbers). Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os

import tensorflow as tf

from mirrorgan_tf.metrics.base import EvalError

SIZE = 299


class InceptionGraph2015:
    """pool_3 (2048) and the softmax (1008 classes) of the 2015-12-05 graph. The graph's input
    (`ExpandDims:0`, float 0..255) is replaced by a batch of images resized to 299; the softmax
    is applied to pool_3 with the graph's own weights, because its reshape is fixed to batch 1.

    softmax_bias=False leaves out the softmax layer's bias, as the Inception Score code of the
    published protocol does (improved-GAN's `inception_score.py`, reused for COCO by AttnGAN,
    MirrorGAN and DM-GAN: softmax(pool_3 @ W), W taken from `softmax/logits/MatMul`); the
    default keeps the graph's own classifier, softmax(pool_3 @ W + b)."""

    source = "tensorflow inception graph 2015-12-05"

    def __init__(self, path: str, softmax_bias: bool = True):
        graph_def = tf.compat.v1.GraphDef()
        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                graph_def.ParseFromString(f.read())
        except Exception as e:  # a truncated or foreign file
            raise EvalError(f"{path}: not a TensorFlow GraphDef ({e})") from None
        names = {n.name for n in graph_def.node}
        missing = {"ExpandDims", "pool_3", "softmax/weights", "softmax/biases"} - names
        if missing:
            raise EvalError(f"{path}: not the 2015-12-05 Inception graph (no {', '.join(sorted(missing))} node)")

        def forward(images):
            pool, w, b = tf.compat.v1.import_graph_def(
                graph_def, input_map={"ExpandDims:0": images},
                return_elements=["pool_3:0", "softmax/weights:0", "softmax/biases:0"], name="inception")
            pool = tf.reshape(pool, [-1, w.shape[0]])
            logits = tf.matmul(pool, w)
            return pool, tf.nn.softmax(logits + b if softmax_bias else logits)

        self._fn = tf.compat.v1.wrap_function(forward, [tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)])
        self.path = path
        self.softmax_bias = softmax_bias

    def __call__(self, images):
        """images float [-1, 1] [N, H, W, 3] -> (features [N, 2048], probabilities [N, 1008])."""
        x = tf.image.resize(tf.constant(images, tf.float32), (SIZE, SIZE), method="bilinear")
        pool, probs = self._fn((x + 1.0) * 127.5)
        return pool.numpy(), probs.numpy()


class KerasInceptionV3:
    """keras.applications.InceptionV3 with a local weights file: the full ImageNet model
    (avg_pool features + 1000-way predictions) or the no-top one (features only)."""

    source = "keras.applications.InceptionV3"

    def __init__(self, path: str):
        import keras

        errors = []
        for include_top in (True, False):
            model = keras.applications.InceptionV3(include_top=include_top, weights=None, pooling="avg",
                                                   input_shape=(SIZE, SIZE, 3))
            try:
                model.load_weights(path)
            except Exception as e:  # wrong top, wrong file
                errors.append(str(e).splitlines()[0][:200])
                continue
            if include_top:
                pool = model.get_layer("avg_pool").output
                self._model = keras.Model(model.input, [pool, model.output])
            else:
                self._model = model
            self.has_classes = include_top
            self.path = path
            return
        raise EvalError(f"{path}: not InceptionV3 weights (with top: {errors[0]}; without: {errors[1]})")

    def __call__(self, images):
        x = tf.image.resize(tf.constant(images, tf.float32), (SIZE, SIZE), method="bilinear")
        out = self._model(x, training=False)  # InceptionV3 expects [-1, 1], which images already are
        if self.has_classes:
            return out[0].numpy(), out[1].numpy()
        return out.numpy(), None


def load(graph: str | None, weights: str | None, what: str):
    """The extractor the user gave: the 2015 graph (published protocol) or Keras weights."""
    if graph:
        if not tf.io.gfile.exists(graph):
            raise EvalError(f"--inception-graph {graph}: no such file")
        return InceptionGraph2015(graph)
    if weights:
        if not tf.io.gfile.exists(weights):
            raise EvalError(f"--inception-weights {weights}: no such file")
        return KerasInceptionV3(weights)
    raise EvalError(f"{what} needs Inception weights: --inception-graph classify_image_graph_def.pb (the 2015-12-05 "
                    f"graph, the published protocol) or --inception-weights FILE (keras.applications.InceptionV3)")


def check_paths(graph: str | None, weights: str | None, what: str) -> None:
    """The cheap part of `load`: fail on a missing argument or file before any generation."""
    if not graph and not weights:
        load(None, None, what)
    for flag, path in (("--inception-graph", graph), ("--inception-weights", weights)):
        if path and not tf.io.gfile.exists(path):
            raise EvalError(f"{flag} {path}: no such file")


def reference_cache_path(ctx, extractor, graph: str | None, weights: str | None, kind: str) -> str:
    """Where a metric caches what it computed on the real images of `ctx.split` with `extractor`:
    <data.dir>/eval_cache/<kind>-<split>-<final size>px-<key>.npz, the key a hash of the extractor's
    source and the weight file's absolute path and byte size (another file, another cache). FID
    and KID share it, each with its own `kind`."""
    source = os.path.abspath(graph or weights)
    key = hashlib.sha1(f"{extractor.source}|{source}|{os.path.getsize(source)}".encode()).hexdigest()[:12]
    return os.path.join(ctx.cfg.data.dir, "eval_cache", f"{kind}-{ctx.split}-{ctx.cfg.image_sizes[-1]}px-{key}.npz")
