"""The tf.data input pipeline over prepared TFRecord shards.

Per image and step: one of its captions at random, cut or padded to `words_num` (a random in-order
subset of an over-long caption's words in training, its first words otherwise), and the original's
augmentation (resize by 76/64, random crop, horizontal flip), giving the image at every generator
scale in [-1, 1]. Randomness is stateless and seeded from `data.seed`, so a pipeline is
reproducible. Batches have static shapes, so training steps never retrace.

A batch is a dict:
    images       tuple of float32 [B, s, s, 3], one per generator stage (smallest first)
    caption_ids  int32 [B, words_num] (0 = end/padding)
    caption_len  int32 [B]
    caption      string [B], the chosen caption's text
    noise        float32 [B, z_dim], the generator's z for this example and step
    ca_noise     float32 [B, condition_dim], the conditioning augmentation's epsilon
    class_id     int64 [B] (-1 where unknown)
    attributes   int64 [B, A] (A = number of attributes in the manifest; 0 for most datasets)
    key          string [B]
With `train.wrong_word_swaps` set, training batches also hold (`text.WordSwap`):
    swapped_ids  int32 [B, words_num], caption_ids with one word swapped for another class's
    swapped      float32 [B], 1.0 where a swap was made, 0.0 where the caption had no such word
"""

from __future__ import annotations

import atexit
import gc
import hashlib
import json
import os
import re
import struct
import threading
import weakref
from typing import Optional

import numpy as np

import tensorflow as tf

from mirrorgan_tf import records, text
from mirrorgan_tf.config import Config
from mirrorgan_tf.errors import MirrorganError

AUTOTUNE = tf.data.AUTOTUNE
MANIFEST = "manifest.json"
LOAD_SCALE = 76 / 64  # the original resizes to 76/64 of the final size, then crops
# The GAN stage's sampler draws one batch of this many fixed test captions (the first test
# images, in manifest order, no batch remainder), so the test split must hold at least this many.
SAMPLE_CAPTIONS = 8
TRAINING_STAGES = ("damsm", "stream", "gan")


class DataError(MirrorganError, ValueError):
    """A prepared dataset is missing, incomplete or does not fit the config; names the file."""


