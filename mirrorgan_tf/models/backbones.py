"""Image backbones for the DAMSM image encoder and STREAM's encoder.

Published configuration: frozen ImageNet networks from `keras.applications`, whose weights must be
a local file (nothing is downloaded at run time). For small datasets such as `shapes`: a small
CNN trained from scratch.
"""

from __future__ import annotations

import os

import keras
from keras import layers, ops

from mirrorgan_tf.models.layers import LayerSequence, batch_norm, conv


def _weights(path: str, what: str, config_key: str):
    if not path:
        return None  # random weights: fine for counting parameters and for tests, not for training
    if not os.path.exists(path):
        raise FileNotFoundError(f"{config_key}={path}: {what} weights file not found")
    return path


def inception_v3_regions_and_code(weights: str, config_key: str = "damsm.backbone_weights") -> keras.Model:
    """299 x 299 images in [-1, 1] (the Keras InceptionV3 input convention) ->
    (Mixed_6e regions [B, 17, 17, 768], Mixed_7c average-pooled [B, 2048]). Frozen."""
    base = keras.applications.InceptionV3(include_top=False, weights=_weights(weights, "InceptionV3", config_key),
                                          input_shape=(299, 299, 3))
    regions = base.get_layer("mixed7").output  # Keras' name for Mixed_6e
    code = layers.GlobalAveragePooling2D()(base.get_layer("mixed10").output)  # Mixed_7c
    model = keras.Model(base.input, [regions, code], name="inception_v3")
    model.trainable = False
    return model


def resnet152_code(weights: str, config_key: str = "stream.backbone_weights") -> keras.Model:
    """224 x 224 images, preprocessed as keras.applications.resnet expects -> [B, 2048]. Frozen."""
    model = keras.applications.ResNet152(include_top=False, weights=_weights(weights, "ResNet152", config_key),
                                         input_shape=(224, 224, 3), pooling="avg")
    model.trainable = False
    return model


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
