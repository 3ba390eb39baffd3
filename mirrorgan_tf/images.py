"""Images and files: the one home of [-1, 1] -> uint8, image grids, PNG writing and the
write-then-rename every file the project writes goes through.

Files go through `tf.io.gfile`, so run directories, caches and exports may live on any
filesystem TensorFlow knows (local, gs://, ...); `os.replace` would only work locally.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Iterator, Union

import numpy as np
import tensorflow as tf

INCOMPLETE = ".incomplete-"  # prefix of a file or folder being written (TF Serving ignores these)


def to_uint8(images):
    """float images in [-1, 1] (any shape, numpy or tensor) -> tf.uint8 tensor of the same shape in
    [0, 255]: x -> clip((x + 1) * 127.5 + 0.5) rounded down, i.e. rounded to the nearest level.
    Works inside a tf.function (the serving graph uses it)."""
    x = tf.convert_to_tensor(images, tf.float32)
    return tf.cast(tf.clip_by_value((x + 1.0) * 127.5 + 0.5, 0.0, 255.0), tf.uint8)


def image_grid(rows: list) -> np.ndarray:
    """rows: list of float arrays [N, H_r, W_r, 3] in [-1, 1] (sizes may differ, but each must
    divide the largest) -> uint8 array [R * S, N * S, 3], S the largest size: one row per array,
    the N images side by side, each upscaled to S x S by repetition (nearest neighbour)."""
    size = max(r.shape[1] for r in rows)
    out = []
    for r in rows:
        k = size // r.shape[1]
        r = np.repeat(np.repeat(np.asarray(r), k, axis=1), k, axis=2)
        out.append(np.concatenate(list(r), axis=1))
    return to_uint8(np.concatenate(out, axis=0)).numpy()


@contextlib.contextmanager
def staged(path: str) -> Iterator[str]:
    """Write `path` (a file or a folder) under a temporary name beside it, then rename.

    Yields the temporary path (`<folder>/.incomplete-<random>-<name>`: it keeps the name's
    ending, which e.g. Keras' `.weights.h5` check needs, and starts with a dot so that TF
    Serving and `ls` pass it over). When the block ends without error the temporary replaces
    `path` (a file is overwritten; for a folder, `path` must not exist yet). On an error the
    temporary is removed and nothing at `path` changes. Raises what the block or gfile raise."""
    folder, name = os.path.split(path.rstrip("/"))
    if folder:
        tf.io.gfile.makedirs(folder)
    tmp = os.path.join(folder, f"{INCOMPLETE}{secrets.token_hex(4)}-{name}")
    try:
        yield tmp
        overwrite = not tf.io.gfile.isdir(tmp)
        tf.io.gfile.rename(tmp, path, overwrite=overwrite)
    except BaseException:
        if tf.io.gfile.isdir(tmp):
            tf.io.gfile.rmtree(tmp)
        elif tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise


def atomic_write(path: str, content: Union[str, bytes]) -> None:
    """Write `content` (text as UTF-8, or bytes) to `path` so that a reader sees the old file or
    the whole new one, never a part (write-then-rename, through tf.io.gfile)."""
    with staged(path) as tmp:
        with tf.io.gfile.GFile(tmp, "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)


def save_png(image, path: str) -> None:
    """uint8 [H, W, 3] (numpy or tensor) -> a PNG file at `path`, written atomically."""
    atomic_write(path, tf.io.encode_png(image).numpy())