def load_manifest(data_dir: str) -> dict:
    path = os.path.join(data_dir, MANIFEST)
    if not tf.io.gfile.exists(path):
        raise DataError(f"{path}: no prepared dataset here (run python -m pipelines.prepare)")
    with tf.io.gfile.GFile(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None


# manifest.json's record of every shard: {basename: {"bytes": int, "sha256": hex}}. Datasets
# prepared before it was kept have none (`check_shards` then checks only that the shards exist).
SHARD_FILES = "shard_files"
SHARD_FIX = ("copy the file again from where the dataset was prepared, or prepare the dataset again "
             "(python -m pipelines.prepare ... --overwrite)")
_CHUNK = 1 << 20  # bytes per read when hashing: bounded memory for any shard size
# How TensorFlow's record reader words a damaged record (tensorflow/core/lib/io/record_reader.cc).
_READ_ERROR = re.compile(r"(truncated|corrupted) record at (\d+)")


def file_digest(path: str) -> tuple[int, str]:
    """(size in bytes, sha256 hex digest) of a file, read in 1 MiB chunks through tf.io.gfile (so
    `gs://` works, and memory stays bounded whatever the size)."""
    digest, size = hashlib.sha256(), 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return size, digest.hexdigest()
            digest.update(chunk)
            size += len(chunk)


def _listed_shards(manifest: dict) -> list[tuple[str, str]]:
    """(split, shard basename) of every shard the manifest lists, in manifest order."""
    return [(split, name) for split, info in (manifest.get("splits") or {}).items()
            for name in (info or {}).get("shards", [])]


def check_shards(data_dir: str, manifest: Optional[dict] = None) -> tuple[list[str], Optional[str]]:
    """What can be told about the shards without reading them: every listed shard exists and, where
    the manifest records it (`SHARD_FILES`), has its recorded byte size. One stat per shard, so
    cheap enough for every start on any dataset; a byte changed in place keeps the size and is
    caught by `verify_shards` or, at read time, by the records' CRCs (`explain_read_error`).

    Returns (problems, note): each problem names the shard, both sizes and the fix; `note` says
    which shards could not be size-checked (a manifest written before sizes were recorded) and
    what checks them, or is None."""
    manifest = manifest if manifest is not None else load_manifest(data_dir)
    recorded = manifest.get(SHARD_FILES) or {}
    problems, unchecked = [], []
    missing: dict[str, list[str]] = {}
    for split, name in _listed_shards(manifest):
        path = os.path.join(data_dir, name)
        if not tf.io.gfile.exists(path):
            missing.setdefault(split, []).append(name)
            continue
        want = (recorded.get(name) or {}).get("bytes")
        if want is None:
            unchecked.append(name)
            continue
        have = tf.io.gfile.stat(path).length
        if have != want:
            problems.append(f"{path}: {have} bytes, but the manifest records {want} "
                            f"({'truncated' if have < want else 'longer than written'}): {SHARD_FIX}")
    for split, names in missing.items():
        problems.insert(0, f"the {split} split's shard {names[0]} is missing"
                        + (f" (and {len(names) - 1} more)" if len(names) > 1 else ""))
    note = None
    if unchecked:
        note = (f"{os.path.join(data_dir, MANIFEST)} records no size for {len(unchecked)} shard(s) "
                f"({unchecked[0]}{', ...' if len(unchecked) > 1 else ''}; prepared before sizes and checksums were "
                f"kept): they were not size-checked. `python -m pipelines.check {data_dir}` reads every record "
                "of them; preparing again records sizes and checksums")
    return problems, note


def _read_through(path: str) -> tuple[Optional[int], Optional[str]]:
    """(records, None) for a shard that reads to its end, or (None, TensorFlow's message) at the
    first damaged record; the reader checks every record's length and data CRC."""
    try:
        count = tf.data.TFRecordDataset(path, buffer_size=_CHUNK).reduce(
            tf.constant(0, tf.int64), lambda c, _: c + 1)
    except tf.errors.DataLossError as e:
        return None, e.message.strip().splitlines()[0]
    return int(count), None


def _where(message: str) -> str:
    """'truncated record at byte N' from TensorFlow's reader message (the message when unparsed)."""
    found = _READ_ERROR.search(message)
    return f"{found.group(1)} record at byte {found.group(2)}" if found else message


def _damage(path: str, message: str) -> str:
    return f"{path}: {_where(message)}: the shard is damaged; {SHARD_FIX}"


def verify_shards(data_dir: str, progress=None) -> tuple[list[str], list[str]]:
    """Read every shard and check it: its sha256 and size against the manifest where recorded;
    where not (a dataset prepared before they were kept), every record's CRCs, and the records of
    each split against its example count. Reads the whole dataset (about as long as copying it),
    so it runs on demand (`python -m pipelines.check`), never on every start.

    `progress(name, outcome)` is called after each shard. Returns (problems, notes), each problem
    naming the shard, what differs and the fix (for a checksum mismatch, also the first record
    that fails its CRC, when one does)."""
    manifest = load_manifest(data_dir)
    problems, note = check_shards(data_dir, manifest)
    recorded = manifest.get(SHARD_FILES) or {}
    counted: dict[str, list] = {}  # split -> records per shard read without a recorded checksum
    for split, name in _listed_shards(manifest):
        path = os.path.join(data_dir, name)
        if not tf.io.gfile.exists(path) or any(p.startswith(f"{path}:") for p in problems):
            continue  # already reported by check_shards
        want = (recorded.get(name) or {}).get("sha256")
        if want is not None:
            _, have = file_digest(path)
            if have == want:
                outcome = "sha256 ok"
            else:
                _, error = _read_through(path)
                where = f"; {_where(error)}" if error else ""
                problems.append(f"{path}: sha256 {have}, but the manifest records {want}{where}: "
                                f"the shard is damaged; {SHARD_FIX}")
                outcome = "sha256 differs"
        else:
            records, error = _read_through(path)
            counted.setdefault(split, []).append(records)
            if error:
                problems.append(_damage(path, error))
            outcome = "damaged" if error else f"{records} records, CRCs ok (no checksum recorded)"
        if progress:
            progress(name, outcome)
    splits = manifest.get("splits") or {}
    for split, records in counted.items():
        # Only a split read whole, each shard without a checksum: a shard cut exactly at a
        # record boundary reads cleanly, and only the count shows it.
        if len(records) == len(splits[split].get("shards", [])) and None not in records:
            want = int(splits[split].get("examples", 0))
            if sum(records) != want:
                problems.append(f"the {split} split's shards hold {sum(records)} records, but the manifest counts "
                                f"{want} examples (a shard cut at a record boundary?): {SHARD_FIX}")
    notes = [] if note is None else [
        f"{os.path.join(data_dir, MANIFEST)} records no size or checksum for some shards (prepared before they "
        "were kept): their records' CRCs and the split's count were checked instead; preparing again records them"]
    return problems, notes


def explain_read_error(data_dir: str, error: Exception) -> Optional[DataError]:
    """The DataError to raise for a TensorFlow DataLossError met while reading `data_dir`'s shards
    (the reader's message, e.g. "truncated record at 1707844", names no file): it finds the shard
    (a size differing from the manifest first, else the first shard, in manifest order, whose
    records fail to read) and names it, the byte offset and the fix. Reads shards until the damaged
    one, so it is for a run that is stopping anyway. None when no shard reads badly now (the error
    came from elsewhere, e.g. a checkpoint): the caller re-raises the original."""
    try:
        manifest = load_manifest(data_dir)
    except DataError:
        return None
    problems, _ = check_shards(data_dir, manifest)
    if problems:
        return DataError(f"reading {data_dir} failed ({str(error).strip().splitlines()[0][-120:]}):\n  - "
                         + "\n  - ".join(problems))
    for _, name in _listed_shards(manifest):
        path = os.path.join(data_dir, name)
        _, message = _read_through(path)
        if message:
            return DataError(_damage(path, message))
    return None


def vocabulary_path(data_dir: str) -> str:
    return os.path.join(data_dir, load_manifest(data_dir)["vocabulary"])


def vocab_size(cfg: Config) -> int:
    """The vocabulary size the networks are built with: the manifest's, checked against the config."""
    manifest = load_manifest(cfg.data.dir)
    size = manifest["vocab_size"]
    if cfg.data.vocab_size and cfg.data.vocab_size != size:
        raise DataError(f"data.vocab_size={cfg.data.vocab_size}, but {os.path.join(cfg.data.dir, MANIFEST)} "
                        f"says the vocabulary has {size} words")
    return size


def word_swap(cfg: Config) -> text.WordSwap:
    """The `text.WordSwap` of `train.wrong_word_swaps` on the prepared vocabulary. Raises DataError
    naming the key, the vocabulary file and the word when a listed word is not in it."""
    path = vocabulary_path(cfg.data.dir)
    try:
        return text.WordSwap(text.read_vocabulary(path), cfg.train.wrong_word_swaps, vocab_path=path)
    except text.VocabularyError as e:
        raise DataError(str(e)) from None


def check_prepared(cfg: Config, stages=TRAINING_STAGES) -> dict:
    """Refuse, before any stage runs, a prepared dataset too small for what `stages` will do with
    it; returns the manifest.

    Checked (every failure is listed in one DataError, each naming the split, its count and the
    config key or constant that asks for more):
    - the train split holds at least each stage's global batch (damsm.batch_size,
      stream.batch_size, train.batch_size): batches have a static shape (drop_remainder) over a
      repeated stream, so a smaller split repeats images within a batch, and DAMSM would take an
      image's own caption as its negative;
    - for "gan": the test split holds at least SAMPLE_CAPTIONS images (the sampler's one batch;
      fewer ended the stage with StopIteration after DAMSM and STREAM had trained);
    - data.vocab_size, when set, equals the manifest's; every listed shard exists and has the
      byte size the manifest records (`check_shards`; a manifest without sizes is accepted with a
      printed note saying the sizes went unchecked);
    - for "gan", and for "damsm" under damsm.word_swap_negatives: every word of
      `train.wrong_word_swaps` is in the vocabulary (`word_swap`).
    `stages`: the training stages that will run (a subset of TRAINING_STAGES). How the batches
    split over replicas is the config's question, checked once the strategy exists
    (`config.check_replica_batches`).
    """
    path = os.path.join(cfg.data.dir, MANIFEST)
    manifest = load_manifest(cfg.data.dir)
    unknown = [s for s in stages if s not in TRAINING_STAGES]
    if unknown:
        raise ValueError(f"check_prepared: unknown stages {unknown} (known: {', '.join(TRAINING_STAGES)})")
    splits = manifest.get("splits") or {}

    def count(split):
        return int((splits.get(split) or {}).get("examples", 0))

    problems = []
    batches = {"damsm": ("damsm.batch_size", cfg.damsm.batch_size),
               "stream": ("stream.batch_size", cfg.stream.batch_size),
               "gan": ("train.batch_size", cfg.train.batch_size)}
    train = count("train")
    for stage in stages:
        key, batch = batches[stage]
        if train < batch:
            problems.append(f"the train split has {train} images, fewer than {key}={batch} (one {stage} batch "
                            f"of distinct images): lower {key} or prepare more training images")
    if "gan" in stages and count("test") < SAMPLE_CAPTIONS:
        problems.append(f"the test split has {count('test')} images, fewer than the {SAMPLE_CAPTIONS} fixed sample "
                        f"captions the gan stage draws from it (mirrorgan_tf.data.SAMPLE_CAPTIONS): prepare more "
                        "test images (pipelines.prepare --num-test, --test-fraction, or a longer test split list)")
    if cfg.data.vocab_size and cfg.data.vocab_size != manifest.get("vocab_size"):
        problems.append(f"data.vocab_size={cfg.data.vocab_size}, but the vocabulary has {manifest.get('vocab_size')} "
                        "words (set data.vocab_size=0 to take it from the manifest)")
    shard_problems, note = check_shards(cfg.data.dir, manifest)
    problems += shard_problems
    if ("gan" in stages or ("damsm" in stages and cfg.damsm.word_swap_negatives)) and cfg.train.wrong_word_swaps:
        try:
            word_swap(cfg)
        except DataError as e:
            problems.append(str(e))
    if "gan" in stages and cfg.model.pair_discriminator and not _has_classes(cfg.data.dir, manifest):
        problems.append("model.pair_discriminator=true shows the discriminators pairs of real images of one class, "
                        "but this dataset has neither attribute labels nor class ids (its first training record "
                        "has class -1): set model.pair_discriminator=false, or prepare it with classes")
    if problems:
        raise DataError(f"{path}: this dataset cannot be trained on as configured:\n  - " + "\n  - ".join(problems))
    if note:
        print(f"note: {note}", flush=True)
    return manifest


def _has_classes(data_dir: str, manifest: dict) -> bool:
    """Whether the train split's images carry a class: attribute labels (the manifest lists them)
    or a class id (read from the first training record: datasets label all their images or none)."""
    if manifest.get("attributes"):
        return True
    try:
        first = next(iter(tf.data.TFRecordDataset(_shards(data_dir, manifest, "train")[:1]).take(1)), None)
    except (tf.errors.OpError, DataError):
        return False  # an unreadable shard is check_shards' to report
    return first is not None and int(records.parse_example(first)["class_id"]) >= 0


def class_keys(class_id: tf.Tensor, attributes: tf.Tensor) -> tf.Tensor:
    """int64 ids that are equal for images of one class: the class id where known (>= 0), else the
    combination of the attribute labels (shapes: colour, shape, size, position; each below 1,000),
    else -1. class_id int64 [...]; attributes int64 [..., A] with A static (0 allowed)."""
    if attributes.shape[-1]:
        radix = tf.constant([1000**k for k in range(attributes.shape[-1])], tf.int64)
        return tf.where(class_id >= 0, class_id, tf.reduce_sum(attributes * radix, axis=-1))
    return class_id


def same_class_pairs(ds: tf.data.Dataset, num_attributes: int) -> tf.data.Dataset:
    """Examples of `ds` (unbatched `_Example` dicts) regrouped so that examples 2i and 2i + 1 are
    two images of one class (`class_keys`), for `model.pair_discriminator`: each class gathers
    its examples as they arrive and lets two go as soon as it holds two, so the order still
    follows the shuffled input. Every class needs at least two images; one left over at the end
    of a finite input is dropped."""
    def key(x):
        attributes = tf.ensure_shape(x["attributes"], [num_attributes])
        return class_keys(x["class_id"], attributes)

    return (ds.group_by_window(key, lambda _, window: window.batch(2, drop_remainder=True), window_size=2)
            .unbatch())


def _shards(data_dir: str, manifest: dict, split: str) -> list[str]:
    if split not in manifest["splits"]:
        raise DataError(f"{os.path.join(data_dir, MANIFEST)}: no split {split!r} "
                        f"(has {', '.join(manifest['splits'])})")
    files = [os.path.join(data_dir, s) for s in manifest["splits"][split]["shards"]]
    if not files:
        raise DataError(f"{os.path.join(data_dir, MANIFEST)}: split {split!r} is empty")
    return files


def _resize_shorter_side(image: tf.Tensor, size: int) -> tf.Tensor:
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    new = tf.cast(tf.math.round(shape * scale), tf.int32)
    new = tf.maximum(new, size)  # rounding must never leave a side short of the crop
    return tf.image.resize(image, new, method="bilinear", antialias=True)


def _center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top:top + size, left:left + size]


