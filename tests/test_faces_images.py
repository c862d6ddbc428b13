"""Reading images into uint8 RGB (H, W, 3): conversions and refusals. Needs no face dependencies."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from magicface_jax.errors import MagicFaceError
from magicface_jax.images import as_rgb_uint8, load_image


def test_rgb_array_passes_through():
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(as_rgb_uint8(pixels), pixels)


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 1)])
def test_gray_arrays_become_rgb(shape):
    gray = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    rgb = as_rgb_uint8(gray)
    assert rgb.shape == (4, 5, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray.reshape(4, 5))


def test_transparency_is_composited_over_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque
    rgba[0, 1] = (10, 20, 30, 0)  # transparent
    rgb = as_rgb_uint8(rgba)
    np.testing.assert_array_equal(rgb[0, 0], (10, 20, 30))
    np.testing.assert_array_equal(rgb[0, 1], (255, 255, 255))
    np.testing.assert_array_equal(as_rgb_uint8(Image.fromarray(rgba, "RGBA")), rgb)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "1"])
def test_pil_modes_become_rgb(mode):
    image = Image.new("RGB", (6, 4), (200, 100, 50)).convert(mode)
    rgb = as_rgb_uint8(image)
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8


def test_palette_with_transparency():
    image = Image.new("P", (3, 3), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0
    rgb = as_rgb_uint8(image)
    np.testing.assert_array_equal(rgb[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(rgb[1, 1], (255, 0, 0))


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (6, 4), (0, 0, 0))
    image.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=100)
    loaded = load_image(path)
    assert loaded.shape == (6, 4, 3)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), "dtype float32"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        ([[0, 1], [2, 3]], "PIL image or a uint8 numpy array"),
        (Image.new("I;16", (4, 4)), "16-bit"),
    ],
)
def test_refused_inputs(value, message):
    with pytest.raises(MagicFaceError, match=message):
        as_rgb_uint8(value)


def test_load_image_errors(tmp_path):
    with pytest.raises(MagicFaceError, match="image not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(MagicFaceError, match="not a file"):
        load_image(tmp_path)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(MagicFaceError, match="not an image that PIL can read"):
        load_image(text)


def test_load_image_reads_gray_png(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (5, 3), 77).save(path)
    loaded = load_image(path)
    assert loaded.shape == (3, 5, 3) and (loaded == 77).all()
