"""DAMSM (AttnGAN's deep attentional multimodal similarity model): the image encoder that STEM
is pretrained against, and its word and sentence losses.

Image encoder: a backbone's region features (Mixed_6e for Inception-v3) -> 1x1 conv (no bias) to
the text dimension D; its global code (Mixed_7c pooled) -> Dense to D. Only the projections train
when the backbone is the frozen Inception-v3; the small CNN backbone trains with them.

Losses, with every caption of the batch against every image:
- word loss: region-word similarities, softmax over words, x gamma1, softmax over regions, giving
  a region context per word; cosine(word, context); R = log sum_words exp(gamma2 cos) (as the
  code: the paper's 1/gamma2 is omitted); scores x gamma3; cross-entropy in both directions;
- sentence loss: cosine(image code, sentence) x gamma3; cross-entropy in both directions.
Pairs of the same class (other than the true pair) are not used as negatives. Class ids < 0 mean
"unknown" and mask nothing.

Optionally (`damsm.word_swap_negatives`, not in AttnGAN) each image also meets its own caption with
one word swapped for a word of another class ("an orange square" -> "an orange circle") as one
more negative in the image -> caption direction of both losses: the hard negatives of NegCLIP
(Yuksekgonul et al., ICLR 2023), which make a contrastive text encoder read each word rather than
guess it from the others. Without them a colour that the training split never pairs with some
shape is enough to tell the captions of a batch apart, and the sentence feature of an unseen
pair lands next to a seen pair of the same colour.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from mirrorgan_tf.models import backbones

_MASKED = -1e9
_EPS = 1e-8  # AttnGAN's cosine_similarity eps


class DamsmImageEncoder(keras.Model):
    """images in [-1, 1], any size -> regions float32 [B, h, w, D], code float32 [B, D].

    Images are resized bilinearly to `image_size`; `align_corners=True` resizes as PyTorch 0.3's
    nn.Upsample did, which the released AttnGAN encoder was trained with (see
    backbones.resize_bilinear)."""

    def __init__(self, embedding_dim: int = 256, backbone: str = "inception_v3", backbone_weights: str = "",
                 image_size: int = 299, cnn_width: int = 32, sync_batch_norm: bool = False,
                 name: str = "damsm_image_encoder", align_corners: bool = False, **kwargs):
        super().__init__(name=name, **kwargs)
        self.image_size = image_size
        self.align_corners = align_corners
        if backbone == "inception_v3":
            if image_size != 299:
                raise ValueError(f"damsm.image_size must be 299 for the inception_v3 backbone, got {image_size}")
            self.backbone = backbones.inception_v3_regions_and_code(backbone_weights)
        elif backbone == "cnn":
            self.backbone = backbones.SmallCNN(cnn_width, sync_batch_norm=sync_batch_norm)
        else:
            raise ValueError(f"damsm.backbone must be 'inception_v3' or 'cnn', got {backbone!r}")
        init = keras.initializers.RandomUniform(-0.1, 0.1)
        self.emb_features = layers.Conv2D(embedding_dim, 1, use_bias=False, kernel_initializer=init,
                                          name="emb_features")
        self.emb_cnn_code = layers.Dense(embedding_dim, kernel_initializer=init, name="emb_cnn_code")

    def call(self, images, training=None):
        x = backbones.resize_bilinear(ops.cast(images, "float32"), self.image_size, self.align_corners)
        frozen = not self.backbone.trainable
        regions, code = self.backbone(x, training=False if frozen else training)
        return (ops.cast(self.emb_features(regions), "float32"),
                ops.cast(self.emb_cnn_code(code), "float32"))


def _negatives_mask(class_ids, batch):
    """bool [B, B]: True where (i, j) must not count as a negative (same known class, i != j)."""
    if class_ids is None:
        return ops.zeros((batch, batch), "bool")
    c = ops.convert_to_tensor(class_ids)
    same = ops.equal(c[:, None], c[None, :]) & (c[:, None] >= 0)
    return same & ~ops.cast(ops.eye(batch), "bool")


def _cross_entropy_both_ways(scores, class_ids, hard=None, hard_weight=None):
    """scores [B images, B captions] -> (image->caption loss, caption->image loss), batch means.
    hard [B] (optional): the score of each image against its own hard negative caption, one more
    column of the image->caption direction; hard_weight [B] 1.0 where that negative exists, 0.0
    where it does not (the column is masked there)."""
    b = ops.shape(scores)[0]
    scores = ops.where(_negatives_mask(class_ids, b), _MASKED, scores)
    labels = ops.arange(b)
    rows = scores
    if hard is not None:
        column = ops.where(ops.cast(hard_weight, "float32") > 0, ops.cast(hard, "float32"), _MASKED)
        rows = ops.concatenate([scores, column[:, None]], axis=1)
    loss0 = ops.mean(keras.losses.sparse_categorical_crossentropy(labels, rows, from_logits=True))
    loss1 = ops.mean(keras.losses.sparse_categorical_crossentropy(labels, ops.transpose(scores), from_logits=True))
    return loss0, loss1


def _l2_normalize(x, axis=-1):
    return x / ops.maximum(ops.norm(x, axis=axis, keepdims=True), _EPS)


def sentence_loss(image_code, sentence, class_ids=None, gamma3: float = 10.0, hard_sentence=None,
                  hard_weight=None):
    """image_code [B, D], sentence [B, D] -> (loss0 image->caption, loss1 caption->image), float32
    batch means. hard_sentence [B, D] (optional): each image's own caption with one word swapped,
    a negative of that image only; hard_weight float [B] 1.0 where it exists (see module)."""
    code = _l2_normalize(ops.cast(image_code, "float32"))
    sim = ops.matmul(code, ops.transpose(_l2_normalize(ops.cast(sentence, "float32"))))
    hard = None
    if hard_sentence is not None:
        hard = ops.sum(code * _l2_normalize(ops.cast(hard_sentence, "float32")), axis=-1) * gamma3
    return _cross_entropy_both_ways(sim * gamma3, class_ids, hard, hard_weight)


def _region_context(sim, regions, gamma1: float):
    """AttnGAN's word -> region attention, for any leading axes: sim [..., R, T] region-word
    similarities (masked words at -1e9), regions [..., R, D] (broadcast against sim's leading axes)
    -> context [..., T, D] (each word's region context), attention [..., T, R]: a softmax over the
    words for each region, then (x gamma1) a softmax over the regions for each word."""
    attn = ops.softmax(sim, axis=-1)
    attn = ops.softmax(ops.swapaxes(attn, -1, -2) * gamma1, axis=-1)
    return ops.matmul(attn, regions), attn


def _match(context, words, mask, gamma2: float):
    """R = log sum over the caption's words of exp(gamma2 x cos(word, its context)): context and
    words [..., T, D], mask [..., T] -> float32 [...]; masked words add exp(-huge) = 0."""
    cos = ops.sum(_l2_normalize(context) * _l2_normalize(words), axis=-1)
    return ops.logsumexp(ops.where(mask, cos, _MASKED) * gamma2, axis=-1)


def _flat_regions(regions):
    regions = ops.cast(regions, "float32")
    b, h, w = ops.shape(regions)[0], ops.shape(regions)[1], ops.shape(regions)[2]
    return ops.reshape(regions, (b, h * w, regions.shape[-1]))


def word_attention(regions, words, mask, gamma1: float = 4.0):
    """Every caption i against every image j.
    regions [B, h, w, D], words [B, T, D], mask [B, T] ->
    context [Bi, Bj, T, D] (each word's region context), attention [Bi, Bj, T, h*w]."""
    r = _flat_regions(regions)
    sim = ops.einsum("jrd,itd->ijrt", r, ops.cast(words, "float32"))  # caption i, image j, region r, word t
    return _region_context(ops.where(mask[:, None, None, :], sim, _MASKED), r[None], gamma1)


def word_scores(regions, words, mask, gamma1: float = 4.0, gamma2: float = 5.0):
    """The word-level score R of every caption i on every image j: regions [B, h, w, D], words
    [B, T, D], mask [B, T] -> (float32 [Bi, Bj], attention [Bi, Bj, T, h*w] as `word_attention`)."""
    context, attn = word_attention(regions, words, mask, gamma1)
    return _match(context, ops.cast(words, "float32")[:, None], mask[:, None, :], gamma2), attn


def paired_word_score(regions, words, mask, gamma1: float = 4.0, gamma2: float = 5.0):
    """The word-level score R of caption b on image b only (the diagonal of `word_scores`, without
    the other B - 1 images): regions [B, h, w, D], words [B, T, D], mask [B, T] -> float32 [B]."""
    r, words32 = _flat_regions(regions), ops.cast(words, "float32")
    sim = ops.einsum("brd,btd->brt", r, words32)
    context, _ = _region_context(ops.where(mask[:, None, :], sim, _MASKED), r, gamma1)
    return _match(context, words32, mask, gamma2)


def word_loss(regions, words, mask, class_ids=None, gamma1: float = 4.0, gamma2: float = 5.0,
              gamma3: float = 10.0, hard_words=None, hard_mask=None, hard_weight=None):
    """-> (loss0 image->caption, loss1 caption->image, attention of each caption on its own image
    [B, T, h, w]). hard_words [B, T, D], hard_mask [B, T] (optional): each image's own caption
    with one word swapped, a negative of that image only; hard_weight float [B] 1.0 where it exists."""
    score, attn = word_scores(regions, words, mask, gamma1, gamma2)
    hard = None
    if hard_words is not None:
        hard = paired_word_score(regions, hard_words, hard_mask, gamma1, gamma2) * gamma3
    loss0, loss1 = _cross_entropy_both_ways(ops.transpose(score) * gamma3, class_ids, hard, hard_weight)
    b, h, w = ops.shape(regions)[0], ops.shape(regions)[1], ops.shape(regions)[2]
    own = ops.take_along_axis(attn, ops.reshape(ops.arange(b), (b, 1, 1, 1)), axis=1)[:, 0]
    return loss0, loss1, ops.reshape(own, (b, ops.shape(words)[1], h, w))