class _Example:
    """The per-example map function, configured once per pipeline."""

    def __init__(self, cfg: Config, training: bool):
        self.swap = word_swap(cfg) if training and cfg.train.wrong_word_swaps else None
        self.sizes = cfg.image_sizes
        self.words_num = cfg.data.words_num
        self.training = training
        self.crop = training and cfg.data.random_crop
        self.flip = training and cfg.data.random_flip
        self.z_dim = cfg.model.z_dim
        self.condition_dim = cfg.model.condition_dim

    def image(self, encoded: tf.Tensor, seed: tf.Tensor) -> tuple:
        final = self.sizes[-1]
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image = tf.cast(image, tf.float32) / 127.5 - 1.0
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if self.crop:
            image = _resize_shorter_side(image, int(final * LOAD_SCALE))
            image = tf.image.stateless_random_crop(image, [final, final, 3], seed=crop_seed)
        else:
            image = _center_crop(_resize_shorter_side(image, final), final)
        if self.flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        image = tf.ensure_shape(image, [final, final, 3])
        scaled = [tf.image.resize(image, [s, s], method="bilinear", antialias=True) for s in self.sizes[:-1]]
        return tuple(tf.clip_by_value(x, -1.0, 1.0) for x in scaled + [image])

    def caption(self, ids: tf.RaggedTensor, captions: tf.Tensor, seed: tf.Tensor):
        """A random caption among those with at least one known word."""
        pick_seed, words_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        usable = tf.where(ids.row_lengths() > 0)[:, 0]
        # Preparation refuses captions without an in-vocabulary word; data prepared before that
        # rule may still hold an image with none: fall back to its first caption (empty).
        usable = tf.cond(tf.size(usable) > 0, lambda: usable, lambda: tf.zeros([1], tf.int64))
        choice = tf.random.stateless_uniform([], pick_seed, 0, tf.size(usable, tf.int64), dtype=tf.int64)
        index = usable[choice]
        padded, length = text.fit_caption(ids[index], self.words_num, words_seed if self.training else None)
        return tf.cast(padded, tf.int32), length, captions[index]

    def __call__(self, serialized: tf.Tensor, seed: tf.Tensor) -> dict:
        ex = records.parse_example(serialized)
        image_seed, caption_seed, noise_seed, ca_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
        caption_ids, caption_len, caption = self.caption(ex["caption_ids"], ex["captions"], caption_seed)
        out = {
            # The generator's noise travels with the example, so a step computes the same thing
            # however the batch is split across replicas.
            "noise": tf.random.stateless_normal([self.z_dim], noise_seed),
            "ca_noise": tf.random.stateless_normal([self.condition_dim], ca_seed),
            "images": self.image(ex["image"], image_seed),
            "caption_ids": caption_ids,
            "caption_len": caption_len,
            "caption": caption,
            "class_id": ex["class_id"],
            "attributes": ex["attributes"],
            "key": ex["key"],
        }
        if self.swap is not None:
            # Folded in, not split off: the other seeds stay what they are without swaps.
            out["swapped_ids"], out["swapped"] = self.swap(
                caption_ids, caption_len, tf.random.experimental.stateless_fold_in(seed, 5))
        return out


