"""How far apart two real images of one class are, in the units of the mode-seeking pairs' ratio.

The mode-seeking and diversity-sensitive terms (`train.mode_seeking_form`) raise, for two samples
of one caption, ratio = mean |image 1 - image 2| / mean |latent 1 - latent 2| (images in [-1, 1],
`losses.pair_distance_ratios`). This script reads what the data itself would score: every pair of
real images of one attribute class in a split (shapes: colour, shape, size and position all
equal), at each generator stage's size (images as the evaluation reads them, `data.eval_images`),
the mean image distance over the expected latent distance of two unit-normal latents,
E |z1 - z2| = 2 / sqrt(pi) = 1.128 per dimension. It reads each pair twice: as the pixels are
(`train.mode_seeking_tau`'s 0.13 was read here), and with each image's own mean colour taken away
first, so that a uniform shift of colour (a background level, a colour cast) costs nothing and
what is left is mostly the layout (0.04: README, One caption, many pictures, a layout term tried):

    python benchmarks/real_pair_ratio.py [--config configs/shapes.yaml] [--set data.dir=DIR] [--split test]

Prints, per size and reading: the number of pairs, mean and median image distance, and mean / 1.128. Only for
datasets with attribute labels (shapes, or own data with one `label` per image).
"""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np

from mirrorgan_tf import data
from mirrorgan_tf.config import load_config
from mirrorgan_tf.metrics.spread import class_ids

LATENT_DISTANCE = 2.0 / math.sqrt(math.pi)  # E |z1 - z2| for two independent N(0, 1) draws


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/shapes.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    for size in cfg.image_sizes:
        images, attributes = [], []
        for batch in data.eval_images(cfg, args.split, 256, size=size):
            images.append(batch["images"].numpy())
            attributes.append(batch["attributes"].numpy())
        images, attributes = np.concatenate(images), np.concatenate(attributes)
        if attributes.shape[1] == 0:
            raise SystemExit(f"{cfg.data.dir}: the {args.split} split has no attribute labels")
        classes = class_ids(attributes)
        pairs = [(a, b) for c in np.unique(classes)
                 for a, b in itertools.combinations(np.flatnonzero(classes == c), 2)]
        # Each image minus its own per-channel mean: a uniform shift of colour costs nothing.
        centred = images - images.mean(axis=(1, 2), keepdims=True)
        for name, x in (("pixels", images), ("centred", centred)):
            d = np.asarray([np.abs(x[a] - x[b]).mean() for a, b in pairs])
            print(f"{size:4d} px, {name:7s}: {len(d):,} same-class pairs of {len(images):,} {args.split} images; "
                  f"mean |difference| {d.mean():.4f} (median {np.median(d):.4f}); over E|z1 - z2| = "
                  f"{LATENT_DISTANCE:.3f}: ratio {d.mean() / LATENT_DISTANCE:.4f}")


if __name__ == "__main__":
    main()
