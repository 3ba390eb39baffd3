"""The TFRecord example schema shared by `pipelines` (which writes it) and `mirrorgan_tf.data`
(which reads it). One example per image:

    key                 bytes       stable identifier (e.g. "002.Laysan_Albatross/Laysan_..._1027")
    image/encoded       bytes       PNG or JPEG, RGB
    image/format        bytes       "png" | "jpeg"
    image/height,width  int64
    captions/text       bytes[]     every caption of the image, as written in the source
    captions/ids        int64[]     all captions' word ids, concatenated (vocab.txt beside the shards)
    captions/lengths    int64[]     words per caption (splits captions/ids)
    label/class         int64       class id where known (CUB), else -1
    label/attributes    int64[]     attribute labels (shapes: colour, shape, size, position), else []
"""

from __future__ import annotations

import tensorflow as tf

NO_CLASS = -1

FEATURES = {
    "key": tf.io.FixedLenFeature([], tf.string),
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "captions/text": tf.io.VarLenFeature(tf.string),
    "captions/ids": tf.io.VarLenFeature(tf.int64),
    "captions/lengths": tf.io.VarLenFeature(tf.int64),
    "label/class": tf.io.FixedLenFeature([], tf.int64, default_value=NO_CLASS),
    "label/attributes": tf.io.VarLenFeature(tf.int64),
}


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def encode_example(
    *,
    key: str,
    image: bytes,
    image_format: str,
    height: int,
    width: int,
    captions: list[str],
    caption_ids: list[list[int]],
    class_id: int = NO_CLASS,
    attributes: list[int] = (),
) -> bytes:
    """One image and its captions -> a serialized tf.train.Example (schema above). Raises
    ValueError for a caption count that does not match the id lists, no caption, or a caption
    with no word ids (training would condition on nothing; preparation refuses those earlier)."""
    if len(captions) != len(caption_ids) or not captions:
        raise ValueError(f"{key}: need one id list per caption and at least one caption")
    empty = [c for c, ids in zip(captions, caption_ids) if len(ids) == 0]
    if empty:
        raise ValueError(f"{key}: caption {empty[0]!r} has no word ids")
    feature = {
        "key": _bytes([key.encode("utf-8")]),
        "image/encoded": _bytes([image]),
        "image/format": _bytes([image_format.encode()]),
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "captions/text": _bytes([c.encode("utf-8") for c in captions]),
        "captions/ids": _ints([i for ids in caption_ids for i in ids]),
        "captions/lengths": _ints([len(ids) for ids in caption_ids]),
        "label/class": _ints([class_id]),
        "label/attributes": _ints(list(attributes)),
    }
    # deterministic: protobuf writes a map in hash order, which differs between processes
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def parse_example(serialized: tf.Tensor) -> dict:
    """Serialized example -> dict of dense tensors; `caption_ids` is ragged [captions, (words)]."""
    f = tf.io.parse_single_example(serialized, FEATURES)
    ids = tf.sparse.to_dense(f["captions/ids"])
    lengths = tf.sparse.to_dense(f["captions/lengths"])
    return {
        "key": f["key"],
        "image": f["image/encoded"],
        "captions": tf.sparse.to_dense(f["captions/text"]),
        "caption_ids": tf.RaggedTensor.from_row_lengths(ids, lengths),
        "class_id": f["label/class"],
        "attributes": tf.sparse.to_dense(f["label/attributes"]),
    }