# TFRecord framing (tensorflow/core/lib/io/record_writer.cc): per record a little-endian uint64
# length, a 4-byte masked CRC of the length, the data, a 4-byte masked CRC of the data.
_LENGTH, _CRC = 8, 4
_TABLES: dict = {}  # (path, size, mtime) of every shard -> its record table, built once per process


class RecordTable:
    """Where every record of a split lies in its shards, for reading records in any order
    (data.input_position=index): `shard` int32 [N] (index into `files`), `offset` int64 [N] (byte
    of the record's data in its shard), `length` int64 [N] (its bytes), N = the split's records in
    manifest order (shards in manifest order, records in file order).

    Built by reading each record's 12-byte header and seeking past its data, so its cost grows with
    the number of records, not their bytes (measured in benchmarks/input_position_size.py), and it
    is cached per process. Raises DataError naming the shard and the byte where a record runs past
    the end of its shard (a truncated copy). Records' CRCs are not checked here nor when read:
    `python -m pipelines.check` reads them all."""

    def __init__(self, files: list[str]):
        self.files = list(files)
        shards, offsets, lengths = [], [], []
        for i, path in enumerate(self.files):
            found = _scan_shard(path)
            shards += [i] * len(found)
            offsets += [o for o, _ in found]
            lengths += [n for _, n in found]
        self.shard = np.asarray(shards, np.int32)
        self.offset = np.asarray(offsets, np.int64)
        self.length = np.asarray(lengths, np.int64)
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        weakref.finalize(self, _close_all, self._fds)

    def __len__(self) -> int:
        return len(self.offset)

    @classmethod
    def of(cls, files: list[str]) -> "RecordTable":
        """The table of `files`, scanned once per process while the files stay as they are."""
        key = tuple((f, *_identity(f)) for f in files)
        if key not in _TABLES:
            _TABLES[key] = cls(files)
        return _TABLES[key]

    def read(self, shard, offset, length) -> bytes:
        """The data of one record (numpy scalars as tf.numpy_function passes them): os.pread on a
        local file (no shared file position, so parallel reads need no lock), a GFile seek and read
        on other file systems (gs://, ...)."""
        shard, offset, length = int(shard), int(offset), int(length)
        path = self.files[shard]
        if "://" in path:
            with tf.io.gfile.GFile(path, "rb") as f:
                f.seek(offset)
                raw = f.read(length)
        else:
            fd = self._fds.get(shard)
            if fd is None:
                with self._lock:
                    fd = self._fds.get(shard)
                    if fd is None:
                        fd = self._fds[shard] = os.open(path, os.O_RDONLY)
            raw = os.pread(fd, length, offset)
        if len(raw) != length:
            raise DataError(f"{path}: record at byte {offset} ends after {len(raw)} of its {length} bytes: "
                            f"the shard changed since the run started; {SHARD_FIX}")
        return raw


