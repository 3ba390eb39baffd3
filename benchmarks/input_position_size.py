"""How many bytes the saved input position adds to every checkpoint, on COCO-shaped records.

    python benchmarks/input_position_size.py [--config configs/coco.yaml] [--records 2600]
                                             [--jpeg-kb 160] [--steps 20] [--out DIR]
                                             [--set data.input_position=iterator|index ...]

Writes a COCO-shaped dataset in the project's record format (random-content JPEGs of about
--jpeg-kb KB, COCO train2014's mean; five captions each) into --out (a temporary folder by
default), builds the training input as the GAN stage does (`data.DistributedInput` under the
default strategy, the config's data.input_position, shuffle buffer, batch and prefetch), takes
--steps batches, then saves one tf.train.Checkpoint with the input and one without, and prints the
difference of their .data files: what `input_pipeline` costs per checkpoint (the run keeps three).

With data.input_position=index it also prints what a resume costs there: building the record
table (one header read per record), and the seconds to the first batch of a pipeline started at
batch 0 and of one restored at a position --resume-epochs epochs on (which reads no skipped record,
so the two should match).

--records should exceed data.shuffle_buffer, so the buffer is full as it is in a real run.

With --classes K it measures the shuffle instead: the records are written sorted into K classes
(as CUB's split list stores them) over --shards shards, and it prints the mean number of distinct
classes in a batch over the first epoch, beside the expectation for uniform draws. CUB-shaped:

    python benchmarks/input_position_size.py --config configs/cub.yaml --records 8855 --classes 150 \
        --shards 13 --jpeg-kb 1 --width 64 --set model.stages=1 --set model.base_size=16 \
        --set data.input_position=iterator|index
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf

from mirrorgan_tf import data, records
from mirrorgan_tf.config import load_config
from pipelines.writer import FORMAT


def _jpeg(rng: np.random.Generator, target: int, w: int = 640) -> tuple[bytes, int, int]:
    """A w x (3/4 w) JPEG of smoothed noise whose size is near `target` bytes (quality searched)."""
    h = w * 3 // 4
    coarse = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    image = tf.image.resize(coarse, [h, w], method="bilinear")
    image = tf.cast(tf.clip_by_value(image + rng.normal(0, 16, (h, w, 3)), 0, 255), tf.uint8)
    best = None
    for quality in range(40, 100, 5):
        encoded = tf.io.encode_jpeg(image, quality=quality).numpy()
        if best is None or abs(len(encoded) - target) < abs(len(best) - target):
            best = encoded
    return best, h, w


def write_coco_shaped(out: str, count: int, jpeg_bytes: int, distinct: int = 16, shards: int = 1,
                      classes: int = 0, width: int = 640) -> float:
    """`count` records into `out` (`shards` train shards of consecutive records, plus manifest);
    returns the mean record bytes. `classes` > 0: record i gets class i * classes // count, so the
    records lie sorted by class as CUB's split list has them."""
    rng = np.random.default_rng(0)
    images = [_jpeg(rng, jpeg_bytes, width) for _ in range(distinct)]
    os.makedirs(out, exist_ok=True)
    names = [f"train-{s:05d}.tfrecord" for s in range(shards)]
    total = 0
    for s, shard in enumerate(names):
        with tf.io.TFRecordWriter(os.path.join(out, shard)) as writer:
            for i in range(s * count // shards, (s + 1) * count // shards):
                encoded, h, w = images[i % distinct]
                captions = [f"a photo number {i} of some thing {k} on a table" for k in range(5)]
                ids = [[1 + (i + k + j) % 50 for j in range(10)] for k in range(5)]
                record = records.encode_example(key=f"img{i:06d}", image=encoded, image_format="jpeg",
                                                height=h, width=w, captions=captions, caption_ids=ids,
                                                class_id=i * classes // count if classes else records.NO_CLASS)
                total += len(record)
                writer.write(record)
    manifest = {"format": FORMAT, "dataset": "coco-shaped",
                "vocabulary": "vocab.txt", "vocab_size": 51, "captions_per_image": 5,
                "splits": {"train": {"examples": count, "captions": 5 * count, "shards": names}},
                "attributes": {}}
    with open(os.path.join(out, data.MANIFEST), "w") as f:
        json.dump(manifest, f)
    with open(os.path.join(out, "vocab.txt"), "w") as f:
        f.write("\n".join(["<pad>"] + [f"w{i}" for i in range(50)]) + "\n")
    return total / count


def _data_bytes(prefix: str) -> int:
    return sum(os.path.getsize(p) for p in glob.glob(prefix + ".data-*"))


def measure(cfg, steps: int, folder: str) -> tuple[int, float]:
    """(bytes the GAN stage's input adds to a checkpoint after `steps` batches, seconds to save it
    with the input). Checkpoints go under `folder`."""
    pipeline = data.DistributedInput(tf.distribute.get_strategy(), cfg)
    for _ in range(steps):
        next(pipeline)
    step = tf.Variable(steps, dtype=tf.int64)
    start = time.perf_counter()
    with_input = tf.train.Checkpoint(step=step, input_pipeline=pipeline).write(os.path.join(folder, "with", "ckpt"))
    seconds = time.perf_counter() - start
    without = tf.train.Checkpoint(step=step).write(os.path.join(folder, "without", "ckpt"))
    return _data_bytes(with_input) - _data_bytes(without), seconds


def class_mixing(cfg, classes: int) -> tuple[float, float, float]:
    """On records sorted by class (`write_coco_shaped(classes=...)`): (mean distinct classes per
    batch over the first epoch's batches, the same for batches of records drawn uniformly at
    random (exact expectation), the first epoch's fraction of records seen once). How well the
    configured training order mixes a dataset stored in class order."""
    count = data.load_manifest(cfg.data.dir)["splits"]["train"]["examples"]
    batch = cfg.train.batch_size
    distinct, seen = [], []
    for b in data.make_dataset(cfg, "train").take(count // batch):
        ids = b["class_id"].numpy()
        distinct.append(len(set(ids.tolist())))
        seen += b["key"].numpy().tolist()
    uniform = classes * (1 - (1 - 1 / classes) ** batch)  # E[distinct] of `batch` draws among equal classes
    return float(np.mean(distinct)), uniform, len(set(seen)) / len(seen)


def resume_costs(cfg, epochs: float) -> dict:
    """data.input_position=index: seconds to build the record table of the train split (from the
    shards' headers, cache cleared first), and to the first batch of a pipeline at batch 0 and of
    one whose checkpoint says `epochs` epochs were taken (restored the way run_loop restores)."""
    strategy = tf.distribute.get_strategy()
    files = data.shard_files(cfg, "train")
    data._TABLES.clear()
    start = time.perf_counter()
    records = len(data.RecordTable.of(files))
    table = time.perf_counter() - start
    out = {"records": records, "table_seconds": table}
    for name, batches in (("first_batch_at_start", 0), ("first_batch_resumed", int(epochs * records / cfg.train.batch_size))):
        pipeline = data.DistributedInput(strategy, cfg)
        pipeline.batches_taken.assign(batches)  # what a restored checkpoint leaves there
        start = time.perf_counter()
        next(pipeline)
        out[name] = time.perf_counter() - start
        out[name + "_batch"] = batches
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/coco.yaml")
    p.add_argument("--records", type=int, default=2600)
    p.add_argument("--jpeg-kb", type=float, default=160)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", help="folder for the dataset and checkpoints (default: a temporary one, removed)")
    p.add_argument("--classes", type=int, default=0,
                   help="write records sorted into this many classes and print how the order mixes them "
                        "(instead of the checkpoint size)")
    p.add_argument("--width", type=int, default=640, help="the JPEGs' width in pixels (height 3/4 of it)")
    p.add_argument("--shards", type=int, default=1, help="train shards to write the records into")
    p.add_argument("--resume-epochs", type=float, default=50.5, help="index mode: where the timed resume starts")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args()
    root = a.out or tempfile.mkdtemp(prefix="input_position_")
    try:
        folder = os.path.join(root, "coco_shaped")
        if not os.path.exists(os.path.join(folder, data.MANIFEST)):
            mean = write_coco_shaped(folder, a.records, int(a.jpeg_kb * 1000), shards=a.shards, classes=a.classes,
                                     width=a.width)
            print(f"wrote {a.records} records in {a.shards} shard(s), mean {mean / 1e3:.1f} KB each", flush=True)
        cfg = load_config(a.config, a.overrides + [f"data.dir={folder}"])
        index = cfg.data.input_position == "index"
        print(f"{a.config}: input_position={cfg.data.input_position} "
              + ("" if index else f"shuffle_buffer={cfg.data.shuffle_buffer} ")
              + f"batch_size={cfg.train.batch_size}", flush=True)
        if a.classes:
            mixed, uniform, once = class_mixing(cfg, a.classes)
            print(f"first epoch, {a.records} records sorted into {a.classes} classes: {mixed:.2f} distinct classes per "
                  f"batch of {cfg.train.batch_size} (uniform draws: {uniform:.2f}); {100 * once:.1f}% of its records "
                  "distinct")
            return
        size, seconds = measure(cfg, a.steps, root)
        print(f"input_pipeline: {size / 1e6:.1f} MB per checkpoint ({3 * size / 1e9:.2f} GB for the three kept); "
              f"saving it took {seconds:.1f} s" if size >= 1e5 else
              f"input_pipeline: {size} bytes per checkpoint; saving it took {seconds:.2f} s")
        if index:
            c = resume_costs(cfg, a.resume_epochs)
            print(f"record table: {c['records']} records in {c['table_seconds']:.3f} s "
                  f"({1e6 * c['table_seconds'] / c['records']:.1f} us a record); first batch at batch 0: "
                  f"{c['first_batch_at_start']:.2f} s, resumed at batch {c['first_batch_resumed_batch']} "
                  f"({a.resume_epochs} epochs on): {c['first_batch_resumed']:.2f} s")
    finally:
        if not a.out:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
