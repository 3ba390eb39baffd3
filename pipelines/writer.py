"""Sharded, atomic TFRecord writing: a checked `Source` -> shards + vocab.txt + manifest.json.

Everything is written into `<out>.incomplete-<random>` and renamed to `<out>` only when the last
shard is closed, so an error, Ctrl-C or a crash never leaves something at `<out>` that looks like
a finished dataset. On an error the incomplete folder is removed; after a `kill -9` it stays,
named as what it is.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import secrets
from typing import Iterator

import tensorflow as tf

from mirrorgan_tf import __version__, records, text
from pipelines.source import DatasetError, Problems, RawExample, Source

MANIFEST = "manifest.json"
VOCABULARY = "vocab.txt"
FORMAT = "mirrorgan_tf.tfrecords/1"
_CHUNK = 512  # images in flight at once: bounds memory on large datasets


def _image_results(source: Source, examples: list[RawExample], workers: int) -> Iterator[tuple]:
    """Run the source's image worker over `examples`, in order, in `workers` processes."""
    jobs = [e.image_job for e in examples]
    if workers <= 1:
        yield from map(source.image_worker, jobs)
        return
    # spawn: the parent has TensorFlow loaded, which does not survive fork; workers import only
    # PIL and NumPy.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        for start in range(0, len(jobs), _CHUNK):
            yield from pool.map(source.image_worker, jobs[start:start + _CHUNK], chunksize=8)


class _ShardWriter:
    def __init__(self, folder: str, split: str, max_bytes: int):
        self.folder, self.split, self.max_bytes = folder, split, max_bytes
        self.paths: list[str] = []
        self._writer = None
        self._bytes = 0

    def write(self, record: bytes) -> None:
        if self._writer is None or self._bytes + len(record) > self.max_bytes and self._bytes > 0:
            self._open()
        self._writer.write(record)
        self._bytes += len(record)

    def _open(self) -> None:
        self.close()
        path = os.path.join(self.folder, f"{self.split}-{len(self.paths):05d}.tfrecord")
        self.paths.append(path)
        self._writer = tf.io.TFRecordWriter(path)
        self._bytes = 0

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self) -> list[str]:
        """Close and give the shards their final `-NNNNN-of-NNNNN` names; returns basenames."""
        self.close()
        names = []
        for i, path in enumerate(self.paths):
            name = f"{self.split}-{i:05d}-of-{len(self.paths):05d}.tfrecord"
            tf.io.gfile.rename(path, os.path.join(self.folder, name))
            names.append(name)
        return names


_BATCH = 4096  # captions per tokenizer call: eager TF calls are slow one by one


def _split_words(captions: list[str]) -> list[list[str]]:
    words = []
    for start in range(0, len(captions), _BATCH):
        ragged = text.split_words(captions[start:start + _BATCH])
        words += [[w.decode("utf-8") for w in row] for row in ragged.to_list()]
    return words


def _caption_ids(tokenizer: text.Tokenizer, examples: list[RawExample]) -> list[list[list[int]]]:
    """Word ids of every example's captions, tokenized in large batches."""
    flat = [c for e in examples for c in e.captions]
    ids = []
    for start in range(0, len(flat), _BATCH):
        ids += tokenizer(flat[start:start + _BATCH]).to_list()
    out, pos = [], 0
    for e in examples:
        out.append(ids[pos:pos + len(e.captions)])
        pos += len(e.captions)
    return out


def _check_captions(examples: list[RawExample], problems: Problems) -> tuple[list[RawExample], list[str]]:
    """Report captions with no words at all. Returns the surviving examples and the vocabulary
    built from their training captions."""
    words = _split_words([c for e in examples for c in e.captions])
    kept, train_words, pos = [], [], 0
    for e in examples:
        mine = words[pos:pos + len(e.captions)]
        pos += len(e.captions)
        empty = [j for j, w in enumerate(mine) if not w]
        if empty:
            j = empty[0]
            problems.report(e.caption_origins[j], f"empty caption ({e.captions[j]!r} has no words)", e.key)
            continue
        kept.append(e)
        if e.split == "train":
            train_words += mine
    return kept, train_words


def _remove(path: str) -> None:
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


def write_dataset(source: Source, out: str, problems: Problems, *, shard_size_mb: float = 64,
                  workers: int = 0, overwrite: bool = False, min_count: int = 1) -> dict:
    """Convert `source` into `out`; returns the manifest. Raises DatasetError on bad input (with
    problems.on_error == "raise"), leaving nothing at `out`."""
    out = out.rstrip("/")
    if tf.io.gfile.exists(out) and not overwrite:
        raise DatasetError(f"{out}: already exists (pass --overwrite to replace it)")
    examples, train_words = _check_captions(source.examples, problems)
    if not any(e.split == "train" for e in examples):
        raise DatasetError(f"{source.source}: no usable training examples")
    workers = workers or min(os.cpu_count() or 1, 8)

    parent = os.path.dirname(out)
    if parent:
        tf.io.gfile.makedirs(parent)
    tmp = f"{out}.incomplete-{secrets.token_hex(4)}"
    tf.io.gfile.makedirs(tmp)
    try:
        vocab = text.build_vocabulary(train_words, min_count=min_count)
        text.write_vocabulary(vocab, os.path.join(tmp, VOCABULARY))
        tokenizer = text.Tokenizer(os.path.join(tmp, VOCABULARY))
        splits = {}
        heights, widths, formats = [], [], set()
        for split in ("train", "test"):
            part = [e for e in examples if e.split == split]
            writer = _ShardWriter(tmp, split, int(shard_size_mb * 2**20))
            written = captions = 0
            part_ids = _caption_ids(tokenizer, part)
            for e, ids, result in zip(part, part_ids, _image_results(source, part, workers)):
                if result[0] != "ok":
                    problems.report(str(e.image_job[0] if isinstance(e.image_job, tuple) else e.key),
                                    result[1], e.key)
                    continue
                _, data, fmt, h, w = result
                writer.write(records.encode_example(
                    key=e.key, image=data, image_format=fmt, height=h, width=w,
                    captions=e.captions, caption_ids=ids, class_id=e.class_id,
                    attributes=e.attributes))
                written += 1
                captions += len(e.captions)
                heights.append(h)
                widths.append(w)
                formats.add(fmt)
            splits[split] = {"examples": written, "captions": captions, "shards": writer.finish()}
        manifest = {
            "format": FORMAT,
            "tool_version": __version__,
            "dataset": source.name,
            "source": source.source,
            "vocabulary": VOCABULARY,
            "vocab_size": len(vocab),
            "captions_per_image": source.captions_per_image,
            "image": {
                "formats": sorted(formats),
                "height": [min(heights), max(heights)] if heights else None,
                "width": [min(widths), max(widths)] if widths else None,
            },
            "splits": splits,
            "attributes": source.attributes,
            # The key order of "attributes" is lost to sort_keys; this is the order of each record's labels.
            "attribute_order": list(source.attributes),
            "skipped": problems.skipped,
            **({"details": source.extra} if source.extra else {}),
        }
        with tf.io.gfile.GFile(os.path.join(tmp, MANIFEST), "w") as f:
            f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if tf.io.gfile.exists(out):  # overwrite: swap, then drop the old copy
            old = f"{out}.replaced-{secrets.token_hex(4)}"
            tf.io.gfile.rename(out, old)
            tf.io.gfile.rename(tmp, out)
            _remove(old)
        else:
            tf.io.gfile.rename(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    return manifest
