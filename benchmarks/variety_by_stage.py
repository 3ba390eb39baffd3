"""Where a shapes run's within-caption variety comes from: per generator stage and per noise.

For the first N test captions, K samples each from the run's EMA generator (latest GAN
checkpoint), drawn four ways:

- both:      z and the conditioning augmentation's noise (epsilon) fresh for every sample, as
             `serving_default` draws them;
- z_only:    epsilon shared by a caption's K samples, z fresh;
- eps_only:  z shared, epsilon fresh;
- eps0:      z fresh, epsilon = 0 (the condition is its mean mu).

For each way and each stage it prints the `spread` ratios (docs/shapes_dataset.md's factors read
from pixels: within-caption std over the real images' within-class std, on seen-pair captions;
the real reference read at that stage's size, 1.0 = as varied as the data), then the attribute
classifier's accuracy on the final stage (seen and unseen pairs, per attribute and all four), and
for `both` the conditioning augmentation's mean |mu| and std exp(logvar / 2).

    python benchmarks/variety_by_stage.py --run-dir runs/shapes [--captions 200] [--samples 8]

The README's "Where colour is decided" table was read off this script's output. Samples are
not independent within a caption, so accuracy over N x K images has a larger error than the
binomial one of N x K independent images. Numpy seed `--seed` (0) draws the noises.
"""

from __future__ import annotations

import argparse

import numpy as np
from mirrorgan_tf import data
from mirrorgan_tf.evaluation.pairs import load_pairs
from mirrorgan_tf.metrics import spread
from mirrorgan_tf.metrics.attributes import _predict, load_classifier, unseen_mask
from mirrorgan_tf.models.networks import generate
from mirrorgan_tf.runs import load_run

WAYS = ("both", "z_only", "eps_only", "eps0")
BATCH = 256


def real_spread(cfg, manifest, size: int) -> dict:
    """Within-class std of each factor over the real test images read at `size` px (as the data
    pipeline resizes them), the reference a `size` px stage is compared with."""
    factors = {f: [] for f in spread.FACTORS}
    attributes = []
    for b in data.eval_images(cfg, "test", BATCH, size=size):
        for f, v in spread.read_factors(b["images"].numpy()).items():
            factors[f].append(v)
        attributes.append(b["attributes"].numpy())
    return spread.spreads({f: np.concatenate(v) for f, v in factors.items()},
                          spread.class_ids(np.concatenate(attributes)))


def draw(stem, glam, ids, lengths, cfg, way: str, k: int, rng) -> tuple[list, np.ndarray, np.ndarray]:
    """Images per stage (float32 [N k, s, s, 3] in [-1, 1]), mu and the CA std [N k, condition_dim]."""
    m = cfg.model
    z = rng.standard_normal((len(ids), m.z_dim)).astype("float32")
    eps = rng.standard_normal((len(ids), m.condition_dim)).astype("float32")
    if way == "z_only":
        eps = np.repeat(eps[::k], k, 0)
    elif way == "eps_only":
        z = np.repeat(z[::k], k, 0)
    elif way == "eps0":
        eps = np.zeros_like(eps)
    stages, mus, stds = [[] for _ in range(m.stages)], [], []
    for s in range(0, len(ids), BATCH):
        out = generate(stem, glam, ids[s:s + BATCH], lengths[s:s + BATCH], z[s:s + BATCH], eps[s:s + BATCH])
        for i, images in enumerate(out["images"]):
            stages[i].append(images.numpy())
        mus.append(out["mu"].numpy())
        stds.append(np.exp(0.5 * out["logvar"].numpy()))
    return [np.concatenate(x) for x in stages], np.concatenate(mus), np.concatenate(stds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--captions", type=int, default=200)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    run = load_run(a.run_dir)
    cfg = run.cfg
    stem, glam = run.generator(finished=False)
    pairs = load_pairs(cfg, "test")
    rows = pairs.first(a.captions)
    manifest = data.load_manifest(cfg.data.dir)
    k = a.samples
    unseen = np.repeat(unseen_mask(manifest, pairs.attributes[rows]), k)
    groups = np.repeat(np.arange(len(rows)), k)
    ids, lengths = np.repeat(pairs.ids[rows], k, 0), np.repeat(pairs.lengths[rows], k, 0)
    truth = np.repeat(pairs.attributes[rows], k, 0)
    references = {size: real_spread(cfg, manifest, size) for size in cfg.image_sizes}
    classifier, _, _ = load_classifier(cfg, manifest)
    names = data.attribute_names(manifest)
    rng = np.random.default_rng(a.seed)
    print(f"{len(rows)} captions x {k} samples ({int((~unseen).sum())} seen-pair images, {int(unseen.sum())} unseen)")
    for way in WAYS:
        stages, mu, std = draw(stem, glam, ids, lengths, cfg, way, k, rng)
        for i, images in enumerate(stages):
            size = images.shape[1]
            found = spread.read_factors(images)
            within = spread.spreads({f: v[~unseen] for f, v in found.items()}, groups[~unseen])
            print(f"{way:8s} stage {i + 1} ({size} px), seen: "
                  + ", ".join(f"{f} {within[f] / references[size][f]:.2f}" for f in spread.FACTORS))
        final = stages[-1]
        right = np.concatenate([_predict(classifier, final[s:s + BATCH]) for s in range(0, len(final), BATCH)]) == truth
        for name, mask in (("seen", ~unseen), ("unseen", unseen)):
            if mask.any():
                print(f"{way:8s} {name}: " + ", ".join(f"{n} {x:.3f}" for n, x in zip(names, right[mask].mean(0)))
                      + f", all four {right[mask].all(1).mean():.3f} ({int(mask.sum())} images)")
        if way == "both":
            print(f"conditioning augmentation: mean |mu| {np.abs(mu).mean():.3f}, mean std {std.mean():.3f}")


if __name__ == "__main__":
    main()
