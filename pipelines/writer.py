"""Sharded, atomic TFRecord writing: a checked `Source` -> shards + vocab.txt + manifest.json.

Everything is written into `<out>.incomplete-<random>` and renamed to `<out>` only when the last
shard is closed, so an error, Ctrl-C or a crash never leaves something at `<out>` that looks like
a finished dataset. On an error the incomplete folder is removed; after a `kill -9` it stays,
named as what it is. The manifest records every shard's byte size and sha256 (`shard_files`),
read back from the finished files, for `mirrorgan_tf.data.check_shards` and `verify_shards`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import secrets
from typing import Iterator, Optional

import tensorflow as tf

from mirrorgan_tf import __version__, records, text
from mirrorgan_tf.data import SHARD_FILES, file_digest
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


def _check_captions(examples: list[RawExample], problems: Problems) -> tuple[list[RawExample], list[list[list[str]]]]:
    """Report captions with no words at all. Returns the surviving examples and their captions'
    words (one list of word lists per example)."""
    words = _split_words([c for e in examples for c in e.captions])
    kept, kept_words, pos = [], [], 0
    for e in examples:
        mine = words[pos:pos + len(e.captions)]
        pos += len(e.captions)
        empty = [j for j, w in enumerate(mine) if not w]
        if empty:
            j = empty[0]
            problems.report(e.caption_origins[j], f"empty caption ({e.captions[j]!r} has no words)", e.key)
            continue
        kept.append(e)
        kept_words.append(mine)
    return kept, kept_words


def _settle_vocabulary(examples: list[RawExample], words: list[list[list[str]]], problems: Problems, *,
                       min_count: int, given: Optional[list[str]], given_path: str = ""
                       ) -> tuple[list[RawExample], list[str]]:
    """The vocabulary, and the examples every caption of which keeps at least one word under it.

    A caption whose words are all outside the vocabulary would be stored with no word ids: a
    DAMSM batch holding one drives the word loss to ~1e10 (finite, so no guard fires), and the
    generator is conditioned on nothing. It is bad input like an empty caption. Ways there: every
    word rarer than `min_count`, a test caption whose words never occur in training, a given
    vocabulary that shares no word with the caption. Dropping a training example changes the
    counts a built vocabulary comes from, so building and checking repeat until nothing changes
    (the kept set only shrinks, so this ends).
    """
    while True:
        if given is not None:
            vocab = given
        else:
            vocab = text.build_vocabulary(
                [w for e, ws in zip(examples, words) if e.split == "train" for w in ws], min_count=min_count)
        known = set(vocab[1:])  # id 0 is <end>; split_words never yields "<...>" tokens
        kept, kept_words = [], []
        for e, ws in zip(examples, words):
            bad = [j for j, w in enumerate(ws) if known.isdisjoint(w)]
            if bad:
                j = bad[0]
                where = (f"the vocabulary {given_path}" if given is not None else
                         f"the vocabulary built from the training captions (--min-count {min_count})")
                problems.report(e.caption_origins[j], f"no word of this caption is in {where}: "
                                                      f"{e.captions[j]!r}", e.key)
                continue
            kept.append(e)
            kept_words.append(ws)
        if len(kept) == len(examples) or given is not None:
            return kept, vocab
        examples, words = kept, kept_words


def _file_identity(path: str):
    """Something equal for two paths to one local file (hard or symbolic links, `..`); the path
    itself for a remote file."""
    if "://" in path:
        return path
    try:
        st = os.stat(path)
    except OSError:
        return path
    return (st.st_dev, st.st_ino)


def _file_size(path: str) -> Optional[int]:
    try:
        return tf.io.gfile.stat(path).length if "://" in path else os.path.getsize(path)
    except Exception:  # the image worker reports an unreadable file later, by name
        return None


def _sha256(path: str) -> Optional[str]:
    from pipelines.images import read_bytes

    try:
        return hashlib.sha256(read_bytes(path)).hexdigest()
    except Exception:
        return None


def _check_overlap(examples: list[RawExample], problems: Problems) -> list[RawExample]:
    """Report any image that is in both splits, so evaluation never scores training images:
    one key in both (a CUB name in both split lists), one file under two keys (links, absolute
    and relative paths), or byte-identical files under two names (only files of equal size are
    read and hashed). A key listed twice in one split is reported too. With on_error="skip" the
    test copy is dropped (train keeps the image) and listed. Runs before any image is decoded."""
    train = [e for e in examples if e.split == "train"]
    by_key = {e.key: e for e in train}
    by_file = {_file_identity(e.image_path): e for e in train if e.image_path}
    by_size = collections.defaultdict(list)
    for e in train:
        if e.image_path:
            by_size[_file_size(e.image_path)].append(e)
    by_size.pop(None, None)
    digests: dict[str, Optional[str]] = {}

    def digest(e):
        if e.image_path not in digests:
            digests[e.image_path] = _sha256(e.image_path)
        return digests[e.image_path]

    seen: dict[tuple[str, str], RawExample] = {}
    kept = []
    for e in examples:
        where = e.listed_in or e.image_path or e.key
        first = seen.get((e.split, e.key))
        if first is not None:
            problems.report(where, f"{e.key} is listed twice in the {e.split} split", e.key)
            continue
        seen[(e.split, e.key)] = e
        if e.split != "test":
            kept.append(e)
            continue
        twin, how = by_key.get(e.key), "the same name"
        if twin is None and e.image_path:
            twin, how = by_file.get(_file_identity(e.image_path)), "the same file as {}"
            if twin is None:
                for other in by_size.get(_file_size(e.image_path), []):
                    if digest(other) is not None and digest(other) == digest(e):
                        twin, how = other, "a byte-identical copy of {}"
                        break
        if twin is not None:
            how = how.format(twin.image_path)
            problems.report(where, f"{e.key} is in the test split and, as {how}, in the train split "
                                   f"({twin.listed_in or twin.key}); evaluation would score a training image "
                                   "(skip: kept in train only)", e.key)
            continue
        kept.append(e)
    return kept


def _remove(path: str) -> None:
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


def read_given_vocabulary(path: str) -> tuple[list[str], str]:
    """A vocabulary to prepare with instead of building one (`--vocab`): (words, sha256 of the
    file's bytes). Accepts what `mirrorgan_tf.text.read_vocabulary` accepts (with or without
    `<unk>`); raises DatasetError naming the file and the line otherwise."""
    from pipelines.images import read_bytes

    try:
        data = read_bytes(path)
    except Exception as e:
        raise DatasetError(f"--vocab {path}: cannot read file ({getattr(e, 'strerror', None) or e})") from None
    try:
        words = text.read_vocabulary(path)
    except ValueError as e:
        raise DatasetError(f"--vocab {e}") from None
    return words, hashlib.sha256(data).hexdigest()


def write_dataset(source: Source, out: str, problems: Problems, *, shard_size_mb: float = 64,
                  workers: int = 0, overwrite: bool = False, min_count: int = 1,
                  vocab: Optional[str] = None) -> dict:
    """Convert `source` into `out`; returns the manifest. Raises DatasetError on bad input (with
    problems.on_error == "raise"), leaving nothing at `out`.

    `vocab`: a vocabulary file to use instead of building one from the training captions (then
    `min_count` must stay 1); it is written to `out/vocab.txt` with LF line ends and recorded in
    the manifest with its path and sha256."""
    out = out.rstrip("/")
    if tf.io.gfile.exists(out) and not overwrite:
        raise DatasetError(f"{out}: already exists (pass --overwrite to replace it)")
    if vocab is not None and min_count != 1:
        raise DatasetError(f"--min-count {min_count} and --vocab {vocab}: a given vocabulary is used as it is")
    given, given_sha = read_given_vocabulary(vocab) if vocab is not None else (None, None)
    examples = _check_overlap(source.examples, problems)
    examples, words = _check_captions(examples, problems)
    examples, vocab_words = _settle_vocabulary(examples, words, problems, min_count=min_count,
                                               given=given, given_path=vocab or "")
    if not any(e.split == "train" for e in examples):
        raise DatasetError(f"{source.source}: no usable training examples")
    workers = workers or min(os.cpu_count() or 1, 8)

    parent = os.path.dirname(out)
    if parent:
        tf.io.gfile.makedirs(parent)
    tmp = f"{out}.incomplete-{secrets.token_hex(4)}"
    tf.io.gfile.makedirs(tmp)
    try:
        text.write_vocabulary(vocab_words, os.path.join(tmp, VOCABULARY))
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
                    problems.report(e.image_path or e.key, result[1], e.key)
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
        # Size and sha256 of each shard as it lies on disk, read back once now: every start
        # compares the sizes (data.check_shards), `python -m pipelines.check` the checksums.
        shard_files = {}
        for name in (n for info in splits.values() for n in info["shards"]):
            size, digest = file_digest(os.path.join(tmp, name))
            shard_files[name] = {"bytes": size, "sha256": digest}
        manifest = {
            "format": FORMAT,
            "tool_version": __version__,
            "dataset": source.name,
            "source": source.source,
            "vocabulary": VOCABULARY,
            "vocab_size": len(vocab_words),
            "vocabulary_origin": ({"given": True, "source": vocab, "sha256": given_sha} if vocab is not None
                                  else {"given": False, "built_from": "training captions", "min_count": min_count}),
            "captions_per_image": source.captions_per_image,
            "image": {
                "formats": sorted(formats),
                "height": [min(heights), max(heights)] if heights else None,
                "width": [min(widths), max(widths)] if widths else None,
            },
            "splits": splits,
            SHARD_FILES: shard_files,
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
