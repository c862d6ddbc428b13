"""PNG bytes <-> uint8 arrays with PIL (tfds' own image feature needs TensorFlow, so images are stored as
PNG bytes)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_png(array: np.ndarray, compress_level: int = 6) -> bytes:
    """uint8 (H,W,3) or (H,W) -> PNG bytes; a bool (H,W) mask is stored as 0/255."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected uint8 (H,W,3) or (H,W), got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 (H,W,3) for colour images, (H,W) for masks."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def decode_mask(data: bytes) -> np.ndarray:
    """PNG bytes of a 0/255 mask -> bool (H,W)."""
    return decode_png(data) > 127
