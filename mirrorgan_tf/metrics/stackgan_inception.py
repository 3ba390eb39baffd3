"""StackGAN's fine-tuned Inception-v3 (the CUB / Oxford-102 Inception Score classifier), read
from its released TF1 checkpoint into a Keras network.

The AttnGAN / MirrorGAN / DM-GAN / DF-GAN CUB Inception Scores all come from the classifier that
StackGAN's authors fine-tuned on CUB (`inception_finetuned_models/birds_valid299/model.ckpt`, 50
classes; Oxford-102 flowers: 20 classes), scored by their evaluation script. That checkpoint holds
the variables of the Inception-v3 definition of the old `inception/slim` library of
tensorflow/models (research/inception), whose facts this module reproduces:

- every convolution: no bias, then batch normalisation with a shift (beta) and no scale (gamma),
  epsilon 0.001, using the stored moving mean and variance, then ReLU; padding VALID in the stem
  (except conv2, SAME), SAME inside the mixed blocks (except the stride-2 reductions, VALID);
- average pools inside the blocks: 3x3, stride 1, SAME, averaging only the real (unpadded)
  inputs (`tf.nn.avg_pool`); max pools 3x3 stride 2 VALID;
- head: average over the whole 8x8 map, dropout (identity when scoring), one dense layer with a
  bias to `num_logits` outputs, where logit 0 is the unused background class of that library's
  training code (labels from 1), so the 50-class CUB model has 51 logits;
- variable names `<scope>/weights`, `<scope>/BatchNorm/{beta,moving_mean,moving_variance}`,
  `logits/logits/{weights,biases}`; unnamed convolutions inside a branch are `Conv`, `Conv_1`, ...
  in the order they are created; an auxiliary head (`aux_logits/...`, used only in training)
  is in the checkpoint but not in the score.

StackGAN's script restores every variable from its exponential moving average (the
`<name>/ExponentialMovingAverage` entries, for the BatchNorm statistics too), so those are the
values read here; the raw training values, optimizer slots and step counter beside them are
ignored. Its probabilities are the softmax over logits 1.. (the background logit dropped) of
images resized to 299x299 bilinearly as 8-bit pictures and scaled to [-1, 1]
(`StackGANInception.preprocess`).
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from mirrorgan_tf.metrics.base import EvalError

SIZE = 299
BN_EPSILON = 0.001  # the slim library's default, and what StackGAN's evaluation script passes
EMA = "ExponentialMovingAverage"  # suffix of the averaged copies StackGAN restores
LOGITS = "logits/logits"


# --- the architecture, as data -------------------------------------------------------------
# A step of a branch: ("conv", filters, (kh, kw), stride, padding), ("avg",) a 3x3 stride-1 SAME
# average pool, ("max",) a 3x3 stride-2 VALID max pool, or ("fork", conv, conv): two convolutions
# of the same input, concatenated (the 8x8 blocks). Branches concatenate in the order listed.

def _c(filters, kernel, stride=1, padding="SAME"):
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    return ("conv", filters, kernel, stride, padding)


def _block_35(pool_filters):
    return [("branch1x1", [_c(64, 1)]),
            ("branch5x5", [_c(48, 1), _c(64, 5)]),
            ("branch3x3dbl", [_c(64, 1), _c(96, 3), _c(96, 3)]),
            ("branch_pool", [("avg",), _c(pool_filters, 1)])]


def _block_17(width):
    return [("branch1x1", [_c(192, 1)]),
            ("branch7x7", [_c(width, 1), _c(width, (1, 7)), _c(192, (7, 1))]),
            ("branch7x7dbl", [_c(width, 1), _c(width, (7, 1)), _c(width, (1, 7)), _c(width, (7, 1)),
                              _c(192, (1, 7))]),
            ("branch_pool", [("avg",), _c(192, 1)])]


def _block_8():
    fork = ("fork", _c(384, (1, 3)), _c(384, (3, 1)))
    return [("branch1x1", [_c(320, 1)]),
            ("branch3x3", [_c(384, 1), fork]),
            ("branch3x3dbl", [_c(448, 1), _c(384, 3), fork]),
            ("branch_pool", [("avg",), _c(192, 1)])]


STEM = [("conv0", _c(32, 3, 2, "VALID")), ("conv1", _c(32, 3, 1, "VALID")), ("conv2", _c(64, 3)),
        ("pool1", ("max",)), ("conv3", _c(80, 1, 1, "VALID")), ("conv4", _c(192, 3, 1, "VALID")),
        ("pool2", ("max",))]

BLOCKS = [
    ("mixed_35x35x256a", _block_35(32)),
    ("mixed_35x35x288a", _block_35(64)),
    ("mixed_35x35x288b", _block_35(64)),
    ("mixed_17x17x768a", [("branch3x3", [_c(384, 3, 2, "VALID")]),
                          ("branch3x3dbl", [_c(64, 1), _c(96, 3), _c(96, 3, 2, "VALID")]),
                          ("branch_pool", [("max",)])]),
    ("mixed_17x17x768b", _block_17(128)),
    ("mixed_17x17x768c", _block_17(160)),
    ("mixed_17x17x768d", _block_17(160)),
    ("mixed_17x17x768e", _block_17(192)),
    ("mixed_17x17x1280a", [("branch3x3", [_c(192, 1), _c(320, 3, 2, "VALID")]),
                           ("branch7x7x3", [_c(192, 1), _c(192, (1, 7)), _c(192, (7, 1)), _c(192, 3, 2, "VALID")]),
                           ("branch_pool", [("max",)])]),
    ("mixed_8x8x2048a", _block_8()),
    ("mixed_8x8x2048b", _block_8()),
]
FEATURES = 2048  # channels of the last block, averaged into the logits layer's input

# The training-only auxiliary head: in the checkpoint (and restored by StackGAN's script), not
# in the score. (scope, input channels, filters, kernel) of its two convolutions.
AUX_CONVS = [("aux_logits/proj", 768, 128, (1, 1)), ("aux_logits/Conv", 128, 768, (5, 5))]


def _named_convs():
    """[(checkpoint scope, input channels, conv step)] of every convolution the score uses, in
    network order, with the names the slim library gives them."""
    out, channels = [], 3
    for scope, step in STEM:
        if step[0] == "conv":
            out.append((scope, channels, step))
            channels = step[1]
    for block, branches in BLOCKS:
        block_in, block_out = channels, 0
        for branch, steps in branches:
            count, ch = 0, block_in
            for step in steps:
                convs = step[1:] if step[0] == "fork" else [step] if step[0] == "conv" else []
                for conv in convs:  # a fork's two convolutions both read `ch`
                    out.append((f"{block}/{branch}/" + ("Conv" if count == 0 else f"Conv_{count}"), ch, conv))
                    count += 1
                ch = sum(conv[1] for conv in convs) if convs else ch  # pools keep the channels
            block_out += ch
        channels = block_out
    assert channels == FEATURES
    return out


def _conv_variables(scope, cin, cout, kernel):
    return {f"{scope}/weights": [kernel[0], kernel[1], cin, cout], f"{scope}/BatchNorm/beta": [cout],
            f"{scope}/BatchNorm/moving_mean": [cout], f"{scope}/BatchNorm/moving_variance": [cout]}


def expected_variables(num_logits: int) -> dict[str, list[int]]:
    """Name -> shape of every variable StackGAN's evaluation script restores (each from its
    `<name>/ExponentialMovingAverage` entry), for a classifier of `num_logits` outputs
    (classes + 1 background): 94 convolutions with BatchNorm, the logits layer and the
    auxiliary head."""
    names = {}
    for scope, cin, (_, cout, kernel, _, _) in _named_convs():
        names.update(_conv_variables(scope, cin, cout, kernel))
    for scope, cin, cout, kernel in AUX_CONVS:
        names.update(_conv_variables(scope, cin, cout, kernel))
    names.update({"aux_logits/FC/weights": [768, num_logits], "aux_logits/FC/biases": [num_logits],
                  f"{LOGITS}/weights": [FEATURES, num_logits], f"{LOGITS}/biases": [num_logits]})
    return names


# --- the Keras network ----------------------------------------------------------------------

class ConvBN(keras.layers.Layer):
    """Convolution without bias, BatchNorm with beta and no gamma, ReLU: the slim `conv2d` with
    batch_norm_params. float32 [N, H, W, cin] -> [N, H', W', filters]."""

    def __init__(self, filters, kernel, stride, padding, epsilon, **kw):
        super().__init__(**kw)
        self.conv = keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding.lower(), use_bias=False)
        self.bn = keras.layers.BatchNormalization(epsilon=epsilon, center=True, scale=False)

    def call(self, x):
        return tf.nn.relu(self.bn(self.conv(x), training=False))


class StackGANInceptionV3(keras.Model):
    """The slim Inception-v3 of StackGAN's evaluation (see the module's docstring), inference only.

    Input float32 [N, 299, 299, 3] in [-1, 1]; output the logits float32 [N, num_logits], logit 0
    the background class. `convs` maps each checkpoint scope (e.g.
    `mixed_35x35x256a/branch5x5/Conv_1`) to its ConvBN; `logits` is the dense layer."""

    def __init__(self, num_logits: int, **kw):
        super().__init__(**kw)
        self.num_logits = num_logits
        self._scopes = []
        self.conv_layers = []
        for scope, _, (_, filters, kernel, stride, padding) in _named_convs():
            self._scopes.append(scope)
            self.conv_layers.append(ConvBN(filters, kernel, stride, padding, BN_EPSILON,
                                           name=scope.replace("/", "__")))
        self.logits = keras.layers.Dense(num_logits, name="logits__logits")

    @property
    def convs(self) -> dict:
        return dict(zip(self._scopes, self.conv_layers))

    def call(self, x):
        convs = iter(self.conv_layers)  # in the order _named_convs lists them, which call follows

        def run(step, x):
            if step[0] == "conv":
                return next(convs)(x)
            if step[0] == "avg":
                return tf.nn.avg_pool2d(x, 3, 1, "SAME")  # averages over the unpadded inputs only
            if step[0] == "max":
                return tf.nn.max_pool2d(x, 3, 2, "VALID")
            return tf.concat([next(convs)(x) for _ in step[1:]], axis=3)  # fork

        for _, step in STEM:
            x = run(step, x)
        for _, branches in BLOCKS:
            outs = []
            for _, steps in branches:
                y = x
                for step in steps:
                    y = run(step, y)
                outs.append(y)
            x = tf.concat(outs, axis=3)
        x = tf.reduce_mean(x, axis=[1, 2])  # the VALID 8x8 average pool over the whole map
        return self.logits(x)


# --- the checkpoint -------------------------------------------------------------------------

def _prefix_of(path: str) -> str:
    """A checkpoint's own files named instead of its prefix: `model.ckpt.index`,
    `model.ckpt.data-00000-of-00001`, `model.ckpt.meta` -> `model.ckpt`."""
    for suffix in (".index", ".meta"):
        if path.endswith(suffix):
            return path[:-len(suffix)]
    head, sep, tail = path.rpartition(".data-")
    return head if sep and "-of-" in tail else path


def resolve_checkpoint(path: str) -> str | None:
    """The checkpoint a path names, or None if it names none: a prefix (`model.ckpt`, its
    `.index` beside it: TF >= 0.12 format) or one of its files, a single-file TF1 checkpoint, or a
    directory (its `checkpoint` file's latest, else its last `model.ckpt*` by name)."""
    path = _prefix_of(path)
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest
        prefixes = sorted({n[:-len(".index")] if n.endswith(".index") else n for n in tf.io.gfile.listdir(path)
                           if n.startswith("model.ckpt") and not n.endswith(".meta") and ".data-" not in n})
        return os.path.join(path, prefixes[-1]) if prefixes else None
    if tf.io.gfile.exists(path + ".index") or tf.io.gfile.exists(path):
        return path
    return None


def looks_like_checkpoint(path: str) -> bool:
    """Whether `--is-classifier PATH` names a TF checkpoint (cheap: file names only)."""
    if tf.io.gfile.isdir(path):
        return resolve_checkpoint(path) is not None
    path = _prefix_of(path)
    return tf.io.gfile.exists(path + ".index") or os.path.basename(path).startswith("model.ckpt")


def check_checkpoint(path: str) -> tuple[str, int]:
    """(checkpoint prefix, number of logits) of a released StackGAN Inception checkpoint or its
    directory, from the variables' names and shapes only (cheap: no values are read). The classes
    are the logits minus the background one.

    Raises EvalError naming the file and the variables when it is not one: unreadable, no
    `logits/logits/biases`, a restored variable of another shape, a variable inside the network's
    scopes that this definition does not have (e.g. a BatchNorm gamma), or restored variables
    missing."""
    prefix = resolve_checkpoint(path)
    if prefix is None:
        raise EvalError(f"--is-classifier {path}: no TensorFlow checkpoint there")
    try:
        shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    except Exception as e:  # truncated, foreign, not a checkpoint
        raise EvalError(f"--is-classifier {prefix}: not a readable TensorFlow checkpoint "
                        f"({str(e).splitlines()[0][:200]})") from None
    logits = shapes.get(f"{LOGITS}/biases/{EMA}", shapes.get(f"{LOGITS}/biases"))
    if logits is None or len(logits) != 1 or logits[0] < 2:
        raise EvalError(f"{prefix}: not a StackGAN Inception checkpoint (no {LOGITS}/biases of 2 or more "
                        f"logits; it has {len(shapes)} variables, e.g. {', '.join(sorted(shapes)[:3])})")
    expected = expected_variables(logits[0])
    wrong, missing = [], []
    for name, shape in expected.items():
        stored = shapes.get(f"{name}/{EMA}")
        if stored is None:
            missing.append(f"{name}/{EMA}")
        elif list(stored) != shape:
            wrong.append(f"variable {name}/{EMA} has shape {list(stored)}, expected {shape}")
    scopes = {n.split("/")[0] for n in expected}
    # Beside the model's variables a training checkpoint holds their averages and optimizer slots
    # (`<name>/<slot>`) and the step counter (outside the scopes): all allowed, none read.
    extra = [f"variable {name} is not in the slim Inception-v3 definition" for name in sorted(shapes)
             if name.split("/")[0] in scopes and name not in expected and name.rsplit("/", 1)[0] not in expected]
    problems = wrong + extra
    if missing:
        problems.append(f"{len(missing)} variable(s) missing: " + ", ".join(missing[:5])
                        + (", ..." if len(missing) > 5 else ""))
    if problems:
        shown = problems[:8] + ([f"... {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise EvalError(f"{prefix}: not StackGAN's Inception-v3 checkpoint layout ({logits[0]} logits):\n  - "
                        + "\n  - ".join(shown))
    return prefix, int(logits[0])


def read_checkpoint(path: str) -> tuple[str, dict[str, np.ndarray]]:
    """(checkpoint prefix, name -> float32 array of every variable StackGAN restores, the averaged
    values, keyed by the variables' own names). Raises EvalError as `check_checkpoint`."""
    prefix, num_logits = check_checkpoint(path)
    reader = tf.train.load_checkpoint(prefix)
    return prefix, {name: reader.get_tensor(f"{name}/{EMA}").astype(np.float32)
                    for name in expected_variables(num_logits)}


def load_into(model: StackGANInceptionV3, values: dict[str, np.ndarray]) -> None:
    """Copy a `read_checkpoint` dict into the network, by the original names."""
    for scope, layer in model.convs.items():
        layer.conv.kernel.assign(values[f"{scope}/weights"])
        layer.bn.beta.assign(values[f"{scope}/BatchNorm/beta"])
        layer.bn.moving_mean.assign(values[f"{scope}/BatchNorm/moving_mean"])
        layer.bn.moving_variance.assign(values[f"{scope}/BatchNorm/moving_variance"])
    model.logits.kernel.assign(values[f"{LOGITS}/weights"])
    model.logits.bias.assign(values[f"{LOGITS}/biases"])


def to_uint8(images) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255] as AttnGAN-style code saves a generated picture
    ((x + 1) * 127.5, truncated), with 1e-3 of slack so that an image that came from an 8-bit
    file gets its exact values back instead of one level less from float rounding."""
    x = (np.asarray(images, np.float32) + 1.0) * 127.5
    return np.clip(np.floor(x + 1e-3), 0, 255).astype(np.uint8)


class StackGANInception:
    """Class probabilities of StackGAN's fine-tuned Inception, from its TF1 checkpoint.

    `StackGANInception(path)(images)` takes float [N, H, W, 3] in [-1, 1] (the generator's range)
    and returns (None, probabilities float64 [N, num_classes]) as the IS metric's other
    classifiers do (no features). num_classes = the checkpoint's logits - 1 (50 for CUB, 20 for
    flowers). Raises EvalError (see `read_checkpoint`)."""

    source = "StackGAN fine-tuned Inception-v3 (TF1 checkpoint)"

    def __init__(self, path: str):
        self.path, values = read_checkpoint(path)
        num_logits = values[f"{LOGITS}/biases"].shape[0]
        self.num_classes = num_logits - 1
        self.model = StackGANInceptionV3(num_logits)
        self.model(tf.zeros([1, 75, 75, 3]))  # creates the variables (75 px: the smallest valid input)
        load_into(self.model, values)
        self._logits = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    @staticmethod
    def preprocess(images) -> np.ndarray:
        """float [-1, 1] [N, H, W, 3] -> float32 [N, 299, 299, 3] in [-1, 1] as StackGAN's script
        prepares a picture file: 8 bits (`to_uint8`), a bilinear resize to 299x299 of the 8-bit
        picture by Pillow (what scipy.misc.imresize called) giving 8 bits again, / 127.5 - 1."""
        from PIL import Image

        pictures = to_uint8(images)
        out = np.empty((len(pictures), SIZE, SIZE, 3), np.float32)
        for i, picture in enumerate(pictures):
            out[i] = np.asarray(Image.fromarray(picture).resize((SIZE, SIZE), Image.BILINEAR), np.float32)
        return out / 127.5 - 1.0

    def logits(self, x) -> np.ndarray:
        """Preprocessed float32 [N, 299, 299, 3] -> logits float32 [N, num_classes + 1]."""
        return self._logits(tf.constant(x, tf.float32)).numpy()

    def probabilities(self, images) -> np.ndarray:
        """float [-1, 1] [N, H, W, 3] -> float64 [N, num_classes]: softmax over logits 1.. (the
        background logit 0 dropped before the softmax, as StackGAN's script does)."""
        logits = self.logits(self.preprocess(images)).astype(np.float64)[:, 1:]
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def __call__(self, images):
        return None, self.probabilities(images)
