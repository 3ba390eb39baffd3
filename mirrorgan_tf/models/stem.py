"""STEM, the semantic text embedding module (AttnGAN's DAMSM text encoder).

Word ids -> embedding (uniform +-0.1) -> dropout -> one bidirectional LSTM layer. Word features are
the per-step outputs of both directions, zero at padded steps; the sentence feature is the two
directions' final hidden states. Padded steps are masked, so the backward direction starts at a
caption's last real word, as PyTorch's packed sequences do in the original.

Keras' LSTM has one bias vector per gate where PyTorch has two (b_ih and b_hh, which only ever
appear summed), so each direction has 4 x units fewer parameters than the original and computes
the same function.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from mirrorgan_tf.models.layers import lstm


class STEM(keras.Model):
    def __init__(self, vocab_size: int, embedding_dim: int = 256, word_embedding_dim: int = 300,
                 dropout: float = 0.5, xla: bool = False, name: str = "stem", **kwargs):
        """`xla`: the model will run inside an XLA-compiled step (its LSTM then leaves cuDNN,
        `layers.lstm_use_cudnn`)."""
        super().__init__(name=name, **kwargs)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.embedding = layers.Embedding(
            vocab_size, word_embedding_dim,
            embeddings_initializer=keras.initializers.RandomUniform(-0.1, 0.1), name="embedding")
        self.dropout = layers.Dropout(dropout)
        self.rnn = layers.Bidirectional(
            # The LSTM path follows the precision (layers.lstm_use_cudnn: no cuDNN under bfloat16).
            lstm(embedding_dim // 2, self.dtype_policy.compute_dtype, xla, return_sequences=True, return_state=True),
            name="bilstm")

    def call(self, caption_ids, caption_len, training=None):
        """caption_ids int [B, T], caption_len int [B] ->
        words [B, T, D] (0 at padding), sentence [B, D], mask bool [B, T] (True = a word)."""
        steps = ops.shape(caption_ids)[1]
        mask = ops.arange(steps)[None, :] < ops.cast(caption_len, "int32")[:, None]
        x = self.dropout(self.embedding(caption_ids), training=training)
        words, fw_h, _, bw_h, _ = self.rnn(x, mask=mask, training=training)
        words = words * ops.cast(mask, words.dtype)[..., None]
        sentence = ops.concatenate([fw_h, bw_h], axis=-1)
        return words, sentence, mask


TEXT_NORMS = ("none", "rms")


def check_text_norm(how: str) -> str:
    if how not in TEXT_NORMS:
        raise ValueError(f"model.text_norm must be one of {TEXT_NORMS}, got {how!r}")
    return how


def normalize_text(features, how: str):
    """The scale at which STEM's features reach the GAN (`model.text_norm`), along the last axis.

    DAMSM trains STEM through cosine similarities, which ignore a feature's length, so the length
    STEM ends at is arbitrary; ours end near 0.1 per dimension. "none" (the original) hands the
    features on as they are. "rms" rescales each word vector and each sentence vector to unit root
    mean square: the direction DAMSM learned, at the scale of the generator's noise, so that the
    conditioning augmentation's mean, the word attention and the discriminators' sentence input
    are not drowned by unit-variance noise from the first step. Padded (zero) words stay zero."""
    if check_text_norm(how) == "none":
        return features
    # In float32: under mixed_float16 the epsilon underflows and a padded word would give 0 x inf.
    x = ops.cast(features, "float32")
    return ops.cast(x * ops.rsqrt(ops.mean(ops.square(x), axis=-1, keepdims=True) + 1e-8), features.dtype)
