"""Images at the public edge: files, PIL images and uint8 arrays in; PIL images or float arrays out.

Everything is read into one form, uint8 RGB (H, W, 3). Transparent images are composited over white (a
cut-out portrait then keeps a plain backdrop instead of whatever colour its invisible pixels hold; the
authors' script would instead misread a 4-channel image as latents), grayscale is repeated over three
channels, and the EXIF orientation of a photo is applied so that faces are upright. Model inputs are
float32 NHWC in [-1, 1]; model outputs float32 in [0, 1].
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from magicface_jax.atomic import atomic_file, user_path
from magicface_jax.errors import MagicFaceError

ImageLike = Image.Image | np.ndarray


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        raise MagicFaceError(
            f"image mode {image.mode!r} (16-bit or float pixels) is not supported: save it as 8-bit RGB"
        )
    return image.convert("RGB")


def as_rgb_uint8(image: ImageLike) -> np.ndarray:
    """A PIL image or a uint8 array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) as uint8 (H, W, 3)."""
    if isinstance(image, Image.Image):
        return np.asarray(_pil_to_rgb(image), dtype=np.uint8).copy()
    if not isinstance(image, np.ndarray):
        raise MagicFaceError(
            f"expected a PIL image or a uint8 numpy array, got {type(image).__name__}: "
            "open files with magicface_jax.images.load_image"
        )
    if image.dtype != np.uint8:
        raise MagicFaceError(
            f"image array has dtype {image.dtype}; expected uint8 in 0..255 "
            "(convert with (x * 255).round().clip(0, 255).astype(np.uint8) if it is a float in 0..1)"
        )
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        channels = image.shape[2]
    elif image.ndim == 2:
        channels = 0
    else:
        raise MagicFaceError(f"image array has shape {image.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    if min(image.shape[:2]) < 1:
        raise MagicFaceError(f"image array has shape {image.shape}: it is empty")
    if channels == 3:
        return np.ascontiguousarray(image)
    if channels == 4:
        return np.asarray(_pil_to_rgb(Image.fromarray(image, "RGBA")), dtype=np.uint8).copy()
    gray = image if channels == 0 else image[..., 0]
    return np.repeat(gray[..., None], 3, axis=2)


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an image file as uint8 (H, W, 3); a missing, unreadable or non-image file: `MagicFaceError`."""
    path = user_path(path)
    if not path.exists():
        raise MagicFaceError(f"image not found: {path}")
    if not path.is_file():
        raise MagicFaceError(f"{path} is not a file: give the path of an image (PNG, JPEG, ...)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return as_rgb_uint8(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MagicFaceError(
            f"{path} has more pixels than PIL opens safely ({Image.MAX_IMAGE_PIXELS}, a guard against "
            "decompression bombs): crop or resize it first"
        ) from None
    except UnidentifiedImageError:
        raise MagicFaceError(
            f"{path} is not an image that PIL can read: give a PNG, JPEG, WebP, ..."
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        # Truncated or corrupt files surface as OSError (or SyntaxError for some formats) on load.
        raise MagicFaceError(f"cannot read image {path}: {err}") from None


def as_batch(images: ImageLike | Sequence[ImageLike], what: str) -> np.ndarray:
    """One image or a list of them as uint8 (B, H, W, 3); every image must have the same size."""
    if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim <= 3):
        images = [images]
    arrays = [as_rgb_uint8(image) for image in images]
    if not arrays:
        raise MagicFaceError(f"no {what} image given")
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise MagicFaceError(f"{what} images differ in size: {sorted(sizes)}")
    return np.stack(arrays)


def check_image_size(height: int, width: int, multiple: int, what: str) -> None:
    """The one rule for image sizes, wherever a size comes from (an image after its EXIF rotation,
    `--size`, the API): both sides positive multiples of the model's `MagicFaceConfig.size_multiple`."""
    for side in (height, width):
        if isinstance(side, bool) or not isinstance(side, int | np.integer):
            raise MagicFaceError(f"{what} must be a whole number of pixels, got {side!r}")
    if min(height, width) < multiple or height % multiple or width % multiple:
        raise MagicFaceError(
            f"{what} is {width}x{height}; this model needs both sides to be multiples of {multiple} (its VAE "
            "and UNet halve them evenly; MagicFace was trained at 512): crop or resize it, e.g. with "
            "python -m magicface_jax.preprocess"
        )


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, 3) -> float32 in [-1, 1]."""
    return images.astype(np.float32) / 127.5 - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8, rounding as diffusers does."""
    return np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)


def save_image(image: ImageLike, path: str | Path, overwrite: bool = False) -> None:
    """Writes an image file whole or not at all (see `atomic`); the format follows the suffix."""
    path = user_path(path)
    array = as_rgb_uint8(image)
    try:
        with atomic_file(path, overwrite) as partial:
            Image.fromarray(array).save(
                partial, format=Image.registered_extensions().get(path.suffix.lower())
            )
    except (KeyError, ValueError) as err:
        raise MagicFaceError(f"cannot write {path}: unknown image format {path.suffix!r} ({err})") from None