def _identity(path: str) -> tuple:
    stat = tf.io.gfile.stat(path)
    return stat.length, stat.mtime_nsec


def _close_all(fds: dict) -> None:
    for fd in fds.values():
        os.close(fd)


def _scan_shard(path: str) -> list[tuple[int, int]]:
    """(data offset, data length) of every record of one TFRecord shard, from the headers alone."""
    size = tf.io.gfile.stat(path).length
    found, position = [], 0
    with (open(path, "rb") if "://" not in path else tf.io.gfile.GFile(path, "rb")) as f:
        while position < size:
            f.seek(position)
            head = f.read(_LENGTH)
            (length,) = struct.unpack("<Q", head) if len(head) == _LENGTH else (size,)
            end = position + _LENGTH + _CRC + length + _CRC
            if end > size:
                raise DataError(f"{path}: truncated record at byte {position} (a record runs past the shard's "
                                f"{size} bytes): the shard is damaged; {SHARD_FIX}")
            found.append((position + _LENGTH + _CRC, length))
            position = end
    return found


# Salts of data.input_position=index's stateless draws, so that the epoch's order and the examples'
# augmentation seeds are independent streams of data.seed.
_ORDER_SALT, _EXAMPLE_SALT = 0x5EED_0001, 0x5EED_0002


