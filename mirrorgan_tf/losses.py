"""MirrorGAN's generator and discriminator losses (AttnGAN's adversarial terms, the KL term of
conditioning augmentation, and the STREAM redescription loss).

All losses are float32 and averaged over the batch they are given. Under a distribution strategy
each replica computes them on its own batch; the training step divides by the number of replicas
(every replica has the same batch size), which gives the global-batch average.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from mirrorgan_tf import data
from mirrorgan_tf.models import damsm, stream


def bce_with_logits(logits, target: float):
    """Per-example binary cross-entropy of logits against a constant label (1 = real)."""
    logits = ops.cast(logits, "float32")
    return keras.losses.binary_crossentropy(ops.full_like(logits, target)[:, None], logits[:, None],
                                            from_logits=True)


def wrong_pairs(sentence, offset: int = 1):
    """The reference's "wrong" pairs within one batch: image i with sentence i + 1, for the first
    B - 1 images. Returns (sentence for each image, weight per image); weights sum to 1.

    The last image is paired with sentence 0 and weight 0 so that the batch keeps its shape (and
    splits evenly across replicas). Unlike the original, which feeds the B - 1 pairs alone, that
    dummy pair takes part in the BatchNorm statistics of the conditional head; its loss does not
    count. `offset` 2 (a batch of same-class pairs, `model.pair_discriminator`): image i with
    sentence i + 2, the last two images weight 0, since sentence i + 1 may describe image i."""
    b = ops.shape(sentence)[0]
    weight = ops.where(ops.arange(b) < b - offset, 1.0 / ops.cast(b - offset, "float32"), 0.0)
    return ops.roll(sentence, -offset, axis=0), weight


def wrong_pairs_across_replicas(sentence, offset: int = 1):
    """`wrong_pairs` of the global batch, this replica's share: under a tf.distribute strategy
    each replica holds B of the N x B pairs, and its image i is paired with sentence i + offset of
    the global batch (the next replica's first sentences for its last images). Call in a replica
    context. sentence [B, D] -> (sentences [B, D], weights float32 [B]); the weights of all
    replicas sum to N, so after the usual 1 / N loss scaling they sum to 1 as on one device."""
    ctx = tf.distribute.get_replica_context()
    n = ctx.num_replicas_in_sync
    if n == 1:
        return wrong_pairs(sentence, offset)
    b = tf.shape(sentence)[0]
    everything = ctx.all_gather(sentence, axis=0)
    start = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * b
    index = start + tf.range(b) + offset
    total = b * n
    # The last images' pairs wrap to the first sentences with weight 0, exactly as `wrong_pairs`
    # rolls them on one device, so the BatchNorm statistics of the wrong-pair batch agree too.
    wrong = tf.ensure_shape(tf.gather(everything, index % total), sentence.shape)
    # Each replica's terms are later scaled by 1 / n, so weigh by n / (global pairs).
    weight = tf.where(index < total, tf.cast(n, tf.float32) / tf.cast(total - offset, tf.float32), 0.0)
    return wrong, weight


def swapped_pairs_across_replicas(swapped):
    """Weights for the one-word-swap wrong pairs (`text.WordSwap`) of this replica: swapped
    float32 [B] (1 where the caption was swapped) -> (weights float32 [B], share float32 scalar).
    The weights average over the swapped captions of the global batch (under the usual 1 / N
    loss scaling they sum to 1 over all replicas), and `share` is the part of the wrong-pair term
    they take: 1/2 when the global batch holds any swapped caption, else 0 (the reference's wrong
    pairs then keep the whole term). Call in a replica context (or outside any strategy)."""
    swapped = ops.cast(swapped, "float32")
    ctx = tf.distribute.get_replica_context()
    n = ctx.num_replicas_in_sync if ctx is not None else 1
    count = ops.sum(swapped)
    if n > 1:
        count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count)
    weights = swapped * float(n) / ops.maximum(count, 1.0)
    return weights, ops.where(count > 0, 0.5, 0.0)


def pair_classes(batch) -> tf.Tensor:
    """int64 [B] ids that say which captions of a batch describe the same kind of image, so that
    contrastive losses (DAMSM) do not treat them as negatives: the class where known, else the
    combination of the attribute labels (shapes), else -1 (unknown: nothing masked). `batch` is
    a dict with `class_id` int64 [B] and `attributes` int64 [B, A] (`data.class_keys`)."""
    return data.class_keys(batch["class_id"], batch["attributes"])


def discriminator_loss(d, real_images, fake_images, sentence, training=True, wrong=None, swapped=None,
                       fake_sentence=None, joint_batch_norm=False, pairs=False):
    """One stage's D loss: (real + cond real) / 2 + (fake + cond fake + cond wrong) / 3, where the
    "wrong" pairs are real images [0 : B-1] with sentences [1 : B] (`wrong_pairs`; a trainer that
    splits the batch across replicas passes its share of the global pairs).

    swapped: None (the published loss), or (sentence float [B, D] of each image's own caption
    with one word swapped (`text.WordSwap`), weights [B], share) from
    `swapped_pairs_across_replicas`; then cond wrong = (1 - share) x the reference's pairs +
    share x the swapped pairs, each an average over its pairs (share 1/2, or 0 when no caption of
    the batch could be swapped). real_images, fake_images float [B, s, s, 3] in [-1, 1].
    fake_sentence: the sentences the fakes were drawn from, when not `sentence` (mode seeking's
    paired captions, `mode_seeking_pairs`).
    joint_batch_norm (`train.d_batch_norm=joint`): the real and generated images pass the encoder,
    and with their captions the conditional head, as one batch (`joint_logits`), so that D's
    BatchNorm layers normalise both with the same statistics; False (the original) passes each
    batch on its own.
    pairs (`model.pair_discriminator`; d has a pair head): rows 2i and 2i + 1 of real_images are two
    images of one class and of fake_images two samples of one caption; the loss adds
    (pair_real + pair_fake) / 2, BCE of `d.pair_logits` on the real pairs (label 1, with sentence
    2i) and on the generated ones (label 0, with fake_sentence 2i). Not with joint_batch_norm.
    Returns (float32 scalar loss, dict of float32 scalar terms)."""
    if pairs and joint_batch_norm:  # the pair head needs the generated images' own encoding (h_fake)
        raise ValueError("discriminator_loss: pairs needs joint_batch_norm=False")
    wrong_sentence, wrong_weight = wrong if wrong is not None else wrong_pairs(sentence)
    fake_sentence = sentence if fake_sentence is None else fake_sentence
    fake_images = ops.stop_gradient(fake_images)
    if joint_batch_norm:
        h_real, (real, cond_real), (fake, cond_fake) = joint_logits(d, real_images, sentence, fake_images,
                                                                    fake_sentence, training)
    else:
        h_real = d.encode(real_images, training=training)
        h_fake = d.encode(fake_images, training=training)
        real, cond_real = d.uncond_logits(h_real, training=training), d.cond_logits(h_real, sentence, training=training)
        fake = d.uncond_logits(h_fake, training=training)
        cond_fake = d.cond_logits(h_fake, fake_sentence, training=training)
    wrong_bce = bce_with_logits(d.cond_logits(h_real, wrong_sentence, training=training), 0.0)
    terms = {
        "real": ops.mean(bce_with_logits(real, 1.0)),
        "cond_real": ops.mean(bce_with_logits(cond_real, 1.0)),
        "fake": ops.mean(bce_with_logits(fake, 0.0)),
        "cond_fake": ops.mean(bce_with_logits(cond_fake, 0.0)),
        "cond_wrong": ops.sum(wrong_bce * ops.cast(wrong_weight, "float32")),
    }
    cond_wrong = terms["cond_wrong"]
    if swapped is not None:
        swapped_sentence, swapped_weight, share = swapped
        swapped_bce = bce_with_logits(d.cond_logits(h_real, swapped_sentence, training=training), 0.0)
        terms["cond_swapped"] = ops.sum(swapped_bce * ops.cast(swapped_weight, "float32"))
        cond_wrong = (1.0 - share) * cond_wrong + share * terms["cond_swapped"]
    loss = (terms["real"] + terms["cond_real"]) / 2.0 + (terms["fake"] + terms["cond_fake"] + cond_wrong) / 3.0
    if pairs:
        terms["pair_real"] = ops.mean(bce_with_logits(d.pair_logits(h_real, sentence[0::2], training=training), 1.0))
        terms["pair_fake"] = ops.mean(bce_with_logits(d.pair_logits(h_fake, fake_sentence[0::2], training=training),
                                                      0.0))
        loss += (terms["pair_real"] + terms["pair_fake"]) / 2.0
    return loss, terms


def joint_logits(d, real_images, real_sentence, fake_images, fake_sentence, training=True):
    """The discriminator `d` on real and generated images as one batch (`train.d_batch_norm=joint`):
    images float [B, s, s, 3] in [-1, 1] each, sentences float [B, D]. Returns (h_real, the encoded
    real images; (uncond, cond) logits float32 [B] of the real images; the same of the generated).

    Why: D's convolutions have no bias, LeakyReLU is positively homogeneous, and a BatchNorm in
    training mode divides a batch by its own spread, so a discriminator that encodes the generated
    batch on its own gives the same logits for images x and g * x (any g > 0): it cannot see a gain
    the generator applies to all its images at once, a contrast stretch about mid-grey (paler
    backgrounds, more saturated objects). Normalised together with the real batch, the generated
    images are read on the real ones' scale. Our switch; the original encodes each batch apart."""
    b = real_images.shape[0]
    h = d.encode(ops.concatenate([real_images, fake_images], axis=0), training=training)
    uncond = d.uncond_logits(h, training=training)
    cond = d.cond_logits(h, ops.concatenate([real_sentence, fake_sentence], axis=0), training=training)
    return h[:b], (uncond[:b], cond[:b]), (uncond[b:], cond[b:])


def generator_adversarial_loss(d, fake_images, sentence, training=True, real=None, pairs=False):
    """One stage's G term: BCE(uncond fake, real) + BCE(cond fake, real). real: None (the original:
    the fakes on their own) or (real images [B, s, s, 3], their sentences [B, D]) to pass D
    together with the fakes (`joint_logits`, `train.d_batch_norm=joint`); the real images are
    not differentiated. pairs (`model.pair_discriminator`, rows 2i and 2i + 1 two samples of
    caption 2i): + BCE(pair logits of the generated pairs, real); not with `real`."""
    if pairs and real is not None:
        raise ValueError("generator_adversarial_loss: pairs needs real=None (train.d_batch_norm=separate)")
    if pairs:
        h = d.encode(fake_images, training=training)  # kept for the pair head
        uncond, cond = d.uncond_logits(h, training=training), d.cond_logits(h, sentence, training=training)
    elif real is None:
        uncond, cond = d(fake_images, sentence, training=training)
    else:
        real_images, real_sentence = real
        _, _, (uncond, cond) = joint_logits(d, ops.stop_gradient(real_images), real_sentence, fake_images, sentence,
                                            training)
    loss = ops.mean(bce_with_logits(uncond, 1.0)) + ops.mean(bce_with_logits(cond, 1.0))
    if pairs:
        loss += ops.mean(bce_with_logits(d.pair_logits(h, sentence[0::2], training=training), 1.0))
    return loss


def mode_seeking_pairs(batch_size: int):
    """int32 [B]: for each example of a batch, the example whose caption the generator draws it
    with under mode seeking: 2i for both 2i and 2i + 1, so that each pair is one caption under two
    noises. Pairs never straddle replicas (each replica's batch is even), so N replicas pair the
    same examples as one device on the global batch. B must be even."""
    if batch_size % 2:
        raise ValueError(f"mode seeking pairs the examples of a batch: its size must be even, got {batch_size}")
    return ops.repeat(ops.arange(0, batch_size, 2, dtype="int32"), 2)


def mode_seeking_noises(noise, ca_noise, pair, which: str = "both"):
    """What the generator draws a mode-seeking batch with, and the latent the term divides by.

    noise float [B, z_dim], ca_noise float [B, condition_dim] (the batch's z and conditioning
    epsilon), pair int32 [B] (`mode_seeking_pairs`), which `train.mode_seeking_noise`:
    "both" (Mao et al.: all the noise is the latent) -> (ca_noise unchanged, [B, z_dim +
    condition_dim] the two concatenated); "z" -> (ca_noise with each pair's first row for both,
    so the pair shares its condition, and noise alone as the latent). Raises ValueError for any
    other `which`."""
    if which == "both":
        return ca_noise, ops.concatenate([noise, ops.cast(ca_noise, noise.dtype)], axis=1)
    if which == "z":
        return ops.take(ca_noise, pair, axis=0), noise
    raise ValueError(f"mode seeking noise must be 'both' or 'z', got {which!r}")


def mode_seeking_loss(images, latents, eps: float = 1e-5, gain_invariant: bool = False):
    """The mode-seeking term of Mao et al. (CVPR 2019, "Mode Seeking GANs", eq. 3): for each pair of
    samples (rows 2i, 2i + 1) drawn from one caption with two latents, d_I / d_z = mean |x1 - x2| /
    mean |z1 - z2| (means over pixels and latent dimensions), and the loss 1 / (d_I / d_z + eps),
    averaged over the pairs. Mao et al. take the ratio of batch means; here each pair's ratio is
    its own, so the term of a batch split over replicas equals the one device's.

    images float [B, s, s, 3] in [-1, 1] (B even, pairs adjacent); latents float [B, L], the
    generator's noise (z and the conditioning augmentation's epsilon, concatenated). Returns a
    float32 scalar > 0 (about 1 / 0.1-0.3 for a generator that uses its noise, up to 1 / eps for
    one that ignores it). gain_invariant: see `pair_distance_ratios`."""
    return ops.mean(1.0 / (pair_distance_ratios(images, latents, gain_invariant) + eps))


def pair_distance_ratios(images, latents, gain_invariant: bool = False):
    """float32 [B / 2]: for each pair of samples of one caption (rows 2i, 2i + 1), the mean absolute
    image difference over the mean absolute latent difference, d_I / d_z: what both the
    mode-seeking and the diversity-sensitive terms ask the generator to raise. images float
    [B, s, s, 3] in [-1, 1], latents float [B, L] (B even, pairs adjacent). For unit-normal latents
    d_z is about 2 / sqrt(pi) = 1.13; pairs of real shapes test images of one class read a mean
    d_I / 1.13 of 0.13 at 64 px and at 32 px.

    gain_invariant (`train.mode_seeking_gain_invariant`, ours): d_I times c / L, L the pair's mean
    absolute level about mid-grey ((mean |x1| + mean |x2|) / 2) and c the same L without gradient.
    The value is d_I's; the gradient loses its part along a gain, since scaling both images by
    g > 0 scales d_I and L alike. Without it a pair's distance grows with the contrast of every
    pixel, which the discriminators cannot see (`joint_logits`), so the terms that raise it
    reward a contrast stretch."""
    images = ops.cast(images, "float32")
    latents = ops.cast(latents, "float32")
    image_distance = ops.mean(ops.abs(images[0::2] - images[1::2]), axis=(1, 2, 3))
    if gain_invariant:
        level = (ops.mean(ops.abs(images[0::2]), axis=(1, 2, 3)) + ops.mean(ops.abs(images[1::2]), axis=(1, 2, 3))) / 2
        level = level + 1e-6
        image_distance = image_distance * ops.stop_gradient(level) / level
    latent_distance = ops.mean(ops.abs(latents[0::2] - latents[1::2]), axis=1)
    return image_distance / latent_distance


def diversity_sensitive_loss(images, latents, tau: float, gain_invariant: bool = False):
    """The diversity-sensitive term of Yang et al. (ICLR 2019, "Diversity-Sensitive Conditional
    Generative Adversarial Networks", eq. 2), written as a loss to minimise: -mean over pairs of
    min(d_I / d_z, tau), with d_I / d_z as `pair_distance_ratios`. Below the bound tau its gradient
    per unit of ratio is constant (the mode-seeking term's, 1 / ratio^2, shrinks as samples move
    apart); above it, zero: a pair already as varied as tau is left alone, so the term asks for
    variety up to tau and no further.

    images float [B, s, s, 3] in [-1, 1] (B even, pairs adjacent); latents float [B, L]; tau > 0
    (`train.mode_seeking_tau`). Returns a float32 scalar in [-tau, 0] (0 for a generator that
    ignores its noise, -tau when every pair is at least tau apart). gain_invariant: see
    `pair_distance_ratios`."""
    return -ops.mean(ops.minimum(pair_distance_ratios(images, latents, gain_invariant), tau))


def kl_loss(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) averaged over every element, as the original."""
    mu, logvar = ops.cast(mu, "float32"), ops.cast(logvar, "float32")
    return -0.5 * ops.mean(1.0 + logvar - ops.square(mu) - ops.exp(logvar))


def stream_caption_losses(encoder, decoder, images, caption_ids, caption_len, per_word: bool = False):
    """STREAM's captioning cross-entropy (nats) of caption_ids given images, STREAM in inference
    mode (frozen, its BN statistics untouched). images float [B, s, s, 3] in [-1, 1]; caption_ids
    int [B, T]; caption_len int [B]. Returns float32 [B] >= 0, each caption's mean over its words
    and end token; per_word: float32 [B, T + 1], each word's and the end token's, 0 past the end."""
    features = encoder(images, training=False)
    logits = decoder(features, caption_ids, training=False)
    word_losses = stream.caption_word_losses(logits, caption_ids, caption_len)
    return word_losses if per_word else stream.caption_mean(word_losses, caption_len)


def stream_loss(encoder, decoder, images, caption_ids, caption_len, floor=None):
    """The redescription loss (MirrorGAN's L_stream, weighted by lambda in the generator loss): the
    batch mean of STREAM's captioning cross-entropy of the input caption given the generated image
    (`stream_caption_losses`).

    floor (no gradient; ours, `train.stream_floor`): None, the published loss; float32 [B] >= 0,
    each caption's bound (`real`: the loss STREAM gives the real image of that caption), and each
    example counts max(0, CE - floor); float32 [B, T + 1] >= 0, a bound per word (`real_words`:
    each word's loss on the real image, as `stream_caption_losses(per_word=True)` gives it), and
    each example counts the mean over its words and end token of max(0, CE_word - floor_word)
    (past the end both are 0 and add nothing). An image (or word) that STREAM reads back as well as
    from the real image adds nothing and is not pulled further toward the caption's most typical
    picture; per word, no word may read back worse than from the real image however well the others
    do. Returns a float32 scalar >= 0."""
    per_word = floor is not None and len(floor.shape) == 2
    ce = stream_caption_losses(encoder, decoder, images, caption_ids, caption_len, per_word=per_word)
    if floor is not None:
        ce = ops.relu(ce - ops.stop_gradient(ops.cast(floor, "float32")))
    if per_word:
        ce = stream.caption_mean(ce, caption_len)
    return ops.mean(ce)


def damsm_loss(image_encoder, images, words, sentence, mask, class_ids, gammas):
    """AttnGAN's optional DAMSM term on the final image: word loss + sentence loss, both ways."""
    gamma1, gamma2, gamma3 = gammas
    regions, code = image_encoder(images, training=False)
    w0, w1, _ = damsm.word_loss(regions, words, mask, class_ids, gamma1, gamma2, gamma3)
    s0, s1 = damsm.sentence_loss(code, sentence, class_ids, gamma3)
    return w0 + w1 + s0 + s1
