"""The Inception-v3 of tensorflow/models' old `inception/slim` library (research/inception), as
StackGAN's Inception Score script builds and restores it, in tf.compat.v1 graph mode with explicit
variables and ops. Written from the architecture's facts (layer order, shapes, padding, scope
names; BatchNorm: beta, no gamma, epsilon 0.001), independently of mirrorgan_tf's Keras network:
unnamed convolutions take their `Conv`, `Conv_1`, ... names from TF's own unique-scope naming, as
in the original, not from a table.

`write_checkpoint` saves random weights in the layout of a released fine-tuned checkpoint: every
variable, its `ExponentialMovingAverage` copy (holding other values: the averages are what
StackGAN restores), an optimizer slot and the global step. `probabilities` restores such a
checkpoint the way StackGAN's script does (ExponentialMovingAverage.variables_to_restore) and
returns its softmax over logits 1.. .
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1
EPSILON = 0.001


class _Builder:
    """Creates the variables while building; `stats="batch"` normalises with each batch's own
    moments (recorded in `moments`, for calibration), `stats="moving"` with the stored ones."""

    def __init__(self, stats: str):
        self.stats, self.moments = stats, {}

    def conv(self, x, filters, kernel, stride=1, padding="SAME", scope=None):
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        with v1.variable_scope(scope, default_name="Conv"):
            w = v1.get_variable("weights", [kh, kw, int(x.shape[-1]), filters], tf.float32)
            y = tf.nn.conv2d(x, w, [1, stride, stride, 1], padding)
            with v1.variable_scope("BatchNorm"):
                beta = v1.get_variable("beta", [filters], tf.float32)
                stat_collections = [v1.GraphKeys.GLOBAL_VARIABLES, v1.GraphKeys.MOVING_AVERAGE_VARIABLES]
                mean = v1.get_variable("moving_mean", [filters], tf.float32, trainable=False,
                                       collections=stat_collections)
                var = v1.get_variable("moving_variance", [filters], tf.float32, trainable=False,
                                      collections=stat_collections)
                if self.stats == "batch":
                    mean, var = tf.nn.moments(y, [0, 1, 2])
                    self.moments[v1.get_variable_scope().name] = (mean, var)
                y = tf.nn.batch_normalization(y, mean, var, beta, None, EPSILON)
            return tf.nn.relu(y)

    def fc(self, x, units, scope=None):
        with v1.variable_scope(scope, default_name="FC"):
            w = v1.get_variable("weights", [int(x.shape[-1]), units], tf.float32)
            b = v1.get_variable("biases", [units], tf.float32)
            return tf.matmul(x, w) + b


def _avg(x):
    return tf.nn.avg_pool2d(x, 3, 1, "SAME")


def _max(x):
    return tf.nn.max_pool2d(x, 3, 2, "VALID")


def build(images, num_logits: int, stats: str = "moving"):
    """images float32 [N, 299, 299, 3] in [-1, 1] -> (logits [N, num_logits], the _Builder)."""
    b = _Builder(stats)
    c = b.conv
    x = c(images, 32, 3, 2, "VALID", "conv0")
    x = c(x, 32, 3, 1, "VALID", "conv1")
    x = c(x, 64, 3, 1, "SAME", "conv2")
    x = _max(x)
    x = c(x, 80, 1, 1, "VALID", "conv3")
    x = c(x, 192, 3, 1, "VALID", "conv4")
    x = _max(x)

    for name, pool_filters in (("mixed_35x35x256a", 32), ("mixed_35x35x288a", 64), ("mixed_35x35x288b", 64)):
        with v1.variable_scope(name):
            with v1.variable_scope("branch1x1"):
                a = c(x, 64, 1)
            with v1.variable_scope("branch5x5"):
                f = c(c(x, 48, 1), 64, 5)
            with v1.variable_scope("branch3x3dbl"):
                d = c(c(c(x, 64, 1), 96, 3), 96, 3)
            with v1.variable_scope("branch_pool"):
                p = c(_avg(x), pool_filters, 1)
            x = tf.concat([a, f, d, p], 3)

    with v1.variable_scope("mixed_17x17x768a"):
        with v1.variable_scope("branch3x3"):
            a = c(x, 384, 3, 2, "VALID")
        with v1.variable_scope("branch3x3dbl"):
            d = c(c(c(x, 64, 1), 96, 3), 96, 3, 2, "VALID")
        with v1.variable_scope("branch_pool"):
            p = _max(x)
        x = tf.concat([a, d, p], 3)

    for name, w in (("mixed_17x17x768b", 128), ("mixed_17x17x768c", 160), ("mixed_17x17x768d", 160),
                    ("mixed_17x17x768e", 192)):
        with v1.variable_scope(name):
            with v1.variable_scope("branch1x1"):
                a = c(x, 192, 1)
            with v1.variable_scope("branch7x7"):
                s = c(c(c(x, w, 1), w, (1, 7)), 192, (7, 1))
            with v1.variable_scope("branch7x7dbl"):
                d = c(x, w, 1)
                d = c(d, w, (7, 1))
                d = c(d, w, (1, 7))
                d = c(d, w, (7, 1))
                d = c(d, 192, (1, 7))
            with v1.variable_scope("branch_pool"):
                p = c(_avg(x), 192, 1)
            x = tf.concat([a, s, d, p], 3)

    # The training-only side head: its variables are in the released checkpoints and restored.
    with v1.variable_scope("aux_logits"):
        aux = tf.nn.avg_pool2d(x, 5, 3, "VALID")
        aux = c(aux, 128, 1, scope="proj")
        aux = c(aux, 768, (int(aux.shape[1]), int(aux.shape[2])), padding="VALID")
        b.fc(tf.reshape(aux, [-1, 768]), num_logits)

    with v1.variable_scope("mixed_17x17x1280a"):
        with v1.variable_scope("branch3x3"):
            a = c(c(x, 192, 1), 320, 3, 2, "VALID")
        with v1.variable_scope("branch7x7x3"):
            s = c(c(c(c(x, 192, 1), 192, (1, 7)), 192, (7, 1)), 192, 3, 2, "VALID")
        with v1.variable_scope("branch_pool"):
            p = _max(x)
        x = tf.concat([a, s, p], 3)

    for name in ("mixed_8x8x2048a", "mixed_8x8x2048b"):
        with v1.variable_scope(name):
            with v1.variable_scope("branch1x1"):
                a = c(x, 320, 1)
            with v1.variable_scope("branch3x3"):
                s = c(x, 384, 1)
                s = tf.concat([c(s, 384, (1, 3)), c(s, 384, (3, 1))], 3)
            with v1.variable_scope("branch3x3dbl"):
                d = c(c(x, 448, 1), 384, 3)
                d = tf.concat([c(d, 384, (1, 3)), c(d, 384, (3, 1))], 3)
            with v1.variable_scope("branch_pool"):
                p = c(_avg(x), 192, 1)
            x = tf.concat([a, s, d, p], 3)

    with v1.variable_scope("logits"):
        x = tf.nn.avg_pool2d(x, [int(x.shape[1]), int(x.shape[2])], 1, "VALID")
        logits = b.fc(tf.reshape(x, [-1, 2048]), num_logits, scope="logits")
    return logits, b


def _random(shape, fan_in, rng):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def write_checkpoint(prefix: str, num_logits: int, calibration: np.ndarray, seed: int = 0) -> str:
    """Random He-normal weights and betas in [-0.3, 0.3]; each BatchNorm's statistics set to the
    moments its input really has on `calibration` (float32 [N, 299, 299, 3] in [-1, 1]) with the
    layers before it, then perturbed (mean by up to 0.1 std, variance x 0.7 to 1.4), so activations
    stay of order one and an eps or statistics mistake shows. These become the averaged
    (`/ExponentialMovingAverage`) values; the raw variables get other values (half). Saved with
    tf.compat.v1.train.Saver (V2 format). Returns the prefix."""
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, 299, 299, 3])
        _, builder = build(images, num_logits, stats="batch")
        model_vars = v1.global_variables()
        # The averages' variables, named as tf.train.ExponentialMovingAverage names them (what
        # `probabilities` restores through that class checks the names); its update ops, which
        # only training needs, are left out.
        averages = v1.train.ExponentialMovingAverage(0.9999)
        shadow = {v.op.name: v1.get_variable(averages.average_name(v), v.shape, tf.float32, trainable=False).op.name
                  for v in model_vars}
        v1.train.get_or_create_global_step()
        v1.get_variable("logits/logits/weights/RMSProp", [2048, num_logits], tf.float32)  # an optimizer slot
        # Every value goes in through a placeholder (a resource variable's load() would add a
        # constant to the graph each time); nothing runs the initializers: all is assigned.
        feeds = {}
        for v in v1.global_variables():
            ph = v1.placeholder(v.dtype.base_dtype, v.shape)
            feeds[v.op.name] = (ph, v.assign(ph))

        def load(sess, values):
            sess.run([feeds[n][1] for n in values], {feeds[n][0]: a for n, a in values.items()})

        with v1.Session() as sess:
            value = {}
            for v in model_vars:
                name = v.op.name
                shape = v.shape.as_list()
                if name.endswith("/weights"):
                    value[name] = _random(shape, int(np.prod(shape[:-1])), rng)
                elif name.endswith(("/beta", "/biases")):
                    value[name] = (0.3 * (2 * rng.random(shape) - 1)).astype(np.float32)
            # Each layer's moments depend on the layers before it: load those first, then measure.
            load(sess, value)
            moments = sess.run(builder.moments, {images: calibration})
            for scope, (mean, var) in moments.items():
                n = mean.shape[0]
                value[f"{scope}/moving_mean"] = (mean + 0.1 * np.sqrt(var) * (2 * rng.random(n) - 1)).astype(np.float32)
                value[f"{scope}/moving_variance"] = (var * (0.7 + 0.7 * rng.random(n))).astype(np.float32)
            stored = {"global_step": np.int64(5000),
                      "logits/logits/weights/RMSProp": rng.random([2048, num_logits]).astype(np.float32)}
            for v in model_vars:
                name = v.op.name
                stored[shadow[name]] = value[name]
                stored[name] = 0.5 * value[name]  # other values, of the same signs
            load(sess, stored)
            return v1.train.Saver(v1.global_variables()).save(sess, prefix, write_meta_graph=False)


def probabilities(prefix: str, num_logits: int, images: np.ndarray) -> np.ndarray:
    """StackGAN's scoring path on preprocessed images (float32 [N, 299, 299, 3] in [-1, 1]):
    restore every variable from its moving average, softmax over logits 1.. (logit 0 is the
    background class). Returns float32 [N, num_logits - 1]."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 299, 299, 3])
        logits, _ = build(x, num_logits)
        probs = tf.nn.softmax(logits[:, 1:])
        restore = v1.train.ExponentialMovingAverage(0.9999).variables_to_restore()
        with v1.Session() as sess:
            v1.train.Saver(restore).restore(sess, prefix)
            return sess.run(probs, {x: images})
