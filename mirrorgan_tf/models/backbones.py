"""Image backbones for the DAMSM image encoder and STREAM's encoder.

Published configuration: frozen ImageNet networks, Inception-v3 for DAMSM and ResNet-152 for STREAM.
Their weights are named by the config keys `damsm.backbone_weights` / `stream.backbone_weights`:

- `imagenet`: `keras.applications`' own ImageNet weights, downloaded once by Keras into its cache
  (`~/.keras/models`, or `$KERAS_HOME/models`), exactly as `keras.applications` does for any user;
- a local Keras weights file (`.h5`, `.weights.h5`) for `keras.applications`' network;
- a PyTorch state dict (`.pth`, `.pt`, `.pth.tar`, `.ckpt`) of torchvision's ImageNet ResNet-152 or
  Inception-v3 (the files the original MirrorGAN / AttnGAN code builds on). torchvision lays these
  networks out differently from `keras.applications` (see `torchvision_resnet152` and
  `torchvision_inception_v3`), so such a file is loaded into a Keras network of torchvision's
  layout, written here;
- `random`: untrained weights, only for tests and parameter counts. A training stage must refuse
  it (`require_pretrained_backbone`): a frozen random backbone gives features that never improve.
- `random:torchvision`: untrained weights in torchvision's layout. Like `random`, for building a
  network that a checkpoint then restores whole (`restore_only`): no file, no download.

For small datasets such as `shapes`: a small CNN trained from scratch (`SmallCNN`).
"""

from __future__ import annotations

import os
import socket

import keras
import numpy as np
from keras import layers, ops

from mirrorgan_tf.errors import MirrorganError
from mirrorgan_tf.models.layers import LayerSequence, batch_norm, conv
from mirrorgan_tf.weights import torch_io

IMAGENET = "imagenet"
RANDOM = "random"
RANDOM_TORCHVISION = "random:torchvision"

# The file names keras.applications gives its ImageNet weights (include_top=False) in its cache.
KERAS_IMAGENET_FILES = {
    "InceptionV3": "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "ResNet152": "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5",
}
KERAS_IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
# Keras' download (urllib) has no timeout of its own: a network that drops packets instead of
# refusing them would hang the start of training. A socket that stays silent this long fails.
DOWNLOAD_TIMEOUT_S = 60.0

# torchvision's input normalisation for its ImageNet ResNets: RGB in [0, 1], then per channel.
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)


class BackboneWeightsError(MirrorganError, ValueError):
    """A `*.backbone_weights` value that cannot give a pretrained backbone (message names the key)."""


def _ways_to_fix(key: str) -> str:
    return (f"set {key} to `imagenet` (Keras downloads its ImageNet weights once into "
            f"{keras_cache_dir()}), to a local Keras weights file (.h5), or to a torchvision ImageNet "
            f"state dict (.pth, needs pip install -e \".[torch]\"); `random` only for tests and parameter counts")


def keras_cache_dir() -> str:
    """The folder where `keras.utils.get_file` keeps downloaded model weights: `$KERAS_HOME/models`
    (default `~/.keras/models`), or `/tmp/.keras/models` when that is not writable, as Keras does."""
    try:
        from keras.src.backend.config import keras_home  # what get_file itself uses (private accessor)
        home = keras_home()
    except ImportError:
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    home = os.path.expanduser(home)
    if os.path.isdir(home) and not os.access(home, os.W_OK):
        home = os.path.join("/tmp", ".keras")
    return os.path.join(home, "models")


def weights_kind(value: str, key: str) -> str:
    """Classifies a `backbone_weights` value: 'imagenet', 'random', 'random:torchvision', 'torch' (a
    PyTorch state dict) or 'keras' (a Keras weights file). Files must exist.

    Raises:
      BackboneWeightsError: empty value (names `key` and the ways to fix it).
      FileNotFoundError: a file path that does not exist (names `key` and the path).
    """
    if value is None or str(value).strip() == "":
        raise BackboneWeightsError(f"{key} is empty: a frozen ImageNet backbone would run on random weights; "
                                   + _ways_to_fix(key))
    value = str(value)
    if value in (IMAGENET, RANDOM, RANDOM_TORCHVISION):
        return value
    if not os.path.isfile(value):
        raise FileNotFoundError(f"{key}={value}: weights file not found (or {_ways_to_fix(key)})")
    return "torch" if torch_io.is_torch_file(value) else "keras"


