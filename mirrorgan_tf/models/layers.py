"""Building blocks shared by GLAM and the discriminators, and the reference initialisation.

Images are NHWC. Channel counts are those of the original networks (AttnGAN/MirrorGAN), so the
published configuration has the published parameter counts.
"""

from __future__ import annotations

import keras
from keras import layers, ops

# The reference initialisation (AttnGAN's weights_init): orthogonal kernels, BatchNorm gamma
# drawn from N(1, 0.02), zero biases and betas.
def kernel_init():
    return keras.initializers.Orthogonal()


def batch_norm(name=None, sync_batch_norm: bool = False, **kwargs):
    """BatchNorm as the reference: PyTorch's momentum 0.1 (weight of the new batch) is Keras' 0.9;
    eps 1e-5 as PyTorch. With `sync_batch_norm` the batch statistics are all-reduced across the
    replicas of a tf.distribute strategy, so several replicas normalise exactly as one device
    does on the global batch (Keras' `synchronized=True`)."""
    kwargs.setdefault("gamma_initializer", keras.initializers.RandomNormal(1.0, 0.02))
    return layers.BatchNormalization(momentum=kwargs.pop("momentum", 0.9), epsilon=1e-5,
                                     synchronized=sync_batch_norm, name=name, **kwargs)


def conv(filters, kernel_size, strides=1, use_bias=False, name=None, **kwargs):
    return layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=use_bias,
                         kernel_initializer=kernel_init(), name=name, **kwargs)


def dense(units, use_bias=True, name=None, **kwargs):
    return layers.Dense(units, use_bias=use_bias, kernel_initializer=kernel_init(), name=name, **kwargs)


def lstm_use_cudnn(compute_dtype, xla: bool = False) -> "bool | str":
    """The `use_cudnn` argument of a Keras LSTM computing in `compute_dtype` (a dtype name), run
    inside an XLA-compiled step when `xla`: False under bfloat16 or XLA, else "auto" (cuDNN on a
    GPU, the generic loop elsewhere).

    Why: Keras' TensorFlow backend takes the cuDNN path (CudnnRNNV3) whenever a GPU is visible.
    Under mixed bfloat16 on an NVIDIA H200 the same networks failed to compile through another Keras
    backend ('Unknown output type bfloat16') until their LSTMs were built with use_cudnn=False;
    cuDNN's bfloat16 RNN support depends on the GPU and the cuDNN build, while the generic loop
    runs wherever bfloat16 matmuls do. XLA has no kernel for the cuDNN op (Keras marks a layer
    that took it as not jit-compilable), so a step compiled with XLA needs the generic loop too.
    float32 and float16 outside XLA keep cuDNN. On a CPU the choice changes nothing: the generic
    loop runs either way."""
    return False if str(compute_dtype) == "bfloat16" or xla else "auto"


def lstm(units, compute_dtype, xla: bool = False, **kwargs):
    """keras.layers.LSTM(units, **kwargs) on the path that works for `compute_dtype` and `xla`
    (`lstm_use_cudnn`); same weights and function either way."""
    return layers.LSTM(units, use_cudnn=lstm_use_cudnn(compute_dtype, xla), **kwargs)


def glu(x):
    """Gated linear unit over channels: first half x sigmoid(second half) (Dauphin et al. 2017).
    x [..., 2C] -> [..., C], same dtype.

    The halves come from one split, whose gradient is a single concatenation; two slices would
    each scatter their gradient into a zero tensor of the whole input's size, then add the two
    (measured: that StridedSliceGrad + AddN pair took 4 % of the CUB training step's op time)."""
    value, gate = ops.split(x, 2, axis=-1)
    return value * ops.sigmoid(gate)


class GLU(layers.Layer):
    def call(self, x):
        return glu(x)


class UpBlock(keras.Sequential):
    """Nearest x2 upsampling -> conv3x3 (2 x out) -> BN -> GLU: doubles the size, `out` channels."""

    def __init__(self, out_channels, name=None, sync_batch_norm: bool = False):
        super().__init__([
            layers.UpSampling2D(2, interpolation="nearest"),
            conv(out_channels * 2, 3),
            batch_norm(sync_batch_norm=sync_batch_norm),
            GLU(),
        ], name=name)


class ResBlock(layers.Layer):
    """conv3x3 (C -> 2C) -> BN -> GLU -> conv3x3 (C -> C) -> BN, plus the input."""

    def __init__(self, channels, name=None, sync_batch_norm: bool = False):
        super().__init__(name=name)
        self.body = keras.Sequential([conv(channels * 2, 3), batch_norm(sync_batch_norm=sync_batch_norm), GLU(),
                                      conv(channels, 3), batch_norm(sync_batch_norm=sync_batch_norm)])

    def call(self, x, training=None):
        return x + self.body(x, training=training)


class DownBlock(keras.Sequential):
    """conv4x4 stride 2 -> BN -> LeakyReLU(0.2): halves the size."""

    def __init__(self, out_channels, name=None, sync_batch_norm: bool = False):
        super().__init__([conv(out_channels, 4, strides=2), batch_norm(sync_batch_norm=sync_batch_norm),
                          layers.LeakyReLU(0.2)], name=name)


class Block3x3LeakyReLU(keras.Sequential):
    """conv3x3 -> BN -> LeakyReLU(0.2): keeps the size."""

    def __init__(self, out_channels, name=None, sync_batch_norm: bool = False):
        super().__init__([conv(out_channels, 3), batch_norm(sync_batch_norm=sync_batch_norm),
                          layers.LeakyReLU(0.2)], name=name)


class LayerSequence:
    """Layers kept as numbered attributes (`<prefix>1`, `<prefix>2`, ...) of their owner.

    A Python list of layers on a Keras 3 layer is tracked by Keras but invisible to
    tf.train.Checkpoint, whose object graph follows attributes only; numbered attributes keep
    every weight in checkpoints."""

    def __init__(self, owner, prefix: str, layers_: list):
        self.owner, self.prefix, self.count = owner, prefix, len(layers_)
        for i, layer in enumerate(layers_):
            setattr(owner, f"{prefix}{i + 1}", layer)

    def __iter__(self):
        return (getattr(self.owner, f"{self.prefix}{i + 1}") for i in range(self.count))

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return list(self)[index]


def count_params(weights) -> int:
    return int(sum(int(ops.size(w)) for w in weights))
