"""Procedural scenes behind a synthetic person: gradients, smooth textures, stripes and shapes."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from magicface_jax.data.face_params import SCENE_KINDS, Scene


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    return coords[None, :], coords[:, None]


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t[..., None]


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a small random grid upsampled bicubically."""
    grid = Image.fromarray((rng.uniform(size=(cells, cells)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255


def _shapes(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    size = image.shape[0]
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(4, 12))):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(0.04, 0.25) * size
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
        elif kind == 1:
            draw.rectangle((cx - r, cy - 0.6 * r, cx + r, cy + 0.6 * r), fill=color)
        else:
            angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2.1, 4.2])
            draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles], fill=color)
    radius = max(size / 256, 0.5)  # soften hard edges a little, like an out-of-focus room
    return np.asarray(canvas.filter(ImageFilter.GaussianBlur(radius)))


def render_scene(scene: Scene, size: int) -> np.ndarray:
    """uint8 (size, size, 3), deterministic given the scene and the size."""
    rng = np.random.default_rng(scene.seed)
    a, b = np.array(scene.color_a, np.float32), np.array(scene.color_b, np.float32)
    x, y = _grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.clip(0.5 + (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle), 0, 1)
    kind = SCENE_KINDS[scene.kind]
    if kind == "gradient":
        image = _mix(a, b, ramp)
    elif kind == "texture":
        noise = 0.7 * _smooth_noise(rng, size, int(rng.integers(3, 8))) + 0.3 * _smooth_noise(rng, size, 24)
        image = _mix(a, b, noise)
    elif kind == "stripes":
        frequency = rng.uniform(3, 12)
        phase = (x * np.cos(angle + 1.0) + y * np.sin(angle + 1.0)) * frequency
        image = _mix(a, b, 0.5 + 0.5 * np.tanh(4 * np.sin(2 * np.pi * phase)))
    else:
        image = _shapes(rng, _mix(a, b, ramp).astype(np.uint8)).astype(np.float32)
    grain = rng.normal(0, 3, (size, size, 1)).astype(np.float32)  # sensor-like noise
    return np.clip(image + grain, 0, 255).astype(np.uint8)
