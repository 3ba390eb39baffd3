"""python -m pipelines.prepare --dataset {shapes,cub,coco,captions} [--source PATH] --out DIR

Reads a raw dataset, checks it, and writes sharded TFRecords, vocab.txt and manifest.json to DIR.
By default the first bad input stops everything before DIR exists; `--on-error skip` converts the
rest and lists every skipped item in the manifest. `--vocab FILE` prepares with a given vocabulary
(e.g. AttnGAN's, converted from its captions.pickle) instead of building one; `--background`
is the colour transparent pixels are composited onto (default white). The manifest records each
shard's size and sha256; `python -m pipelines.check DIR` verifies them later.
"""

from __future__ import annotations

import argparse
import sys
import time

from mirrorgan_tf.errors import run_cli
from pipelines.source import DatasetError, Problems, Source

DATASETS = ("shapes", "cub", "coco", "captions")


def read_source(dataset: str, source: str | None, problems: Problems, *, num_train: int | None = None,
                num_test: int | None = None, test_fraction: float = 0.1, background="white") -> Source:
    """Read and check one raw dataset (no image decoded yet). `background`: the colour transparent
    pixels are composited onto (a name, #rrggbb or (r, g, b)); not used by the rendered shapes.
    Raises DatasetError naming the file or argument."""
    if dataset == "shapes":
        from pipelines import shapes

        return shapes.read(num_train if num_train is not None else shapes.NUM_TRAIN,
                           num_test if num_test is not None else shapes.NUM_TEST)
    if not source:
        raise DatasetError(f"--source is required for --dataset {dataset}")
    from pipelines import images

    try:
        rgb = images.parse_background(background)
    except images.ImageError as e:
        raise DatasetError(str(e)) from None
    if dataset == "cub":
        from pipelines import cub

        return cub.read(source, problems, background=rgb)
    if dataset == "coco":
        from pipelines import coco

        return coco.read(source, problems, background=rgb)
    if dataset == "captions":
        from pipelines import captions

        return captions.read(source, problems, test_fraction=test_fraction, background=rgb)
    raise DatasetError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")


def prepare(dataset: str, out: str, source: str | None = None, *, on_error: str = "raise",
            shard_size_mb: float = 64, workers: int = 0, overwrite: bool = False, min_count: int = 1,
            num_train: int | None = None, num_test: int | None = None, test_fraction: float = 0.1,
            vocab: str | None = None, background="white") -> dict:
    """Prepare one dataset; returns its manifest. Raises DatasetError on bad input.

    `vocab`: prepare with this vocabulary file (e.g. one converted from AttnGAN's released
    captions.pickle) instead of building one from the training captions."""
    from pipelines.writer import write_dataset

    problems = Problems(on_error)
    src = read_source(dataset, source, problems, num_train=num_train, num_test=num_test,
                      test_fraction=test_fraction, background=background)
    return write_dataset(src, out, problems, shard_size_mb=shard_size_mb, workers=workers,
                         overwrite=overwrite, min_count=min_count, vocab=vocab)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--source", help="raw dataset: CUB 'birds' folder, COCO folder, or captions file/folder")
    p.add_argument("--out", required=True, help="output folder (local path or gs://...)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    p.add_argument("--shard-size-mb", type=float, default=64)
    p.add_argument("--workers", type=int, default=0, help="image processes (0 = one per core, at most 8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    p.add_argument("--min-count", type=int, default=1, help="drop words seen fewer times in training captions")
    p.add_argument("--num-train", type=int, help="shapes: training images (default 10000)")
    p.add_argument("--num-test", type=int, help="shapes: test images (default 1000)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="captions: share of images held out for test when the file names no split")
    p.add_argument("--vocab", metavar="FILE",
                   help="use this vocabulary (first line <end>, <unk> optional) instead of building one")
    p.add_argument("--background", default="white",
                   help="colour under transparent pixels: a name or #rrggbb (default white)")
    a = p.parse_args(argv)
    start = time.time()

    def body() -> int:
        manifest = prepare(a.dataset, a.out, a.source, on_error=a.on_error, shard_size_mb=a.shard_size_mb,
                           workers=a.workers, overwrite=a.overwrite, min_count=a.min_count,
                           num_train=a.num_train, num_test=a.num_test, test_fraction=a.test_fraction,
                           vocab=a.vocab, background=a.background)
        splits = ", ".join(f"{k} {v['examples']} images / {v['captions']} captions in {len(v['shards'])} shard(s)"
                           for k, v in manifest["splits"].items())
        print(f"{a.out}: {splits}; vocabulary {manifest['vocab_size']} words; "
              f"{len(manifest['skipped'])} skipped; {time.time() - start:.1f} s")
        for s in manifest["skipped"]:
            print(f"  skipped {s['key'] or '(no image)'}: {s['file']}: {s['problem']}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