def _indexed_records(cfg: Config, files: list[str], input_context: Optional[tf.distribute.InputContext],
                     start: int, repeat: bool) -> tf.data.Dataset:
    """(serialized record, int64 [2] seed) in data.input_position=index's order, from the worker's
    `start`-th example on (0-based, counted over epochs).

    Epoch e's order is a permutation of the split's N records, `tf.random.experimental.index_shuffle`
    keyed by (data.seed, e): every record exactly once per epoch, in any order. With W input
    pipelines (workers), worker w takes the epoch's slots w, w + W, w + 2W, ... (N // W of them; the
    N mod W records at the epoch's tail wait for the next epoch's draw), so the workers read disjoint
    records. Its k-th example is the one at epoch k // (N // W), slot (k mod (N // W)) W + w: a pure
    function of k, so a pipeline built at `start` yields what an unbroken one yields from there, and
    reads none of the records before it. Each example's random draws (caption, crop, flip, noise)
    are seeded by (data.seed, e N + slot)."""
    table = RecordTable.of(files)
    n = len(table)
    workers, worker = ((input_context.num_input_pipelines, input_context.input_pipeline_id)
                       if input_context is not None else (1, 0))
    per_worker = n // workers
    if per_worker == 0:
        raise DataError(f"{os.path.join(cfg.data.dir, MANIFEST)}: {n} training records cannot be shared among "
                        f"{workers} workers")
    shard, offset, length = (tf.constant(table.shard), tf.constant(table.offset), tf.constant(table.length))
    order_key = tf.constant([cfg.data.seed, _ORDER_SALT], tf.int64)
    example_key = tf.constant([cfg.data.seed, _EXAMPLE_SALT], tf.int64)

    def locate(k):
        epoch, slot = k // per_worker, (k % per_worker) * workers + worker
        record = tf.random.experimental.index_shuffle(
            slot, tf.random.experimental.stateless_fold_in(order_key, epoch), tf.constant(n - 1, tf.int64))
        return shard[record], offset[record], length[record], \
            tf.random.experimental.stateless_fold_in(example_key, epoch * n + slot)

    def read(i, at, size, seed):
        # Not stateful: the same (shard, offset, length) always reads the same bytes, and tf.data may
        # then run the reads in parallel (and keeps their order: deterministic map).
        raw = tf.numpy_function(table.read, [i, at, size], tf.string, stateful=False)
        return tf.ensure_shape(raw, []), seed

    end = np.iinfo(np.int64).max if repeat else per_worker
    return (tf.data.Dataset.range(start, end).map(locate)
            .map(read, num_parallel_calls=AUTOTUNE, deterministic=True))


def make_dataset(cfg: Config, split: str = "train", *, training: Optional[bool] = None,
                 batch_size: Optional[int] = None, repeat: Optional[bool] = None,
                 input_context: Optional[tf.distribute.InputContext] = None, start: int = 0) -> tf.data.Dataset:
    """Batches from `cfg.data.dir`. `batch_size` is the global batch (default `train.batch_size`);
    under a strategy pass the `input_context` and each pipeline yields per-replica batches.
    Training pipelines shuffle, augment and repeat by default; others do none of that.

    How training pipelines shuffle is `data.input_position`: "iterator" reads the shards in a
    shuffled interleave through a buffer of `data.shuffle_buffer` records; "index" reads the records
    in a seeded permutation of the whole split per epoch (`_indexed_records`), and then `start` (the
    number of this pipeline's examples already taken, a multiple of its batch) starts it further on
    without reading what it skips. Raises ValueError for a `start` other than 0 elsewhere."""
    training = split == "train" if training is None else training
    repeat = training if repeat is None else repeat
    manifest = load_manifest(cfg.data.dir)
    files = _shards(cfg.data.dir, manifest, split)
    num_attributes = len(manifest.get("attributes") or {})
    batch = batch_size or cfg.train.batch_size
    seed = cfg.data.seed
    if input_context is not None:
        batch = input_context.get_per_replica_batch_size(batch)
        seed += 1000 * input_context.input_pipeline_id

    indexed = training and cfg.data.input_position == "index"
    if start and not indexed:
        raise ValueError(f"make_dataset: start={start} needs a training pipeline with data.input_position=index")
    if indexed:
        if start % batch:
            raise ValueError(f"make_dataset: start={start} is not a multiple of the pipeline's batch {batch}")
        ds = _indexed_records(cfg, files, input_context, start, repeat)
    else:
        ds = tf.data.Dataset.from_tensor_slices(files)
        by_file = input_context is not None and len(files) >= input_context.num_input_pipelines
        if by_file:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        if training:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        # Training mixes shards; evaluation reads them in order, so batches follow the manifest.
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8) if training else 1,
                           num_parallel_calls=AUTOTUNE, deterministic=True)
        if input_context is not None and not by_file:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        if training:
            ds = ds.shuffle(cfg.data.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds))
    ds = ds.map(_Example(cfg, training), num_parallel_calls=AUTOTUNE)
    if training and cfg.model.pair_discriminator:
        if batch % 2:
            raise DataError(f"model.pair_discriminator=true pairs the examples of each batch: the batch of "
                            f"{batch} per pipeline must be even")
        ds = same_class_pairs(ds, num_attributes)
    ds = ds.batch(batch, drop_remainder=True)

    def fix_shapes(x):
        x["attributes"] = tf.ensure_shape(x["attributes"], [batch, num_attributes])
        return x

    ds = ds.map(fix_shapes)
    return ds.prefetch(AUTOTUNE)


def distributed_dataset(strategy: tf.distribute.Strategy, cfg: Config, split: str = "train", **kwargs):
    """The pipeline distributed through `strategy`: each input pipeline reads its own shards and
    yields per-replica batches of `train.batch_size / replicas`."""
    batch = kwargs.pop("batch_size", None) or cfg.train.batch_size
    if batch % strategy.num_replicas_in_sync:
        raise DataError(f"global batch size {batch} is not divisible by the "
                        f"{strategy.num_replicas_in_sync} replicas")
    return strategy.distribute_datasets_from_function(
        lambda ctx: make_dataset(cfg, split, batch_size=batch, input_context=ctx, **kwargs))


