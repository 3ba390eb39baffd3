"""Several samples per caption beside the real test images of the caption's class (shapes runs).

For each caption: one row of K samples from the run's EMA generator, z and the conditioning
augmentation's noise fresh for every sample (as `serving_default` draws them), then one row of
every real test image of the class the caption names (its colour, shape, size and position, read
by `pipelines.shapes.caption_attributes`), each captioned above, the held-out colour-shape pairs
marked "(unseen pair)". This is how the README's docs/variety_samples.png was drawn:

    python benchmarks/variety_samples.py --run-dir runs/shapes --out docs/variety_samples.png \\
        [--caption "a large red square on the left" ...] [--samples 8] [--seed 0] [--scale 2]

With --samples-only the real rows are left out and each caption is quoted above its samples: the
README's opening picture, docs/readme_captions.png (its three captions given with --caption).

The default captions: two seen pairs, then the two held-out pairs. Images are shown at the final
stage's size times --scale (nearest neighbour, so no resampling softens or sharpens them). The
noise comes from numpy's default_rng(--seed): the same seed, the same picture.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mirrorgan_tf import data
from mirrorgan_tf.images import to_uint8
from mirrorgan_tf.metrics.attributes import unseen_mask
from mirrorgan_tf.models.networks import generate
from mirrorgan_tf.runs import load_run
from mirrorgan_tf.sample import tokenize
from pipelines.shapes import caption_attributes

CAPTIONS = ("a large red square on the left", "a small blue triangle at the top",
            "a large orange circle in the middle", "a small purple triangle on the right")
GAP, LABEL = 4, 22  # px between images / above each caption's rows for its text


def real_by_class(cfg) -> dict[tuple, list[np.ndarray]]:
    """Every real test image (uint8, the final stage's size) by its attribute tuple."""
    out: dict[tuple, list] = {}
    for b in data.eval_images(cfg, "test", 256):
        for image, attributes in zip(to_uint8(b["images"]).numpy(), b["attributes"].numpy()):
            out.setdefault(tuple(int(x) for x in attributes), []).append(image)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--caption", action="append", help="repeat for several (default: four, see above)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    p.add_argument("--samples-only", action="store_true", help="no real images: the README's opening picture")
    a = p.parse_args()
    captions = a.caption or list(CAPTIONS)
    run = load_run(a.run_dir)
    cfg = run.cfg
    manifest = data.load_manifest(cfg.data.dir)
    names, values = data.attribute_names(manifest), manifest["attributes"]
    labels = []
    for c in captions:
        named = caption_attributes(c)
        labels.append(tuple(values[n].index(named[n]) for n in names))
    unseen = unseen_mask(manifest, np.array(labels))
    reals = {} if a.samples_only else real_by_class(cfg)
    stem, glam = run.generator(checkpoint=a.checkpoint)
    ids, lengths, *_ = tokenize(captions, run.vocab_path, cfg.data.words_num)
    k = a.samples
    rng = np.random.default_rng(a.seed)
    z = rng.standard_normal((len(captions) * k, cfg.model.z_dim)).astype("float32")
    eps = rng.standard_normal((len(captions) * k, cfg.model.condition_dim)).astype("float32")
    images = to_uint8(generate(stem, glam, np.repeat(ids, k, 0), np.repeat(lengths, k, 0), z, eps)["images"][-1]).numpy()

    size = images.shape[1] * a.scale
    rows = 1 if a.samples_only else 2
    width = max(k, 0 if a.samples_only else max(len(reals.get(lab, [])) for lab in labels)) * (size + GAP)
    row_block = LABEL + rows * (size + GAP) + 2 * GAP
    sheet = Image.new("RGB", (width, row_block * len(captions)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)  # Pillow's bundled TrueType face: no system font needed
    for i, (caption, label) in enumerate(zip(captions, labels)):
        real = reals.get(label, [])
        top = i * row_block
        if a.samples_only:
            draw.text((GAP, top + 4), f"\u201c{caption}\u201d{'  (a colour-shape pair never seen in training)' if unseen[i] else ''}",
                      fill="black", font=font)
        else:
            draw.text((GAP, top + 4), f"{caption}{' (unseen pair)' if unseen[i] else ''}: {k} samples, then "
                                      f"{len(real)} real test images of the class", fill="black", font=font)
        for row, pictures in enumerate((images[i * k:(i + 1) * k], real)[:rows]):
            for j, picture in enumerate(pictures):
                tile = Image.fromarray(picture).resize((size, size), Image.NEAREST)
                sheet.paste(tile, (j * (size + GAP), top + LABEL + row * (size + GAP)))
    sheet.save(a.out)
    print(f"{a.out}: {len(captions)} captions x {k} samples" + ("" if a.samples_only else
                                                               " beside the real test images of their classes"))


if __name__ == "__main__":
    main()
