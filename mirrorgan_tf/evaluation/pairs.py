"""The (image, caption) pairs of an evaluation split, read without decoding images.

Order: caption round first, image second (caption 0 of every image, then caption 1 of every
image, ...), so the first N pairs cover as many different images as N allows. Captions with no
word in the vocabulary are left out. Ids keep a caption's first `words_num` words, as at
inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from mirrorgan_tf import data, records, text


@dataclass
class Pairs:
    image_index: np.ndarray  # int64 [P], position of the image in the split
    caption_index: np.ndarray  # int64 [P], which of its captions
    ids: np.ndarray  # int32 [P, words_num]
    lengths: np.ndarray  # int32 [P]
    text: np.ndarray  # object [P], the caption as written
    attributes: np.ndarray  # int64 [P, A]
    class_id: np.ndarray  # int64 [P]

    def __len__(self) -> int:
        return len(self.image_index)

    def select(self, rows: np.ndarray) -> "Pairs":
        return Pairs(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))

    def first(self, n: int) -> np.ndarray:
        """Rows of the first n pairs, going round again (with new noise) when n exceeds the split."""
        return np.arange(n) % len(self)


def load_pairs(cfg, split: str = "test") -> Pairs:
    words_num = cfg.data.words_num
    manifest = data.load_manifest(cfg.data.dir)
    num_attributes = len(manifest.get("attributes") or {})

    def strip(serialized):
        ex = records.parse_example(serialized)
        return {"ids": ex["caption_ids"], "text": ex["captions"], "class_id": ex["class_id"],
                "attributes": tf.ensure_shape(ex["attributes"], [num_attributes])}

    ds = tf.data.TFRecordDataset(data.shard_files(cfg, split)).map(strip, num_parallel_calls=data.AUTOTUNE)
    per_image = list(ds.as_numpy_iterator())
    rows = []
    rounds = max(len(ex["text"]) for ex in per_image)
    for r in range(rounds):
        for i, ex in enumerate(per_image):
            if r < len(ex["text"]) and len(ex["ids"][r]):
                rows.append((i, r))
    ids = np.full((len(rows), words_num), text.END_ID, np.int32)
    lengths = np.zeros(len(rows), np.int32)
    for k, (i, r) in enumerate(rows):
        caption = per_image[i]["ids"][r][:words_num]
        ids[k, : len(caption)] = caption
        lengths[k] = len(caption)
    return Pairs(
        image_index=np.array([i for i, _ in rows], np.int64),
        caption_index=np.array([r for _, r in rows], np.int64),
        ids=ids, lengths=lengths,
        text=np.array([per_image[i]["text"][r].decode("utf-8") for i, r in rows], dtype=object),
        attributes=np.array([per_image[i]["attributes"] for i, _ in rows], np.int64).reshape(len(rows), num_attributes),
        class_id=np.array([per_image[i]["class_id"] for i, _ in rows], np.int64),
    )
