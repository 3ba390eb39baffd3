"""Moving PyTorch parameters into Keras layers: the layout rules every converter shares.

A PyTorch state dict here is a plain mapping {key: numpy array} (what `torch_io` reads from a
`.pth` file). `StateDict` hands out tensors by key, checks each one's shape against the Keras
variable it fills, and remembers what was used, so a converter can insist at the end that every
key of the file went somewhere (`finish`): a file of another network, or of another size, fails
with the offending key named instead of loading half a model.

Layout rules (PyTorch -> Keras):
- Conv2d weight [out, in, kh, kw] -> Conv2D kernel [kh, kw, in, out] (NCHW -> NHWC kernels);
- Linear weight [out, in] -> Dense kernel [in, out]; a 1x1 Conv2d applied to a sequence of
  vectors is the same Dense;
- BatchNorm weight / bias / running_mean / running_var -> gamma / beta / moving_mean /
  moving_variance (`num_batches_tracked`, a counter PyTorch >= 0.4 stores, carries no weight);
- LSTM weight_ih [4u, in], weight_hh [4u, u], bias_ih + bias_hh [4u] -> kernel [in, 4u],
  recurrent_kernel [u, 4u], bias [4u]. Both frameworks order the gates input, forget, cell,
  output, so no reordering; PyTorch's two bias vectors only ever appear summed, Keras keeps one.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from mirrorgan_tf.errors import MirrorganError


class WeightImportError(MirrorganError, ValueError):
    """A state dict does not fit the network it is imported into (names the file and the key)."""


class StateDict:
    """A read-once view of a PyTorch state dict with shape checks.

    `state` maps keys to numpy arrays (float arrays are converted to float32); `source` names the
    file in error messages; `prefix` is prepended to every key asked for (e.g. "module." for a
    state dict saved from a DataParallel wrapper)."""

    def __init__(self, state: Mapping[str, np.ndarray], source: str, prefix: str = ""):
        self.state = dict(state)
        self.source = source
        self.prefix = prefix
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return self.prefix + key in self.state

    def get(self, key: str, shape=None) -> np.ndarray:
        full = self.prefix + key
        if full not in self.state:
            near = sorted(k for k in self.state if k.split(".")[0] == full.split(".")[0])[:5]
            raise WeightImportError(f"{self.source}: key '{full}' is missing"
                                    + (f" (keys with that prefix: {near})" if near else ""))
        value = np.asarray(self.state[full])
        if value.dtype.kind == "f":
            value = value.astype("float32")
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise WeightImportError(f"{self.source}: '{full}' has shape {tuple(value.shape)}, "
                                    f"the network needs {tuple(shape)}")
        self.used.add(full)
        return value

    def skip(self, key: str) -> None:
        """Mark a key as deliberately unused (e.g. BatchNorm's num_batches_tracked)."""
        if self.prefix + key in self.state:
            self.used.add(self.prefix + key)

    def finish(self, ignore_prefixes: tuple = ()) -> None:
        """Raise if any key of the file was not used: the file holds more than the network."""
        left = sorted(k for k in self.state if k not in self.used
                      and not any(k.startswith(self.prefix + p) for p in ignore_prefixes))
        if left:
            more = f" and {len(left) - 8} more" if len(left) > 8 else ""
            raise WeightImportError(f"{self.source}: {len(left)} keys fit no part of the network: "
                                    f"{left[:8]}{more}")


def _assign(variable, value: np.ndarray, what: str) -> None:
    if tuple(variable.shape) != tuple(value.shape):
        raise WeightImportError(f"{what}: converted shape {tuple(value.shape)} does not fit "
                                f"{variable.path} {tuple(variable.shape)}")
    variable.assign(value.astype(variable.dtype))


def conv2d(layer, sd: StateDict, key: str) -> None:
    """Conv2d `key`.weight (and `key`.bias if the layer has one) -> Keras Conv2D."""
    kernel = layer.kernel
    kh, kw, cin, cout = kernel.shape
    w = sd.get(key + ".weight", (cout, cin, kh, kw))
    _assign(kernel, w.transpose(2, 3, 1, 0), f"{sd.source}:{key}.weight")
    if layer.use_bias:
        _assign(layer.bias, sd.get(key + ".bias", (cout,)), f"{sd.source}:{key}.bias")


def dense(layer, sd: StateDict, key: str, from_conv1x1: bool = False) -> None:
    """Linear (or a 1x1 Conv2d when `from_conv1x1`) `key` -> Keras Dense."""
    cin, cout = layer.kernel.shape
    w = sd.get(key + ".weight", (cout, cin, 1, 1) if from_conv1x1 else (cout, cin))
    _assign(layer.kernel, w.reshape(cout, cin).T, f"{sd.source}:{key}.weight")
    if layer.use_bias:
        _assign(layer.bias, sd.get(key + ".bias", (cout,)), f"{sd.source}:{key}.bias")


def batch_norm(layer, sd: StateDict, key: str) -> None:
    """BatchNorm1d/2d `key` -> Keras BatchNormalization (epsilons must agree; checked by the
    caller's network definition, 1e-5 for PyTorch's default)."""
    n = layer.moving_mean.shape[0]
    if layer.scale:
        _assign(layer.gamma, sd.get(key + ".weight", (n,)), f"{sd.source}:{key}.weight")
    if layer.center:
        _assign(layer.beta, sd.get(key + ".bias", (n,)), f"{sd.source}:{key}.bias")
    _assign(layer.moving_mean, sd.get(key + ".running_mean", (n,)), f"{sd.source}:{key}.running_mean")
    _assign(layer.moving_variance, sd.get(key + ".running_var", (n,)), f"{sd.source}:{key}.running_var")
    sd.skip(key + ".num_batches_tracked")


def lstm(layer, sd: StateDict, key: str, suffix: str = "_l0") -> None:
    """One direction of a single-layer PyTorch LSTM (`key`.weight_ih<suffix> etc.; suffix
    "_l0_reverse" for the backward direction) -> a Keras LSTM layer."""
    cell = layer.cell
    cin, four_u = cell.kernel.shape
    u = four_u // 4
    w_ih = sd.get(f"{key}.weight_ih{suffix}", (4 * u, cin))
    w_hh = sd.get(f"{key}.weight_hh{suffix}", (4 * u, u))
    bias = sd.get(f"{key}.bias_ih{suffix}", (4 * u,)) + sd.get(f"{key}.bias_hh{suffix}", (4 * u,))
    _assign(cell.kernel, w_ih.T, f"{sd.source}:{key}.weight_ih{suffix}")
    _assign(cell.recurrent_kernel, w_hh.T, f"{sd.source}:{key}.weight_hh{suffix}")
    _assign(cell.bias, bias, f"{sd.source}:{key}.bias_ih{suffix} + bias_hh{suffix}")


def embedding(layer, sd: StateDict, key: str) -> None:
    v, d = layer.embeddings.shape
    _assign(layer.embeddings, sd.get(key + ".weight", (v, d)), f"{sd.source}:{key}.weight")


def torchvision_layout(model, sd: StateDict, prefix: str = "") -> None:
    """A Keras network whose layer names are torchvision module paths (`models.backbones`'
    torchvision layouts) <- the keys `<prefix><layer name>.<param>` of `sd`: every Conv2D and
    BatchNormalization layer (the only weighted layers of those trunks). Shapes are checked."""
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            conv2d(layer, sd, prefix + layer.name)
        elif kind == "BatchNormalization":
            batch_norm(layer, sd, prefix + layer.name)
        elif layer.weights:
            raise WeightImportError(f"{sd.source}: layer {layer.name} ({kind}) of {model.name} has weights "
                                    "but no torchvision counterpart")
