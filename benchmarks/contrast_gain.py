"""Does a shapes run draw the data's contrast, and could its discriminators tell if it did not?

Prints, for a run's EMA generator (the first N test captions, one sample each, noise from
`evaluation.generator.sample_noise` with --seed) against the real test images:

1. Mean colours in RGB levels 0-255, read by `spread`'s pixel reader (`spread.read_factors`): the
   background (the per-channel median of the border pixels) and the object's colour (the mean of
   its inner pixels) per colour word, real then generated; and the gain g that best maps the real means onto the
   generated ones about mid-grey, least squares over all of them: level - 127.5 ~ g (real -
   127.5). g = 1: the data's contrast; g > 1: paler backgrounds and more saturated objects.
2. Each discriminator's mean unconditional logit, in training mode (as both GAN losses call it),
   on the real test images with every pixel scaled about mid-grey by g (clipped to [-1, 1]):
   encoded on their own (the original's separate passes: flat in g, up to the clipping, since
   bias-free convolutions, LeakyReLU and BatchNorm divide a gain out) and beside the unscaled
   real images as one batch (`train.d_batch_norm=joint`, `losses.joint_logits`).

    python benchmarks/contrast_gain.py --run-dir R [--captions 1000] [--seed 0]

The run's latest gan checkpoint is read, so a run can be looked at while it trains.
"""

from __future__ import annotations

import argparse

import numpy as np
import tensorflow as tf

from mirrorgan_tf import data, losses, runs
from mirrorgan_tf.evaluation.generator import TrainedGenerator
from mirrorgan_tf.evaluation.pairs import load_pairs
from mirrorgan_tf.metrics.spread import read_factors
from mirrorgan_tf.models import networks

GAINS = (0.9, 1.0, 1.1, 1.2, 1.3)
MID = 127.5


def colours(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """images float [B, s, s, 3] in [-1, 1] -> (background [B, 3], object colour [B, 3]), RGB levels."""
    factors = read_factors(images)
    return factors["background"], factors["colour"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--captions", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    run = runs.load_run(a.run_dir)
    cfg = run.cfg
    manifest = data.load_manifest(cfg.data.dir)
    column = data.attribute_names(manifest).index("colour")
    names = manifest["attributes"]["colour"]

    real, real_attributes = [], []
    for batch in data.eval_images(cfg, "test", 256):
        real.append(batch["images"].numpy())
        real_attributes.append(batch["attributes"].numpy())
    real, real_attributes = np.concatenate(real), np.concatenate(real_attributes)
    pairs = load_pairs(cfg, "test")
    rows = pairs.first(min(a.captions, len(pairs)))
    generator = TrainedGenerator(a.run_dir)
    fake = np.concatenate([np.asarray(generator(pairs.ids[rows[s:s + 100]], pairs.lengths[rows[s:s + 100]],
                                                np.arange(s, min(len(rows), s + 100)), seed=a.seed)["images"][-1],
                                      np.float32) for s in range(0, len(rows), 100)])
    fake_attributes = pairs.attributes[rows]

    real_bg, real_obj = colours(real)
    fake_bg, fake_obj = colours(fake)
    print(f"{a.run_dir}: {len(fake)} generated images (the first test captions, seed {a.seed}), {len(real)} real")
    print(f"  background      real {np.round(real_bg.mean(0), 1)}  generated {np.round(fake_bg.mean(0), 1)}")
    pairs_of_means = [(real_bg.mean(0), fake_bg.mean(0))]
    for k, name in enumerate(names):
        r = np.mean(real_obj[real_attributes[:, column] == k], axis=0)
        f = np.mean(fake_obj[fake_attributes[:, column] == k], axis=0)
        pairs_of_means.append((r, f))
        print(f"  {name:14s}  real {np.round(r, 1)}  generated {np.round(f, 1)}")
    r = np.concatenate([x for x, _ in pairs_of_means]) - MID
    f = np.concatenate([y for _, y in pairs_of_means]) - MID
    print(f"  gain about mid-grey (least squares over the {len(r)} channel means): {float(r @ f / (r @ r)):.3f}")

    discriminators = networks.build_discriminators(cfg, batch=2)
    prefix = run.gan_checkpoint()
    tf.train.Checkpoint(**{f"d{i}": d for i, d in enumerate(discriminators)}).restore(prefix).expect_partial()
    first = tf.constant(real[:64])  # the first 64 real test images, read above
    sentence = generator.stem(tf.constant(pairs.ids[:64]), tf.constant(pairs.lengths[:64]), training=False)[1]
    print(f"  discriminators' mean unconditional logit on 64 real test images scaled by g ({prefix}):")
    for i, d in enumerate(discriminators):
        size = cfg.image_sizes[i]
        images = first if size == real.shape[1] else tf.image.resize(first, [size, size], "bilinear", antialias=True)
        alone, joint = [], []
        for g in GAINS:
            scaled = tf.clip_by_value(g * images, -1.0, 1.0)
            alone.append(float(tf.reduce_mean(d.uncond_logits(d.encode(scaled, training=True), training=True))))
            _, _, (uncond, _) = losses.joint_logits(d, images, sentence, scaled, sentence)
            joint.append(float(tf.reduce_mean(uncond)))
        print(f"    {d.name} ({size} px)  g " + " ".join(f"{g:7.1f}" for g in GAINS))
        print("      on their own      " + " ".join(f"{v:+7.3f}" for v in alone))
        print("      beside the real   " + " ".join(f"{v:+7.3f}" for v in joint))


if __name__ == "__main__":
    main()
