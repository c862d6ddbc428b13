"""Images at the public edge: files, PIL images and uint8 arrays in, PIL or float arrays out.

Model inputs are float32 NHWC in [-1, 1]; model outputs float32 in [0, 1]. RGBA and grayscale inputs are
converted to RGB (the authors' script would misread a 4-channel image as latents).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from magicface_jax.atomic import atomic_file
from magicface_jax.errors import MagicFaceError

ImageLike = Image.Image | np.ndarray


def load_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 (H, W, 3)."""
    path = Path(path)
    if not path.is_file():
        raise MagicFaceError(f"image {path} does not exist or is not a file")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image, str(path))
    except (UnidentifiedImageError, OSError) as err:
        raise MagicFaceError(f"{path} is not a readable image ({err})") from None


def to_rgb(image: ImageLike, what: str = "image") -> np.ndarray:
    """A PIL image or an array (H, W), (H, W, 1|3|4), uint8 or float in [0, 1], as uint8 (H, W, 3)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise MagicFaceError(f"{what} has shape {array.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise MagicFaceError(f"{what} has dtype {array.dtype}; expected uint8 or float in [0, 1]")
        array = np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def as_batch(images: ImageLike | Sequence[ImageLike], what: str) -> np.ndarray:
    """One image or a list of them as uint8 (B, H, W, 3); every image must have the same size."""
    if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim <= 3):
        images = [images]
    arrays = [to_rgb(image, f"{what} {i}") for i, image in enumerate(images)]
    if not arrays:
        raise MagicFaceError(f"no {what} image given")
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise MagicFaceError(f"{what} images differ in size: {sorted(sizes)}")
    return np.stack(arrays)


def check_latent_size(images: np.ndarray, factor: int, what: str) -> None:
    height, width = images.shape[1:3]
    if height % factor or width % factor:
        raise MagicFaceError(
            f"{what} is {width}x{height}; both sides must be multiples of {factor} (crop or resize it, "
            "e.g. with python -m magicface_jax.preprocess)"
        )


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, 3) -> float32 in [-1, 1]."""
    return images.astype(np.float32) / 127.5 - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8, rounding as diffusers does."""
    return np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)


def save_image(image: ImageLike, path: str | Path) -> None:
    """Writes an image file whole or not at all; the format follows the suffix."""
    path = Path(path)
    array = to_rgb(image)
    try:
        with atomic_file(path) as partial:
            Image.fromarray(array).save(
                partial, format=Image.registered_extensions().get(path.suffix.lower())
            )
    except (KeyError, ValueError) as err:
        raise MagicFaceError(f"cannot write {path}: unknown image format {path.suffix!r} ({err})") from None
