"""Image decoding, cropping and encoding for dataset preparation.

Runs in worker processes, so it imports only PIL and NumPy (TensorFlow is imported lazily, and only
to read a non-local path such as gs://). Workers never raise: they return an error string, and the
caller decides whether to stop or to skip the example.
"""

from __future__ import annotations

import io
from typing import Optional, Sequence

from PIL import Image

JPEG_QUALITY = 95


class ImageError(ValueError):
    pass


def read_bytes(path: str) -> bytes:
    if "://" in path:
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def decode_rgb(data: bytes) -> tuple[Image.Image, bool]:
    """Decode fully (so a truncated file fails here, not later) and convert any mode to RGB.

    Grayscale, palette, CMYK and alpha images become RGB the way PIL converts them, which is what
    the original code did when it opened CUB images with `.convert('RGB')`. Also returns whether
    the source already was an RGB JPEG (then its bytes can be kept as they are).
    """
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises many types: OSError, SyntaxError, ValueError...
        raise ImageError(f"unreadable image ({e})") from None
    if img.mode == "RGB":
        return img, img.format == "JPEG"
    return img.convert("RGB"), False


def bbox_crop_box(bbox: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """The original CUB crop: a square of side 1.5 x max(w, h) around the bounding-box centre,
    clipped to the image. `bbox` is (x, y, w, h) as in CUB's bounding_boxes.txt."""
    x, y, w, h = bbox
    r = int(max(w, h) * 0.75)
    cx = int((2 * x + w) / 2)
    cy = int((2 * y + h) / 2)
    return max(0, cx - r), max(0, cy - r), min(width, cx + r), min(height, cy + r)


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    elif fmt == "png":
        img.save(buf, format="PNG", optimize=False, compress_level=6)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()


def prepare_file(job: tuple[str, Optional[Sequence[float]]]):
    """Worker: (path, optional CUB bbox) -> ("ok", bytes, format, height, width) | ("error", why).

    An RGB JPEG that needs no crop is kept byte for byte; everything else is re-encoded as JPEG.
    """
    path, bbox = job
    try:
        data = read_bytes(path)
    except OSError as e:
        return ("error", f"cannot read image ({e})")
    try:
        img, original_rgb_jpeg = decode_rgb(data)
        if bbox is not None:
            img = img.crop(bbox_crop_box(bbox, img.width, img.height))
        elif original_rgb_jpeg:
            return ("ok", data, "jpeg", img.height, img.width)
        return ("ok", encode(img, "jpeg"), "jpeg", img.height, img.width)
    except ImageError as e:
        return ("error", str(e))
    except Exception as e:  # keep the worker alive whatever PIL does
        return ("error", f"cannot process image ({type(e).__name__}: {e})")
