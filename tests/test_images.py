"""Images are decoded as a viewer shows them: 16-bit rescaled, EXIF orientation applied, alpha
composited onto the background, other modes converted or refused by name. Every file is made
here, and the checks are on pixel values."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipelines import images


def _png(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def _decoded(data: bytes, **kwargs) -> np.ndarray:
    img, _ = images.decode_rgb(data, **kwargs)
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def test_16_bit_grey_png_is_rescaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535], [1000, 20000, 40000, 60000]], np.uint16)
    data = _png(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = _decoded(data)
    expected = np.round(values / 257.0).astype(int)  # 0, 1, 128, 255, 4, 78, 156, 233
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, axis=2))


def test_16_bit_big_endian_grey_and_16_bit_colour_pngs_keep_their_range():
    # A 16-bit RGB PNG (TensorFlow writes it; Pillow cannot) comes out at 8 bits per channel.
    rgb = np.array([[[65535, 32768, 0], [4096, 61440, 30000]]], np.uint16)
    out = _decoded(tf.io.encode_png(rgb).numpy())
    np.testing.assert_allclose(out, rgb / 257.0, atol=1)
    grey = np.array([[0, 30000], [50000, 65535]], np.uint16)
    out = _decoded(tf.io.encode_png(grey[..., None]).numpy())
    np.testing.assert_allclose(out[..., 0], grey / 257.0, atol=0.5)


def _two_colour(width=40, height=20):
    """Left half red, right half blue."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2] = (255, 0, 0)
    a[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(a)


def _with_orientation(img, orientation, fmt):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format=fmt, exif=exif.tobytes(), **({"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("orientation, fmt, top_left, bottom_right, size", [
    (6, "JPEG", (255, 0, 0), (0, 0, 255), (20, 40)),  # rotate 90 clockwise: left half becomes the top
    (8, "JPEG", (0, 0, 255), (255, 0, 0), (20, 40)),  # rotate 90 counter-clockwise: left half becomes the bottom
    (2, "JPEG", (0, 0, 255), (255, 0, 0), (40, 20)),  # mirrored: left and right swap
    (6, "PNG", (255, 0, 0), (0, 0, 255), (20, 40)),  # PNG's eXIf chunk carries the tag too
])
def test_exif_orientation_is_applied(orientation, fmt, top_left, bottom_right, size, tmp_path):
    data = _with_orientation(_two_colour(), orientation, fmt)
    img, as_stored = images.decode_rgb(data)
    assert img.size == size and not as_stored
    a = np.asarray(img).astype(int)
    np.testing.assert_allclose(a[1, 1], top_left, atol=4)
    np.testing.assert_allclose(a[-2, -2], bottom_right, atol=4)
    # Through the worker: the stored JPEG is upright, not the original bytes.
    status, stored, fmt_out, h, w = images.prepare_file((_write(tmp_path, data), None))
    assert status == "ok" and (w, h) == size and stored != data
    np.testing.assert_allclose(np.asarray(Image.open(io.BytesIO(stored)))[1, 1], top_left, atol=6)


def _write(tmp_path, data: bytes) -> str:
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    return str(path)


def test_an_upright_rgb_jpeg_is_still_kept_byte_for_byte(tmp_path):
    data = _with_orientation(_two_colour(), 1, "JPEG")
    assert images.prepare_file((_write(tmp_path, data), None))[1] == data


def _rgba():
    """Opaque red, 50 % green, and fully transparent pixels whose hidden colour is black."""
    a = np.zeros((2, 3, 4), np.uint8)
    a[:, 0] = (255, 0, 0, 255)
    a[:, 1] = (0, 255, 0, 128)
    a[:, 2] = (0, 0, 0, 0)
    return Image.fromarray(a, "RGBA")


def test_alpha_is_composited_onto_white_by_default():
    out = _decoded(_png(_rgba()))
    np.testing.assert_array_equal(out[0, 0], (255, 0, 0))
    np.testing.assert_allclose(out[0, 1], (127, 255, 127), atol=1)  # 50 % green over white
    np.testing.assert_array_equal(out[0, 2], (255, 255, 255))  # not the black under the alpha


def test_background_option_sets_the_colour_under_transparency():
    out = _decoded(_png(_rgba()), background=images.parse_background("#000080"))
    np.testing.assert_array_equal(out[0, 2], (0, 0, 128))
    np.testing.assert_allclose(out[0, 1], (0, 128, 64), atol=1)
    assert images.parse_background("white") == (255, 255, 255)
    with pytest.raises(images.ImageError, match="--background"):
        images.parse_background("not-a-colour")


def test_grey_with_alpha_and_palette_and_colour_key_transparency():
    la = Image.fromarray(np.array([[[40, 255], [40, 0]]], np.uint8), "LA")
    np.testing.assert_array_equal(_decoded(_png(la))[0], [(40, 40, 40), (255, 255, 255)])
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 0, 200, 0])  # index 0 black (transparent), index 1 green
    pal.putpixel((1, 0), 1)
    np.testing.assert_array_equal(_decoded(_png(pal, transparency=0))[0], [(255, 255, 255), (0, 200, 0)])
    rgb = Image.fromarray(np.array([[[1, 2, 3], [9, 9, 9]]], np.uint8))
    np.testing.assert_array_equal(_decoded(_png(rgb, transparency=(1, 2, 3)))[0], [(255, 255, 255), (9, 9, 9)])


def test_other_colour_modes_are_converted():
    np.testing.assert_array_equal(_decoded(_png(Image.new("1", (1, 1), 1)))[0, 0], (255, 255, 255))
    hsv = images.to_rgb(Image.new("HSV", (1, 1), (0, 255, 255)))
    np.testing.assert_array_equal(np.asarray(hsv)[0, 0], (255, 0, 0))


@pytest.mark.parametrize("mode, name", [("I", "32-bit integer image (mode I)"), ("F", "floating-point image (mode F)")])
def test_modes_without_a_known_range_are_refused_by_name(mode, name, tmp_path):
    buf = io.BytesIO()
    Image.new(mode, (2, 2), 70000 if mode == "I" else 0.5).save(buf, format="TIFF")
    with pytest.raises(images.ImageError, match=name.replace("(", r"\(").replace(")", r"\)")):
        images.decode_rgb(buf.getvalue())
    status, why = images.prepare_file((_write(tmp_path, buf.getvalue()), None))
    assert status == "error" and f"mode {mode}" in why
