"""The background condition MagicFace is shown with: the scene kept, the person black, and the 17 jaw-line
points (0–16 of the 68-point scheme) added as small dots coloured pink -> orange.

The colours are the first 17 of 70 samples of matplotlib's `rainbow` colour map with red and blue swapped,
truncated to uint8, as measured on the authors' released examples; the dots are added to the image, not
pasted.
"""

from __future__ import annotations

import numpy as np

NUM_JAW_POINTS = 17
_REFERENCE_SIZE = 512
_REFERENCE_RADIUS = 2.75  # px at 512²: the authors' dots are about 5–6 px across


def _jaw_dot_colors() -> np.ndarray:
    samples = np.linspace(0.0, 1.0, 70)[:NUM_JAW_POINTS]
    lut = np.minimum((samples * 256).astype(int), 255) / 255.0  # matplotlib's 256-entry lookup table
    red = np.clip(np.abs(2 * lut - 0.5), 0, 1)
    green = np.clip(np.sin(lut * np.pi), 0, 1)
    blue = np.clip(np.cos(lut * np.pi / 2), 0, 1)
    return (np.stack([blue, green, red], -1) * 255).astype(np.uint8)  # red and blue swapped


JAW_DOT_COLORS: np.ndarray = _jaw_dot_colors()


def dot_radius(size: int) -> float:
    """Dot radius in pixels for a `size`² image: the authors' size at 512², never under one pixel."""
    return max(1.0, _REFERENCE_RADIUS * size / _REFERENCE_SIZE)


def draw_jaw_dots(image: np.ndarray, jaw_points: np.ndarray, radius: float | None = None) -> np.ndarray:
    """Adds 17 anti-aliased dots at `jaw_points` (17, 2) as (x, y) pixels to a uint8 (H,W,3) image."""
    jaw_points = np.asarray(jaw_points, np.float64)
    if jaw_points.shape != (NUM_JAW_POINTS, 2):
        raise ValueError(f"expected ({NUM_JAW_POINTS}, 2) jaw points, got {jaw_points.shape}")
    height, width = image.shape[:2]
    radius = dot_radius(min(height, width)) if radius is None else radius
    out = image.astype(np.float32)
    reach = int(np.ceil(radius + 1))
    for (x, y), color in zip(jaw_points, JAW_DOT_COLORS, strict=True):
        x0, x1 = max(int(x) - reach, 0), min(int(x) + reach + 2, width)
        y0, y1 = max(int(y) - reach, 0), min(int(y) + reach + 2, height)
        if x0 >= x1 or y0 >= y1:
            continue  # off the image
        ys, xs = np.mgrid[y0:y1, x0:x1]
        # pixel centres at +0.5: coverage falls from 1 to 0 across one pixel at the rim
        distance = np.hypot(xs + 0.5 - x, ys + 0.5 - y)
        coverage = np.clip(radius + 0.5 - distance, 0.0, 1.0)
        out[y0:y1, x0:x1] += coverage[..., None] * color
    return np.clip(out, 0, 255).round().astype(np.uint8)


def background_condition(image: np.ndarray, person_mask: np.ndarray, jaw_points: np.ndarray) -> np.ndarray:
    """The scene of a uint8 (H,W,3) image with the person (bool (H,W)) black and the jaw dots added."""
    scene = np.where(np.asarray(person_mask, bool)[..., None], np.uint8(0), image)
    return draw_jaw_dots(scene, jaw_points)
