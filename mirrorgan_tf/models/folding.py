"""BatchNorm folded into the convolution before it, for frozen (inference-mode) backbones.

A frozen network's BatchNorm is an affine map per channel: with z = conv(x, K) + b,
    BN(z) = (z - mean) * gamma / sqrt(var + eps) + beta = conv(x, K * s) + (b - mean) * s + beta,
    s = gamma / sqrt(var + eps)
(the standard inference-time fold, e.g. Jacob et al. 2018, "Quantization and training of neural
networks for efficient integer-arithmetic-only inference", section 3.2). Folding removes two
elementwise passes over every BN's activation in the forward pass and one in the backward pass
(STREAM's frozen ResNet-152 is differentiated through in GAN training), and under a mixed policy
it removes Keras' float32 round trip of every BN (Keras upcasts BN inputs to float32).

The fold is computed from the network's *current* variables at every call, so restoring a
checkpoint (or new ImageNet weights) after construction is honoured and checkpoints keep the
original BN variables: nothing about the saved model changes. The cost is one pass over the
conv kernels per call (ResNet-152: 58 M weights), small beside the activations at 224 px.
"""

from __future__ import annotations

import keras
from keras import layers, ops


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return history[0] if history else None


def foldable_pairs(model: keras.Model) -> dict:
    """{BatchNormalization layer: the Conv2D that feeds it} for every BN of a functional `model`
    that can be folded: its input is a Conv2D with a linear activation, channels-last, whose output
    nothing else reads, and the BN normalises the last axis."""
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        if layer.axis not in (-1, 3):
            continue
        conv = _producer(layer._inbound_nodes[0].input_tensors[0])
        if not isinstance(conv, layers.Conv2D) or len(conv._inbound_nodes) != 1:
            continue
        if conv.data_format != "channels_last" or conv.activation is not keras.activations.linear:
            continue
        if len(conv._outbound_nodes) != 1 or conv.groups != 1:
            continue
        pairs[layer] = conv
    return pairs


def folded_kernel_and_bias(conv: layers.Conv2D, bn: layers.BatchNormalization):
    """The fold of `bn` into `conv`, float32: (kernel [kh, kw, in, out], bias [out])."""
    scale = ops.rsqrt(ops.cast(bn.moving_variance, "float32") + bn.epsilon)
    if bn.scale:
        scale = scale * ops.cast(bn.gamma, "float32")
    kernel = ops.cast(conv.kernel, "float32") * scale
    bias = ops.cast(conv.bias, "float32") if conv.use_bias else 0.0
    bias = (bias - ops.cast(bn.moving_mean, "float32")) * scale
    if bn.center:
        bias = bias + ops.cast(bn.beta, "float32")
    return kernel, bias


class FoldedBatchNorm:
    """Call a frozen functional Keras model with its BatchNorms folded into their convolutions.

    `FoldedBatchNorm(model)(x)` equals `model(x, training=False)` up to float rounding (the tests
    hold it within 1e-4 relative on ResNet-152's pooled code). Not a Keras layer on purpose: it
    owns no variables and is invisible to checkpoints; the model keeps its own.

    Raises ValueError if `model` is trainable (a BN in training mode normalises with batch
    statistics, which cannot be folded) or is not a functional model.
    """

    def __init__(self, model: keras.Model):
        if model.trainable:
            raise ValueError(f"{model.name}: only a frozen (trainable=False) model's BatchNorm can be folded")
        if not hasattr(model, "_run_through_graph"):
            raise ValueError(f"{model.name}: BatchNorm folding needs a functional Keras model")
        self.model = model
        self.pairs = foldable_pairs(model)
        self.convs = {conv: bn for bn, conv in self.pairs.items()}

    def __len__(self):
        return len(self.pairs)

    def _folded_conv(self, conv: layers.Conv2D):
        bn = self.convs[conv]

        def call(x, **_):
            kernel, bias = folded_kernel_and_bias(conv, bn)
            dtype = conv.compute_dtype
            y = ops.conv(ops.cast(x, dtype), ops.cast(kernel, dtype), strides=conv.strides, padding=conv.padding,
                         data_format="channels_last", dilation_rate=conv.dilation_rate)
            # Keras' BN hands on its input's dtype (its compute dtype): keep the layer's output dtype.
            return ops.cast(y + ops.cast(bias, dtype), bn.compute_dtype)

        return call

    def _operation(self, op):
        if op in self.convs:
            return self._folded_conv(op)
        if op in self.pairs:
            return lambda x, **_: x
        return op  # called without `training`: any BN left unfolded runs in inference mode

    def __call__(self, x):
        return self.model._run_through_graph([x], operation_fn=self._operation)
