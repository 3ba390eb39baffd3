"""How hard a run's STREAM pulls a picture towards its class's most typical size and place.

The redescription term rewards a generated image by STREAM's captioning cross-entropy of its
caption (`losses.stream_loss`). Where that loss keeps falling as an object moves towards the middle
of the range the real images of its class cover, the term pulls every sample there, and the
samples of one caption lose the data's variety in size and place. This script reads the slope
directly, with no generator: it re-renders real `shapes` scenes (pipelines/shapes.py) with one
factor set, everything else at the class's nominal value (colour, size and centre without jitter;
the scene's own background and captions), and prints STREAM's mean loss over the scenes' ten
captions at each setting:

    python benchmarks/stream_pull.py --run-dir R [--run-dir R2 ...] [--scenes 200] [--split train]

Size is set as a factor of the nominal side (the data's jitter is +-8 %), the centre as an offset
along x in units of the image side (jitter +-0.03). "inside" is the mean loss at the edges of the
data's range (size x0.92 and x1.08; centre -0.03 and +0.03) minus that at the nominal value, in
nats: how much an image gains, by the published term, for moving from the edge of what real
images do to the class's middle. Shapes runs only (the renderer is the dataset's own).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from mirrorgan_tf.losses import stream_caption_losses
from mirrorgan_tf.runs import load_run
from mirrorgan_tf.sample import tokenize
from pipelines import shapes

SIZE_FACTORS = (0.84, 0.92, 0.96, 1.0, 1.04, 1.08, 1.16)
CENTRE_OFFSETS = (-0.06, -0.03, -0.015, 0.0, 0.015, 0.03, 0.06)


def nominal(scene: shapes.Scene) -> shapes.Scene:
    """The scene with its class's nominal colour, size and centre (its background kept)."""
    fx, fy = shapes.POSITIONS[scene.position]
    return dataclasses.replace(scene, rgb=shapes.COLOURS[scene.colour], side=shapes.SIZES[scene.size] * shapes.SIZE,
                               centre=(fx * shapes.SIZE, fy * shapes.SIZE))


def settings() -> list[tuple[str, float, Callable[[shapes.Scene], shapes.Scene]]]:
    out = [("size", f, lambda s, f=f: dataclasses.replace(s, side=s.side * f)) for f in SIZE_FACTORS]
    out += [("centre x", d, lambda s, d=d: dataclasses.replace(s, centre=(s.centre[0] + d * shapes.SIZE, s.centre[1])))
            for d in CENTRE_OFFSETS]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", action="append", required=True, help="a shapes run whose stream stage has finished")
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--split", default="train", choices=shapes.SPLITS)
    args = p.parse_args(argv)
    scenes = [shapes.sample_scene(args.split, i) for i in range(args.scenes)]
    for path in args.run_dir:
        run = load_run(path)
        cfg = run.cfg
        encoder, decoder, checkpoint = run.stream()
        captions = [c for _, cs in scenes for c in cs]
        ids, lengths = tokenize(captions, run.vocab_path, cfg.data.words_num)[:2]
        size = cfg.stream.image_size
        print(f"{path}: STREAM {checkpoint}, "
              f"label_smoothing {cfg.stream.label_smoothing}, random_zoom {cfg.stream.random_zoom}, "
              f"random_translation {cfg.stream.random_translation}; {args.scenes} {args.split} scenes x "
              f"{shapes.CAPTIONS_PER_IMAGE} captions, mean cross-entropy (nats)")
        table = {}
        for factor, value, change in settings():
            pixels = np.stack([shapes.render(change(nominal(scene))) for scene, _ in scenes])
            images = tf.image.resize(tf.constant(pixels, tf.float32), [size, size], "bilinear", antialias=True)
            images = tf.repeat(images / 127.5 - 1.0, shapes.CAPTIONS_PER_IMAGE, axis=0)
            losses = np.concatenate([stream_caption_losses(encoder, decoder, images[i:i + 500], ids[i:i + 500],
                                                           lengths[i:i + 500]).numpy()
                                     for i in range(0, len(captions), 500)])
            table[factor, value] = losses.mean()
        for factor, values, edges, middle in (("size", SIZE_FACTORS, (0.92, 1.08), 1.0),
                                              ("centre x", CENTRE_OFFSETS, (-0.03, 0.03), 0.0)):
            row = "  ".join(f"{v:+.3f}: {table[factor, v]:.4f}" if factor != "size" else f"x{v:.2f}: {table[factor, v]:.4f}"
                            for v in values)
            inside = np.mean([table[factor, e] for e in edges]) - table[factor, middle]
            print(f"  {factor:8s} {row}  | inside {inside:+.4f}")


if __name__ == "__main__":
    main()
