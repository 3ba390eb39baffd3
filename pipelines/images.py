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


DEFAULT_BACKGROUND = (255, 255, 255)

# Modes Pillow converts to RGB by colour-space arithmetic (palette lookup, CMYK, YCbCr, LAB, HSV
# conversion, grey replication): the picture a viewer shows.
_COLOUR_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
# Modes with an alpha channel ("a": premultiplied): composited onto the background.
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# 16-bit grey. Pillow's convert("RGB") clips these at 255 instead of rescaling.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def parse_background(value) -> tuple[int, int, int]:
    """A colour name ("white"), "#rrggbb" or an (r, g, b) triple -> (r, g, b) ints in [0, 255].
    Raises ImageError naming the value."""
    from PIL import ImageColor

    if isinstance(value, (tuple, list)):
        rgb = tuple(int(v) for v in value)
    else:
        try:
            rgb = ImageColor.getrgb(str(value))[:3]
        except ValueError:
            raise ImageError(f"--background: not a colour name or #rrggbb: {value!r}") from None
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ImageError(f"--background: expected three values in [0, 255], got {value!r}")
    return rgb


def _sixteen_to_eight(img: Image.Image) -> Image.Image:
    """16-bit grey -> 8-bit grey, full range onto full range (v * 255 / 65535, rounded)."""
    import numpy as np

    values = np.asarray(img).astype(np.float64)
    return Image.fromarray(np.round(values * (255.0 / 65535.0)).astype(np.uint8), "L")


def to_rgb(img: Image.Image, background=DEFAULT_BACKGROUND) -> Image.Image:
    """A decoded image -> RGB as an image viewer shows it.

    - EXIF orientation applied (Pillow's ImageOps.exif_transpose), so "rotate 90" is upright;
    - 16-bit grey (PNG "I;16", or "I" from a PNG, whose depth is at most 16 bits) rescaled from
      [0, 65535] to [0, 255]; 16-bit colour PNGs Pillow already reduces to 8 bits per channel;
    - transparency (an alpha channel, premultiplied or not, or a palette / grey / RGB
      transparency key) composited onto `background` (r, g, b), white by default;
    - every other colour mode converted by Pillow's colour-space conversion.
    Raises ImageError naming the mode for 32-bit integer and floating-point images, whose range
    is not stated by the file, and for any mode not listed here.
    """
    from PIL import ImageOps

    source_format = img.format  # a transposed copy no longer knows it
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and source_format == "PNG"):
        if "transparency" in img.info:  # a 16-bit grey key; rare enough to refuse than guess
            raise ImageError(f"16-bit grey image with a transparency key (mode {mode}) is not supported")
        return _sixteen_to_eight(img).convert("RGB")
    if mode in ("I", "F"):
        kind = "32-bit integer" if mode == "I" else "floating-point"
        raise ImageError(f"{kind} image (mode {mode}) has no stated value range; save it as 8- or 16-bit")
    transparent = mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in img.info)
    if transparent:
        rgba = img.convert("RGBA") if mode != "La" else img.convert("LA").convert("RGBA")
        base = Image.new("RGBA", img.size, tuple(background) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if mode in _COLOUR_MODES:
        return img if mode == "RGB" else img.convert("RGB")
    raise ImageError(f"images of mode {mode} are not supported")


def decode_rgb(data: bytes, background=DEFAULT_BACKGROUND) -> tuple[Image.Image, bool]:
    """Decode fully (so a truncated file fails here, not later) and convert to RGB as a viewer
    shows the picture (`to_rgb`: EXIF orientation, 16-bit rescaling, alpha onto `background`).

    Also returns whether the decoded picture is exactly what the bytes hold for any decoder: an
    RGB JPEG with no EXIF rotation (then its bytes can be kept as they are; TensorFlow's decoder
    ignores EXIF). Raises ImageError.
    """
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises many types: OSError, SyntaxError, ValueError...
        raise ImageError(f"unreadable image ({e})") from None
    orientation = img.getexif().get(0x0112, 1)  # EXIF Orientation; 1 = as stored
    # 2..8 rotate or mirror; 1, 0 (seen in CUB) and no tag leave the picture as stored
    as_stored = img.format == "JPEG" and img.mode == "RGB" and orientation not in range(2, 9)
    return to_rgb(img, background), as_stored


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


def prepare_file(job: tuple):
    """Worker: (path, optional CUB bbox[, background (r, g, b)]) -> ("ok", bytes, format, height,
    width) | ("error", why). The background (default white) is what transparency is composited onto.

    An upright RGB JPEG that needs no crop is kept byte for byte; everything else is re-encoded as
    JPEG after `decode_rgb`. A CUB bounding box is applied to the upright picture (CUB's photos
    carry no EXIF rotation, so there both are the same).
    """
    path, bbox = job[:2]
    background = job[2] if len(job) > 2 else DEFAULT_BACKGROUND
    try:
        data = read_bytes(path)
    except OSError as e:
        return ("error", f"cannot read image ({e})")
    try:
        img, original_rgb_jpeg = decode_rgb(data, background)
        if bbox is not None:
            img = img.crop(bbox_crop_box(bbox, img.width, img.height))
        elif original_rgb_jpeg:
            return ("ok", data, "jpeg", img.height, img.width)
        return ("ok", encode(img, "jpeg"), "jpeg", img.height, img.width)
    except ImageError as e:
        return ("error", str(e))
    except Exception as e:  # keep the worker alive whatever PIL does
        return ("error", f"cannot process image ({type(e).__name__}: {e})")
