"""One rule for image sizes: sides are multiples of the model's VAE factor × UNet downsampling, checked
after the EXIF rotation, wherever the size comes from."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from magicface_jax.config import SD15_SIZE_MULTIPLE, UNetConfig, sd15_magicface_config, tiny_magicface_config
from magicface_jax.editing.inputs import check_size, load_images
from magicface_jax.errors import MagicFaceError
from magicface_jax.images import check_image_size

EXIF_ORIENTATION = 0x0112
ROTATED_90 = 6  # shown turned 90° clockwise: a stored W x H image is shown H x W


def test_the_multiple_follows_from_the_model():
    assert sd15_magicface_config().size_multiple == SD15_SIZE_MULTIPLE == 64
    assert tiny_magicface_config().size_multiple == 64
    three_levels = UNetConfig(
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2,
        attention_heads=(2, 2, 2),
    )
    config = tiny_magicface_config(denoiser=three_levels.replace(in_channels=8, au_dim=12))
    assert config.size_multiple == 8 * 4


@pytest.mark.parametrize(
    ("height", "width", "message"),
    [
        (72, 64, "64x72; this model needs both sides to be multiples of 64"),
        (0, 0, "0x0"),
        (32, 64, "64x32"),
        (64.0, 64, "whole number"),
        (True, 64, "whole number"),
    ],
)
def test_sizes_the_model_cannot_take_are_refused(height, width, message):
    with pytest.raises(MagicFaceError, match=message):
        check_image_size(height, width, 64, "image")


def test_sizes_the_model_takes_pass():
    check_image_size(64, 128, 64, "image")
    check_image_size(np.int64(512), 512, 64, "image")
    assert check_size(None, 64) is None and check_size(128, 64) == 128
    with pytest.raises(MagicFaceError, match="--size is 96x96"):
        check_size(96, 64)


def _save(path, width, height, orientation=None):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    exif = Image.Exif()
    if orientation:
        exif[EXIF_ORIENTATION] = orientation
    image.save(path, exif=exif)
    return path


def test_sizes_are_checked_after_the_exif_rotation(tmp_path):
    """A photo stored 128 wide × 64 high but shown 64 × 128 pairs with a 64 × 128 background."""
    face = _save(tmp_path / "face.jpg", 128, 64, ROTATED_90)
    background = _save(tmp_path / "background.png", 64, 128)
    images = load_images(face, background, multiple=64)
    assert images.source.shape == images.background.shape == (128, 64, 3)
    shown_72_wide = _save(tmp_path / "odd.jpg", 128, 72, ROTATED_90)
    with pytest.raises(MagicFaceError, match="image is 72x128"):
        load_images(shown_72_wide, _save(tmp_path / "bg72.png", 72, 128), multiple=64)
