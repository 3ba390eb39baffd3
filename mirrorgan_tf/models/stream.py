"""STREAM, the semantic text regeneration and alignment module: a "show and tell" captioner.

Encoder: a backbone (frozen ImageNet ResNet-152 for CUB/COCO, a small CNN for shapes) -> Dense
-> BatchNorm (PyTorch momentum 0.01, i.e. Keras 0.99). Decoder: the image feature is the first
input step of an LSTM, the caption's words follow (teacher forcing), and a Dense layer gives
logits over STEM's vocabulary. Step t predicts word t; step len predicts the end token (id 0), so
greedy decoding knows when to stop (the released code trains no end token and ships no STREAM
training at all).

In GAN training STREAM is frozen (not trainable) but differentiable: its loss on the generated
image sends gradients into the generator.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from mirrorgan_tf.models import backbones
from mirrorgan_tf.models.folding import FoldedBatchNorm
from mirrorgan_tf.models.layers import batch_norm, lstm


class StreamEncoder(keras.Model):
    """images in [-1, 1], any size -> float32 [B, embedding_dim]. Images are resized bilinearly
    to `image_size` (`align_corners`: as in DamsmImageEncoder)."""

    def __init__(self, embedding_dim: int = 256, backbone: str = "resnet152", backbone_weights: str = "",
                 image_size: int = 224, bn_momentum: float = 0.01, imagenet_normalize: bool = True,
                 cnn_width: int = 32, sync_batch_norm: bool = False, fold_batch_norm: bool | None = None,
                 name: str = "stream_encoder", align_corners: bool = False, **kwargs):
        super().__init__(name=name, **kwargs)
        self.image_size = image_size
        self.align_corners = align_corners
        self.backbone_kind = backbone
        self.imagenet_normalize = imagenet_normalize
        # The frozen ResNet-152 runs with its BatchNorms folded into its convolutions (models/folding.py):
        # the same function, measured 1.2x faster forward + backward under mixed_bfloat16 (Keras
        # upcasts every BN to float32 there). In float32 it measured no faster and keeps 0.23 GB of
        # folded kernels alive for the backward pass, so None (the default) folds only under a
        # mixed policy; True / False force it.
        self._folded = None
        if backbone == "resnet152":
            self.backbone = backbones.resnet152_code(backbone_weights)
            if fold_batch_norm is None:
                fold_batch_norm = self.backbone.compute_dtype != "float32"
            if fold_batch_norm:
                self._folded = FoldedBatchNorm(self.backbone)
        elif backbone == "cnn":
            self.backbone = backbones.SmallCNN(cnn_width, sync_batch_norm=sync_batch_norm)
        else:
            raise ValueError(f"stream.backbone must be 'resnet152' or 'cnn', got {backbone!r}")
        self.linear = layers.Dense(embedding_dim, name="linear")
        self.bn = batch_norm(momentum=1.0 - bn_momentum, gamma_initializer="ones", name="bn",
                             sync_batch_norm=sync_batch_norm)

    def preprocess(self, images):
        x = backbones.resize_bilinear(ops.cast(images, "float32"), self.image_size, self.align_corners)
        if self.backbone_kind == "resnet152" and self.imagenet_normalize:
            # What the backbone's weights were trained with: "caffe" for Keras' ResNet152 (BGR,
            # ImageNet means, 0-255), "torch" for a torchvision file (mean / std on [0, 1]).
            # The released code fed raw [-1, 1] images instead (imagenet_normalize: false).
            x = backbones.imagenet_normalize(x, self.backbone.input_convention)
        return x

    def call(self, images, training=None):
        x = self.preprocess(images)
        if self.backbone_kind == "cnn":
            _, code = self.backbone(x, training=training and self.backbone.trainable)
        elif self._folded is not None and not self.backbone.trainable:
            code = self._folded(x)
        else:
            code = self.backbone(x, training=False)
        return ops.cast(self.bn(self.linear(code), training=training), "float32")


class StreamDecoder(keras.Model):
    def __init__(self, vocab_size: int, embedding_dim: int = 256, hidden_dim: int = 512, max_len: int = 20,
                 xla: bool = False, name: str = "stream_decoder", **kwargs):
        """`xla`: the model will run inside an XLA-compiled step (its LSTM then leaves cuDNN,
        `layers.lstm_use_cudnn`)."""
        super().__init__(name=name, **kwargs)
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.embed = layers.Embedding(vocab_size, embedding_dim, name="embed")
        # The LSTM path follows the precision (layers.lstm_use_cudnn: no cuDNN under bfloat16).
        self.lstm = lstm(hidden_dim, self.dtype_policy.compute_dtype, xla, return_sequences=True, return_state=True,
                         name="lstm")
        self.linear = layers.Dense(vocab_size, name="linear")

    def call(self, features, caption_ids, training=None):
        """Teacher forcing. features [B, E], caption_ids [B, T] -> float32 logits [B, T + 1, V]:
        position t predicts word t, position len the end token."""
        x = ops.concatenate([ops.cast(features, self.embed.compute_dtype)[:, None, :],
                             self.embed(caption_ids)], axis=1)
        hidden, _, _ = self.lstm(x, training=training)
        return ops.cast(self.linear(hidden), "float32")

    def greedy(self, features, max_len=None):
        """features [B, E] -> word ids int32 [B, max_len], 0 after the predicted end."""
        x = ops.cast(features, self.embed.compute_dtype)[:, None, :]
        state = None
        out = []
        for _ in range(max_len or self.max_len):
            hidden, h, c = self.lstm(x, initial_state=state)
            state = [h, c]
            word = ops.cast(ops.argmax(self.linear(hidden[:, 0]), axis=-1), "int32")
            out.append(word)
            x = self.embed(word)[:, None, :]
        ids = ops.stack(out, axis=1)
        ended = ops.cumsum(ops.cast(ops.equal(ids, 0), "int32"), axis=1) > 0
        return ops.where(ended, 0, ids)


def caption_word_losses(logits, caption_ids, caption_len, label_smoothing: float = 0.0):
    """Cross-entropy (nats) of each word and of the end token. logits [B, T + 1, V], caption_ids
    int [B, T], caption_len int [B] (<= T) -> float32 [B, T + 1] >= 0, 0 past the end token.

    label_smoothing eps in [0, 1): the target is (1 - eps) on the word plus eps / V on every entry
    of the vocabulary (Szegedy et al., CVPR 2016, "Rethinking the Inception Architecture", section
    7), so the loss is (1 - eps) CE(word) + eps * mean over the V entries of -log p; 0 = the one-hot
    cross-entropy. Its minimum is above 0 when eps > 0."""
    b = ops.shape(caption_ids)[0]
    targets = ops.concatenate([ops.cast(caption_ids, "int32"), ops.zeros((b, 1), "int32")], axis=1)
    steps = ops.shape(targets)[1]
    valid = ops.cast(ops.arange(steps)[None, :] <= ops.cast(caption_len, "int32")[:, None], "float32")
    logits = ops.cast(logits, "float32")
    ce = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    if label_smoothing:
        # The sparse form keeps [B, T + 1] targets: no one-hot [B, T + 1, V] tensor for COCO's vocabulary.
        uniform = -ops.mean(ops.log_softmax(logits, axis=-1), axis=-1)
        ce = (1.0 - label_smoothing) * ce + label_smoothing * uniform
    return ce * valid


def caption_mean(word_losses, caption_len):
    """Each caption's mean over its caption_len words and its end token: word_losses float32
    [B, T + 1], 0 past the end token (`caption_word_losses`), caption_len int [B] -> float32 [B]."""
    return ops.sum(word_losses, axis=1) / (ops.cast(caption_len, "float32") + 1.0)


def caption_loss(logits, caption_ids, caption_len, label_smoothing: float = 0.0):
    """Per-example mean cross-entropy of the words and the end token. logits [B, T + 1, V],
    caption_ids [B, T], caption_len [B] -> float32 [B]; label_smoothing as `caption_word_losses`."""
    return caption_mean(caption_word_losses(logits, caption_ids, caption_len, label_smoothing), caption_len)