def require_pretrained_backbone(key: str, value: str) -> None:
    """For a training stage to call before its first step when its frozen backbone is an ImageNet
    network (damsm.backbone inception_v3, stream.backbone resnet152; not the small CNN, which trains).

    Raises:
      BackboneWeightsError: `value` is empty or `random`; the message names `key` and the ways to fix it.
      FileNotFoundError: `value` is a file path that does not exist.
    """
    if weights_kind(value, key) in (RANDOM, RANDOM_TORCHVISION):
        raise BackboneWeightsError(f"{key}=random: the frozen ImageNet backbone would train on random weights "
                                   f"and its features would never improve; " + _ways_to_fix(key))


def restore_only(value: str) -> str:
    """The `backbone_weights` value that builds the same layout as `value` with untrained weights,
    for a network whose checkpoint holds every backbone weight: `random:torchvision` for a PyTorch
    file (named by its suffix; the file need not exist any more), `random` for everything else
    (`imagenet`, a Keras file, `random`, empty)."""
    value = "" if value is None else str(value)
    return RANDOM_TORCHVISION if value == RANDOM_TORCHVISION or torch_io.is_torch_file(value) else RANDOM


def _keras_application(builder, name: str, value: str, key: str, **kwargs) -> keras.Model:
    """keras.applications.<name> with weights `imagenet` (Keras' own download and cache), a local
    Keras file, or None for `random`."""
    kind = weights_kind(value, key)
    if kind != IMAGENET:
        return builder(weights=None if kind == RANDOM else value, **kwargs)
    target = os.path.join(keras_cache_dir(), KERAS_IMAGENET_FILES[name])
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return builder(weights=IMAGENET, **kwargs)
    except Exception as e:
        if os.path.isfile(target):
            raise  # the download worked: what failed is not the download
        raise BackboneWeightsError(
            f"{key}=imagenet: Keras could not download {KERAS_IMAGENET_FILES[name]} ({e}). Without network "
            f"access, copy that file by hand into the Keras cache folder {keras_cache_dir()} (from "
            f"{KERAS_IMAGENET_URL}), or set {key} to a local weights file") from e
    finally:
        socket.setdefaulttimeout(previous)


def inception_v3_regions_and_code(weights: str, config_key: str = "damsm.backbone_weights") -> keras.Model:
    """Frozen Inception-v3: 299 x 299 RGB images in [-1, 1] ->
    (Mixed_6e regions float [B, 17, 17, 768], Mixed_7c average-pooled float [B, 2048]).

    `weights` as in the module docstring. Keras' own InceptionV3 for `imagenet`, a Keras file and
    `random`; torchvision's layout for a `.pth` file. Both layouts take [-1, 1] inputs. The returned
    model's `input_convention` is 'inception' either way, its `layout` 'keras' or 'torchvision'.
    Raises BackboneWeightsError / FileNotFoundError (see `weights_kind`), ImportError without torch.
    """
    kind = weights_kind(weights, config_key)
    if kind in ("torch", RANDOM_TORCHVISION):
        model = torchvision_inception_v3()
        if kind == "torch":
            load_torch_state_dict(model, torch_io.read_state_dict(weights, config_key), weights)
    else:
        base = _keras_application(keras.applications.InceptionV3, "InceptionV3", weights, config_key,
                                  include_top=False, input_shape=(299, 299, 3))
        regions = base.get_layer("mixed7").output  # Keras' name for Mixed_6e
        code = layers.GlobalAveragePooling2D()(base.get_layer("mixed10").output)  # Mixed_7c
        model = keras.Model(base.input, [regions, code], name="inception_v3")
        model.layout = "keras"
    model.input_convention = "inception"
    model.trainable = False
    return model