def _worker(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """(number of workers, this worker's index) of a strategy: (1, 0) without a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not spec:
        return 1, 0
    from tensorflow.python.distribute import multi_worker_util  # the ids distribute_datasets_from_function uses

    return (multi_worker_util.worker_count(spec, resolver.task_type),
            multi_worker_util.id_in_cluster(spec, resolver.task_type, resolver.task_id))


class _Unsaved:
    """Holds what a tf.Module must not track (and so save): index mode's iterator."""

    iterator = None
    taken = -1  # the batch number `iterator` yields next

    def __init__(self):
        _LIVE_INDEX_INPUTS.add(self)


# Index mode reads records with tf.numpy_function, which needs the GIL on tf.data's threads. An
# iterator still alive when the interpreter finalizes is destroyed there, waiting for the reads in
# flight, whose threads can no longer take the GIL: the process hangs after its last line, using
# no CPU (seen once in four exits right after a first batch). Dropping the iterators at exit,
# before finalization, lets those reads finish while Python still runs them.
_LIVE_INDEX_INPUTS: "weakref.WeakSet[_Unsaved]" = weakref.WeakSet()


@atexit.register
def _release_index_iterators() -> None:
    if not _LIVE_INDEX_INPUTS:  # every process that imports this module exits through here
        return
    for held in list(_LIVE_INDEX_INPUTS):
        held.iterator = None
    gc.collect()  # an iterator held in a reference cycle is freed only by the collector


# The checkpoint keys (under `input_pipeline`) that tell the two kinds of saved position apart.
_ITERATOR_KEY = "iterator/.ATTRIBUTES/ITERATOR_STATE"
_INDEX_KEY = "batches_taken/.ATTRIBUTES/VARIABLE_VALUE"


class DistributedInput(tf.Module):
    """The training input of a strategy whose position is saved with the checkpoint.

    `distributed_dataset`'s iterator cannot be checkpointed in TensorFlow 2.21 (its
    DistributedIterator and the multi-device iterator under it are not trackable), so this class
    keeps what can: each worker's input pipeline (with "iterator", worker i reads shard i, seed
    data.seed + 1000 i, as `distribute_datasets_from_function` would give it; with "index", slots
    i, i + W, ... of each epoch's permutation) yields the worker's whole batch (global batch /
    workers), and its position is saved in one of two ways (`data.input_position`):

    - "iterator": the pipeline's tf.data iterator is a tracked attribute (`iterator`), and the
      checkpoint holds its state: the shuffle buffer's serialized records, the read offsets of the
      shards, the random seeds' state, and the decoded batches already prefetched (hundreds of MB
      at COCO scale; benchmarks/input_position_size.py).
    - "index": the pipeline's order is a pure function of the example's number
      (`_indexed_records`), so the checkpoint holds the number of batches the worker has taken
      (`batches_taken`), the split's size (`examples`) and `data.seed` (`seed`), int64 scalars; the
      iterator is not saved, and is built again at the restored position on the next `next()`.

    Either way a stage resumed at step k gets the batches of steps k + 1, k + 2, ...

    The worker's batch is split among its local replicas only after it leaves the iterator, so the
    saved position does not depend on how many replicas a worker has: a run saved on 8 GPUs goes on
    with the same batches on 4, or on one device (and back). It depends on the number of workers
    and on the global batch, which the checkpoint records beside it (`pipelines`, `pipeline_batch`,
    int64 scalars); `resume_note` tells whether a saved position fits this input.

    `next(input)` gives one step's distributed batch: the worker's next batch cut into equal
    consecutive slices along the batch axis, one per local replica in replica order, as
    per-replica values (`experimental_distribute_values_from_function`); on one device the batch
    itself. Raises DataError when the global batch is not divisible by the replicas."""

    def __init__(self, strategy: tf.distribute.Strategy, cfg: Config, split: str = "train",
                 batch_size: Optional[int] = None, **kwargs):
        super().__init__(name="input_pipeline")
        batch = batch_size or cfg.train.batch_size
        replicas = strategy.num_replicas_in_sync
        if batch % replicas:
            raise DataError(f"global batch size {batch} is not divisible by the {replicas} replicas")
        workers, worker = _worker(strategy)
        # One "replica" per pipeline: each pipeline yields the worker's whole batch (batch / workers).
        context = tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=worker,
                                             num_replicas_in_sync=workers)
        self._strategy = strategy
        self._local = replicas // workers
        self._first = worker * self._local
        self.mode = cfg.data.input_position
        self._make = lambda start=0: iter(make_dataset(cfg, split, batch_size=batch, input_context=context,
                                                       start=start, **kwargs))
        self.pipelines = tf.Variable(workers, dtype=tf.int64, trainable=False, name="pipelines")
        self.pipeline_batch = tf.Variable(batch // workers, dtype=tf.int64, trainable=False, name="pipeline_batch")
        if self.mode == "index":
            self._unsaved = _Unsaved()
            examples = len(RecordTable.of(_shards(cfg.data.dir, load_manifest(cfg.data.dir), split)))
            with tf.device("/cpu:0"):  # read every step: keep it beside the host's pipeline
                self.batches_taken = tf.Variable(0, dtype=tf.int64, trainable=False, name="batches_taken")
            self.examples = tf.Variable(examples, dtype=tf.int64, trainable=False, name="examples")
            self.seed = tf.Variable(cfg.data.seed, dtype=tf.int64, trainable=False, name="seed")
        else:
            self.iterator = self._make()

    def resume_note(self, prefix: str) -> Optional[str]:
        """None when the input position saved in checkpoint `prefix` (under `input_pipeline`) can
        continue in this input; else why not, in words: it was saved by another number of workers
        or another global batch (each worker's pipeline reads other shards then), before the
        checkpoint recorded its layout (its batches may be per-replica ones), with the other
        `data.input_position`, or (index) for another split size or data.seed (its numbers would
        name other examples)."""
        saved = {name for name, _ in tf.train.list_variables(prefix)}
        keys = {k: f"{self.name}/{k}/.ATTRIBUTES/VARIABLE_VALUE" for k in ("pipelines", "pipeline_batch")}
        if not all(key in saved for key in keys.values()):
            return "it was saved before checkpoints recorded the input's layout"
        then = {k: int(tf.train.load_variable(prefix, key)) for k, key in keys.items()}
        now = {"pipelines": int(self.pipelines.numpy()), "pipeline_batch": int(self.pipeline_batch.numpy())}
        if then != now:
            return (f"it was saved by {then['pipelines']} worker(s) reading {then['pipeline_batch']} examples a "
                    f"step each, this run has {now['pipelines']} reading {now['pipeline_batch']}")
        was = "index" if f"{self.name}/{_INDEX_KEY}" in saved else "iterator"
        if was != self.mode:
            return (f"it was saved with data.input_position={was}, this run has {self.mode}; set it back to {was} "
                    "to continue the data")
        if self.mode == "index":
            then = [int(tf.train.load_variable(prefix, f"{self.name}/{k}/.ATTRIBUTES/VARIABLE_VALUE"))
                    for k in ("examples", "seed")]
            now = [int(self.examples.numpy()), int(self.seed.numpy())]
            if then != now:
                return (f"it counts batches of {then[0]} training examples in data.seed={then[1]}'s order, this run "
                        f"has {now[0]} in data.seed={now[1]}'s")
        return None

    def start_over(self) -> None:
        """Back to the input's first batch (a position that `resume_note` found unfit may have been
        read in part, e.g. from a damaged newer checkpoint)."""
        if self.mode == "index":
            self.batches_taken.assign(0)
            self._unsaved.iterator = None
        else:
            self.iterator = self._make()

    def _next_batch(self):
        if self.mode != "index":
            return next(self.iterator)
        held = self._unsaved
        taken = int(self.batches_taken.numpy())
        if held.iterator is None or held.taken != taken:  # first batch, or a position restored since
            held.iterator = self._make(taken * int(self.pipeline_batch.numpy()))
        batch = next(held.iterator)
        held.taken = taken + 1
        self.batches_taken.assign(held.taken)
        return batch

    def __iter__(self):
        return self

    def __next__(self):
        batch = self._next_batch()
        if self._local == 1 and isinstance(self._strategy, tf.distribute.OneDeviceStrategy):
            return batch
        parts = [tf.split(t, self._local, axis=0) for t in tf.nest.flatten(batch)]

        def on_replica(ctx):
            i = ctx.replica_id_in_sync_group - self._first
            return tf.nest.pack_sequence_as(batch, [p[i] for p in parts])

        return self._strategy.experimental_distribute_values_from_function(on_replica)


def shard_files(cfg: Config, split: str) -> list[str]:
    return _shards(cfg.data.dir, load_manifest(cfg.data.dir), split)


def attribute_names(manifest: dict) -> list[str]:
    """The attribute labels' names in the order each record stores them (shapes: colour, shape,
    size, position); [] for datasets without attributes."""
    return list(manifest.get("attribute_order") or [])


def eval_images(cfg: Config, split: str = "test", batch_size: int = 64, size: Optional[int] = None) -> tf.data.Dataset:
    """Every image of a split once, in manifest order (no augmentation, last batch kept): dicts of
    images float32 [b, size, size, 3] in [-1, 1] (default: the final generator size), class_id and
    attributes. For metrics on real images."""
    size = size or cfg.image_sizes[-1]
    manifest = load_manifest(cfg.data.dir)
    files = _shards(cfg.data.dir, manifest, split)
    num_attributes = len(manifest.get("attributes") or {})

    def load(serialized):
        ex = records.parse_example(serialized)
        image = tf.io.decode_image(ex["image"], channels=3, expand_animations=False)
        image = tf.cast(image, tf.float32) / 127.5 - 1.0
        image = tf.ensure_shape(_center_crop(_resize_shorter_side(image, size), size), [size, size, 3])
        return {"images": tf.clip_by_value(image, -1.0, 1.0), "class_id": ex["class_id"],
                "attributes": tf.ensure_shape(ex["attributes"], [num_attributes])}

    ds = tf.data.TFRecordDataset(files).map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(AUTOTUNE)