def resnet152_code(weights: str, config_key: str = "stream.backbone_weights") -> keras.Model:
    """Frozen ResNet-152: 224 x 224 images, normalised as `imagenet_normalize(x, model.input_convention)`
    says -> average-pooled code float [B, 2048].

    Keras' ResNet152 ('caffe' inputs: BGR, ImageNet means subtracted, 0-255) for `imagenet`, a Keras
    file and `random`; torchvision's layout ('torch' inputs: RGB in [0, 1], then ImageNet mean / std)
    for a `.pth` file. Raises as `inception_v3_regions_and_code`.
    """
    kind = weights_kind(weights, config_key)
    if kind in ("torch", RANDOM_TORCHVISION):
        model = torchvision_resnet152()
        if kind == "torch":
            load_torch_state_dict(model, torch_io.read_state_dict(weights, config_key), weights)
        model.input_convention = "torch"
    else:
        model = _keras_application(keras.applications.ResNet152, "ResNet152", weights, config_key,
                                   include_top=False, input_shape=(224, 224, 3), pooling="avg")
        model.layout = "keras"
        model.input_convention = "caffe"
    model.trainable = False
    return model


def imagenet_normalize(images, convention: str):
    """RGB images in [-1, 1], float [B, H, W, 3] -> the input an ImageNet backbone was trained on:
    'caffe' (Keras' ResNets: BGR, 0-255 minus the ImageNet channel means), 'torch' (torchvision:
    [0, 1] minus mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225)), or
    'inception' ([-1, 1], unchanged)."""
    if convention == "inception":
        return images
    if convention == "caffe":
        return keras.applications.resnet.preprocess_input((images + 1.0) * 127.5)
    if convention == "torch":
        mean = ops.convert_to_tensor(np.asarray(TORCHVISION_MEAN, "float32"), dtype=images.dtype)
        std = ops.convert_to_tensor(np.asarray(TORCHVISION_STD, "float32"), dtype=images.dtype)
        return ((images + 1.0) * 0.5 - mean) / std
    raise ValueError(f"input convention must be 'caffe', 'torch' or 'inception', got {convention!r}")


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] bilinear weights with corner pixels aligned: output i samples input
    i * (n_in - 1) / (n_out - 1), PyTorch's `align_corners=True` (its only mode before 0.4)."""
    m = np.zeros((n_out, n_in), np.float32)
    # Source positions in float32 arithmetic, as PyTorch's CPU kernel computes them for float images.
    scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0.0)
    for i in range(n_out):
        src = np.float32(i) * scale
        lo = min(int(np.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = np.float32(src - np.float32(lo))
        m[i, lo] += 1.0 - frac
        m[i, hi] += frac
    return m


def resize_bilinear(images, size: int, align_corners: bool = False):
    """Bilinear resize of float images [B, H, W, C] to [B, size, size, C], no antialiasing.

    align_corners=False: half-pixel centres (`ops.image.resize`; PyTorch >= 0.4's
    `F.interpolate(mode="bilinear", align_corners=False)`, its default). align_corners=True: PyTorch
    0.3's `nn.Upsample(mode="bilinear")`, which the released AttnGAN / MirrorGAN code ran with; needs
    static H and W. Images already at the size pass through unchanged.
    """
    h, w = images.shape[1], images.shape[2]
    if h == size and w == size:
        return images
    if not align_corners:
        return ops.image.resize(images, (size, size), interpolation="bilinear", antialias=False)
    if h is None or w is None:
        raise ValueError("resize_bilinear(align_corners=True) needs images of static height and width")
    ry = ops.convert_to_tensor(_align_corners_matrix(h, size), dtype=images.dtype)
    rx = ops.convert_to_tensor(_align_corners_matrix(w, size), dtype=images.dtype)
    return ops.einsum("pw,bhwc->bhpc", rx, ops.einsum("oh,bhwc->bowc", ry, images))


# ---------------------------------------------------------------------------------------------
# Keras networks of torchvision's layouts. Layer names are torchvision's module paths, so a
# state dict maps onto them key by key (`load_torch_state_dict`). Padding is PyTorch's symmetric
# zero padding written out (ZeroPadding2D, then a 'valid' convolution or pooling), never TF's
# 'same', which pads stride-2 layers asymmetrically.

def _pad(x, padding, name):
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return layers.ZeroPadding2D((ph, pw), name=name)(x) if (ph or pw) else x


def _conv(x, filters, kernel, name, stride=1, padding=0):
    x = _pad(x, padding, f"{name}.pad")
    return layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False, name=name)(x)


def _bn(x, name, eps):
    # Affine BatchNorm with PyTorch's eps; momentum is irrelevant: the network is frozen.
    return layers.BatchNormalization(epsilon=eps, name=name)(x)


def _basic_conv(x, filters, kernel, name, stride=1, padding=0):
    """torchvision's Inception BasicConv2d: conv (no bias) -> affine BatchNorm (eps 0.001) -> ReLU."""
    x = _conv(x, filters, kernel, f"{name}.conv", stride, padding)
    return layers.ReLU(name=f"{name}.relu")(_bn(x, f"{name}.bn", 1e-3))


def _avg_pool_counting_padding(x, name):
    """3x3 stride-1 average pooling with padding 1 that divides by 9 at the borders too, as PyTorch's
    avg_pool2d(count_include_pad=True) does (TF's 'same' pooling divides by the real pixels only)."""
    return layers.AveragePooling2D(3, strides=1, padding="valid", name=name)(_pad(x, 1, f"{name}.pad"))


def _cat(xs, name):
    return layers.Concatenate(axis=-1, name=name)(xs)


def _inception_a(x, name, pool_features):
    b1 = _basic_conv(x, 64, 1, f"{name}.branch1x1")
    b5 = _basic_conv(_basic_conv(x, 48, 1, f"{name}.branch5x5_1"), 64, 5, f"{name}.branch5x5_2", padding=2)
    d = _basic_conv(x, 64, 1, f"{name}.branch3x3dbl_1")
    d = _basic_conv(d, 96, 3, f"{name}.branch3x3dbl_2", padding=1)
    d = _basic_conv(d, 96, 3, f"{name}.branch3x3dbl_3", padding=1)
    p = _basic_conv(_avg_pool_counting_padding(x, f"{name}.avgpool"), pool_features, 1, f"{name}.branch_pool")
    return _cat([b1, b5, d, p], name)


def _inception_b(x, name):
    b3 = _basic_conv(x, 384, 3, f"{name}.branch3x3", stride=2)
    d = _basic_conv(x, 64, 1, f"{name}.branch3x3dbl_1")
    d = _basic_conv(d, 96, 3, f"{name}.branch3x3dbl_2", padding=1)
    d = _basic_conv(d, 96, 3, f"{name}.branch3x3dbl_3", stride=2)
    p = layers.MaxPooling2D(3, strides=2, name=f"{name}.maxpool")(x)
    return _cat([b3, d, p], name)


def _inception_c(x, name, c7):
    b1 = _basic_conv(x, 192, 1, f"{name}.branch1x1")
    b7 = _basic_conv(x, c7, 1, f"{name}.branch7x7_1")
    b7 = _basic_conv(b7, c7, (1, 7), f"{name}.branch7x7_2", padding=(0, 3))
    b7 = _basic_conv(b7, 192, (7, 1), f"{name}.branch7x7_3", padding=(3, 0))
    d = _basic_conv(x, c7, 1, f"{name}.branch7x7dbl_1")
    for i, (filters, kernel, pad) in enumerate([(c7, (7, 1), (3, 0)), (c7, (1, 7), (0, 3)),
                                                (c7, (7, 1), (3, 0)), (192, (1, 7), (0, 3))], start=2):
        d = _basic_conv(d, filters, kernel, f"{name}.branch7x7dbl_{i}", padding=pad)
    p = _basic_conv(_avg_pool_counting_padding(x, f"{name}.avgpool"), 192, 1, f"{name}.branch_pool")
    return _cat([b1, b7, d, p], name)


def _inception_d(x, name):
    b3 = _basic_conv(_basic_conv(x, 192, 1, f"{name}.branch3x3_1"), 320, 3, f"{name}.branch3x3_2", stride=2)
    b7 = _basic_conv(x, 192, 1, f"{name}.branch7x7x3_1")
    b7 = _basic_conv(b7, 192, (1, 7), f"{name}.branch7x7x3_2", padding=(0, 3))
    b7 = _basic_conv(b7, 192, (7, 1), f"{name}.branch7x7x3_3", padding=(3, 0))
    b7 = _basic_conv(b7, 192, 3, f"{name}.branch7x7x3_4", stride=2)
    p = layers.MaxPooling2D(3, strides=2, name=f"{name}.maxpool")(x)
    return _cat([b3, b7, p], name)


def _inception_e(x, name):
    b1 = _basic_conv(x, 320, 1, f"{name}.branch1x1")
    a = _basic_conv(x, 384, 1, f"{name}.branch3x3_1")
    a = _cat([_basic_conv(a, 384, (1, 3), f"{name}.branch3x3_2a", padding=(0, 1)),
              _basic_conv(a, 384, (3, 1), f"{name}.branch3x3_2b", padding=(1, 0))], f"{name}.branch3x3")
    d = _basic_conv(x, 448, 1, f"{name}.branch3x3dbl_1")
    d = _basic_conv(d, 384, 3, f"{name}.branch3x3dbl_2", padding=1)
    d = _cat([_basic_conv(d, 384, (1, 3), f"{name}.branch3x3dbl_3a", padding=(0, 1)),
              _basic_conv(d, 384, (3, 1), f"{name}.branch3x3dbl_3b", padding=(1, 0))], f"{name}.branch3x3dbl")
    p = _basic_conv(_avg_pool_counting_padding(x, f"{name}.avgpool"), 192, 1, f"{name}.branch_pool")
    return _cat([b1, a, d, p], name)


def torchvision_inception_v3() -> keras.Model:
    """Inception-v3 as torchvision lays it out (Szegedy et al. 2016), up to Mixed_7c, untrained.

    299 x 299 RGB in [-1, 1] (torchvision's `transform_input` maps its normalised inputs to this
    range; AttnGAN feeds [-1, 1] images directly) -> (Mixed_6e float [B, 17, 17, 768], Mixed_7c
    average-pooled float [B, 2048]). Differs from keras.applications.InceptionV3 in its affine
    BatchNorm (eps 0.001; Keras' has no gamma) and its branch-pool average pooling, which counts
    the zero padding. Layer names are torchvision's module paths; the auxiliary classifier and
    `fc` are left out.
    """
    inputs = keras.Input((299, 299, 3), name="images")
    x = _basic_conv(inputs, 32, 3, "Conv2d_1a_3x3", stride=2)
    x = _basic_conv(x, 32, 3, "Conv2d_2a_3x3")
    x = _basic_conv(x, 64, 3, "Conv2d_2b_3x3", padding=1)
    x = layers.MaxPooling2D(3, strides=2, name="maxpool1")(x)
    x = _basic_conv(x, 80, 1, "Conv2d_3b_1x1")
    x = _basic_conv(x, 192, 3, "Conv2d_4a_3x3")
    x = layers.MaxPooling2D(3, strides=2, name="maxpool2")(x)
    x = _inception_a(x, "Mixed_5b", 32)
    x = _inception_a(x, "Mixed_5c", 64)
    x = _inception_a(x, "Mixed_5d", 64)
    x = _inception_b(x, "Mixed_6a")
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        x = _inception_c(x, name, c7)
    regions = x
    x = _inception_e(_inception_e(_inception_d(x, "Mixed_7a"), "Mixed_7b"), "Mixed_7c")
    code = layers.GlobalAveragePooling2D(name="avgpool")(x)
    model = keras.Model(inputs, [regions, code], name="inception_v3")
    model.layout = "torchvision"
    return model


def _bottleneck(x, name, planes, stride):
    """torchvision's Bottleneck: 1x1 -> 3x3 (carrying the stride, padding 1) -> 1x1 (4 x planes),
    each conv bias-free with BatchNorm (eps 1e-5); a projection shortcut where the shape changes."""
    shortcut = x
    if stride != 1 or x.shape[-1] != 4 * planes:
        shortcut = _conv(x, 4 * planes, 1, f"{name}.downsample.0", stride)
        shortcut = _bn(shortcut, f"{name}.downsample.1", 1e-5)
    y = layers.ReLU(name=f"{name}.relu1")(_bn(_conv(x, planes, 1, f"{name}.conv1"), f"{name}.bn1", 1e-5))
    y = _conv(y, planes, 3, f"{name}.conv2", stride, padding=1)
    y = layers.ReLU(name=f"{name}.relu2")(_bn(y, f"{name}.bn2", 1e-5))
    y = _bn(_conv(y, 4 * planes, 1, f"{name}.conv3"), f"{name}.bn3", 1e-5)
    return layers.ReLU(name=f"{name}.relu")(layers.Add(name=f"{name}.add")([y, shortcut]))


def torchvision_resnet152() -> keras.Model:
    """ResNet-152 as torchvision lays it out, untrained: 224 x 224 inputs normalised the 'torch'
    way (`imagenet_normalize`) -> average-pooled float [B, 2048].

    torchvision's ResNet is "v1.5": the stride of a downsampling block sits on its 3x3 convolution
    (keras.applications.ResNet152 puts it on the first 1x1, and gives its convolutions biases).
    The 7x7 stem and the 3x3 max pooling pad by 3 and 1 on each side (zero padding before the
    max pooling equals PyTorch's -inf padding: its input is a ReLU output, >= 0).
    """
    inputs = keras.Input((224, 224, 3), name="images")
    x = _bn(_conv(inputs, 64, 7, "conv1", stride=2, padding=3), "bn1", 1e-5)
    x = layers.ReLU(name="relu")(x)
    x = layers.MaxPooling2D(3, strides=2, name="maxpool")(_pad(x, 1, "maxpool.pad"))
    for i, (blocks, planes) in enumerate(zip((3, 8, 36, 3), (64, 128, 256, 512))):
        for j in range(blocks):
            x = _bottleneck(x, f"layer{i + 1}.{j}", planes, 2 if (i > 0 and j == 0) else 1)
    code = layers.GlobalAveragePooling2D(name="avgpool")(x)
    model = keras.Model(inputs, code, name="resnet152")
    model.layout = "torchvision"
    return model


# nn.Sequential(*list(resnet152.children())[:-1]) (the show-and-tell encoder the STREAM captioner
# follows) numbers torchvision's top-level modules; these are their names.
_RESNET_SEQUENTIAL = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def _canonical_keys(state: dict, model: keras.Model) -> dict:
    """Renames ResNet keys numbered `<prefix>N.` as nn.Sequential numbers them to torchvision's
    names, when the model is a ResNet and the file has no `conv1.weight`; other keys pass unchanged."""
    if model.name != "resnet152" or "conv1.weight" in state:
        return state
    stems = [k for k, v in state.items() if k.endswith("0.weight") and v.shape == (64, 3, 7, 7)]
    if len(stems) != 1:
        return state
    prefix = stems[0][: -len("0.weight")]
    out = {}
    for k, v in state.items():
        head, _, rest = k[len(prefix):].partition(".")
        known = k.startswith(prefix) and head in _RESNET_SEQUENTIAL
        out[f"{_RESNET_SEQUENTIAL[head]}.{rest}" if known else k] = v
    return out


def load_torch_state_dict(model: keras.Model, state: dict, source: str = "state dict") -> list[str]:
    """Copies a torchvision state dict ({key: NumPy array}, `torch_io.read_state_dict`) into a network
    built by `torchvision_inception_v3` / `torchvision_resnet152`.

    Conv weights go from [out, in, kh, kw] to [kh, kw, in, out]; BatchNorm's weight, bias,
    running_mean, running_var become gamma, beta, moving_mean, moving_variance. Keys of parts the
    project does not use (fc, AuxLogits, num_batches_tracked, a DAMSM projection) are ignored.
    ResNet keys numbered as `nn.Sequential(*children[:-1])` (`resnet.0.weight`, ...) are accepted.

    Returns: the keys of `state` that were not used.
    Raises: ValueError naming `source` and the keys that are missing or have the wrong shape.
    """
    state = _canonical_keys(state, model)
    used, missing, wrong = set(), [], []

    def take(key, expected_shape, convert=lambda a: a):
        if key not in state:
            missing.append(key)
            return None
        value = convert(state[key])
        if tuple(value.shape) != tuple(expected_shape):
            wrong.append(f"{key}: {tuple(state[key].shape)} does not give {tuple(expected_shape)}")
            return None
        used.add(key)
        return value

    assignments = []
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            names = ["weight"] + (["bias"] if layer.use_bias else [])
            converts = [torch_io.conv2d_kernel, lambda a: a]
        elif isinstance(layer, layers.BatchNormalization):
            names = [n for n, on in (("weight", layer.scale), ("bias", layer.center)) if on]
            names += ["running_mean", "running_var"]
            converts = [lambda a: a] * 4
        elif isinstance(layer, layers.Dense):
            names, converts = ["weight", "bias"][: 1 + int(layer.use_bias)], [torch_io.dense_kernel, lambda a: a]
        else:
            continue
        values = [take(f"{layer.name}.{n}", w.shape, c) for n, w, c in zip(names, layer.weights, converts)]
        assignments.append((layer, values))
    if missing or wrong:
        problems = ([f"{len(missing)} missing keys, e.g. {missing[:4]}"] if missing else []) + wrong[:4]
        raise ValueError(f"{source} does not hold torchvision's {model.name} (layout torchvision): "
                         + "; ".join(problems))
    for layer, values in assignments:
        layer.set_weights(values)
    return [k for k in state if k not in used]


class SmallCNN(keras.Model):
    """Four stride-2 conv3x3 + BN + LeakyReLU blocks (width, 2, 4, 8 x width). Returns the
    stride-8 map (regions) and the average-pooled stride-16 map (global code).

    The image gets two coordinate channels (x and y in [-1, 1]) before the first conv. Average
    pooling makes a plain CNN's code blind to where things are, and on `shapes` the captions name
    the position: without them the 128 px STREAM captioner could not tell left from right, gave
    the generator no gradient for it, and generated positions stayed at chance (measured)."""

    def __init__(self, width: int, name: str = "cnn", sync_batch_norm: bool = False, **kwargs):
        super().__init__(name=name, **kwargs)
        self.blocks = LayerSequence(self, "block", [
            keras.Sequential([conv(width * 2**i, 3, strides=2), batch_norm(sync_batch_norm=sync_batch_norm),
                              layers.LeakyReLU(0.2)],
                             name=f"block{i + 1}") for i in range(4)])
        self.pool = layers.GlobalAveragePooling2D()

    def call(self, images, training=None):
        shape = ops.shape(images)
        ys = ops.linspace(-1.0, 1.0, shape[1])
        xs = ops.linspace(-1.0, 1.0, shape[2])
        grid = ops.stack(ops.meshgrid(xs, ys, indexing="xy"), axis=-1)  # [H, W, 2]: (x, y)
        grid = ops.broadcast_to(ops.cast(grid, images.dtype)[None], (shape[0], shape[1], shape[2], 2))
        x = ops.concatenate([images, grid], axis=-1)
        for block in self.blocks[:3]:
            x = block(x, training=training)
        regions = x
        return regions, self.pool(self.blocks[3](x, training=training))
