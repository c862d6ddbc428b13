"""AU sweeps: one edit at several intensities of one AU, laid out as a labelled grid.

Each row of the grid is one sweep: the source first, then one column per intensity. Every column of a
row starts from the same noise, so the columns differ only by the AU, and a row runs as one batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from magicface_jax.editing.inputs import EditImages, format_edit
from magicface_jax.editing.runner import Editor, batch_shape
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces import aus

MAX_VALUES = 64  # intensities of one sweep: columns of the grid
MAX_GRID_PIXELS = 2**26  # the whole grid: 256 tiles of 512², 192 MiB as uint8 RGB
EMPTY_TILE = (40, 40, 40)
_BAND = (0, 0, 0, 170)
_TEXT = (255, 255, 255, 255)


@dataclasses.dataclass(frozen=True)
class Sweep:
    au: str
    values: np.ndarray  # float32 (count,)

    @classmethod
    def parse(cls, spec: str) -> Sweep:
        """'AU12=-6:6:7' -> AU12 at -6, -4, ..., 6 (start:stop:count, both ends included)."""
        return cls(*aus.parse_sweep(spec, MAX_VALUES))

    def vectors(self, base: Mapping[str, float]) -> np.ndarray:
        """(count, 12) AU variations: the base edit with this AU set to each value."""
        vectors = np.repeat(aus.au_vector(base)[None], len(self.values), axis=0)
        vectors[:, aus.au_index(self.au)] = self.values
        return vectors

    def labels(self) -> list[str]:
        return [f"{self.au} {value:+.3g}" for value in self.values]


def check_grid(sweeps: Sequence[Sweep], height: int, width: int) -> None:
    """The grid of these sweeps of a height × width face fits `MAX_GRID_PIXELS`."""
    columns = 1 + max(len(sweep.values) for sweep in sweeps)
    pixels = len(sweeps) * columns * height * width
    if pixels > MAX_GRID_PIXELS:
        raise MagicFaceError(
            f"a grid of {len(sweeps)} row(s) by {columns} tiles of {width}x{height} has {pixels} pixels, "
            f"more than the {MAX_GRID_PIXELS} one grid may hold: sweep fewer intensities or rows, or pass "
            "a smaller --size"
        )


def run_sweeps(
    editor: Editor,
    images: EditImages,
    sweeps: Sequence[Sweep],
    base: Mapping[str, float],
    seed: int,
    batch_size: int,
) -> list[np.ndarray]:
    """One uint8 (count, H, W, 3) array of edited images per sweep, in batches of `batch_size` (see
    `runner.batch_shape`); every column starts from the same noise."""
    height, width = images.source.shape[:2]
    noise = editor.noise(seed, height, width)
    rows = []
    for sweep in sweeps:
        vectors = sweep.vectors(base)
        size = batch_shape(len(vectors), batch_size, editor.num_devices)
        parts = []
        for start in range(0, len(vectors), size):
            chunk = vectors[start : start + size]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
            result = editor(images.source, images.background, padded, np.repeat(noise[None], size, 0))
            parts.append(result[: len(chunk)])
        rows.append(np.concatenate(parts))
    return rows


def _fit_font(labels: Sequence[str], width: int, height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at the largest size (up to a tenth of the tile) at which every label fits."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = max(8, height // 10)
    while True:
        font = ImageFont.load_default(size=size)
        widest = max(draw.multiline_textbbox((0, 0), label, font=font)[2] for label in labels)
        if widest <= width - 4 or size <= 8:
            return font
        size -= 1


def _label(tile: Image.Image, text: str, font) -> None:
    draw = ImageDraw.Draw(tile, "RGBA")
    bottom = draw.multiline_textbbox((2, 1), text, font=font)[3]
    draw.rectangle((0, 0, tile.width, bottom + 2), fill=_BAND)
    draw.multiline_text((2, 1), text, font=font, fill=_TEXT)


def sweep_grid(
    source: np.ndarray, sweeps: Sequence[Sweep], rows: Sequence[np.ndarray], base: Mapping[str, float]
) -> np.ndarray:
    """The grid image, uint8: one row per sweep of (1 + most intensities) tiles of the source's size."""
    height, width = source.shape[:2]
    columns = 1 + max(len(sweep.values) for sweep in sweeps)
    source_label = "source" if not base else f"source\n{format_edit(base)}"
    labels = [source_label, *(label for sweep in sweeps for label in sweep.labels())]
    font = _fit_font(labels, width, height)
    grid = Image.new("RGB", (columns * width, len(sweeps) * height), EMPTY_TILE)
    for r, (sweep, images) in enumerate(zip(sweeps, rows, strict=True)):
        tiles = [(source_label, source), *zip(sweep.labels(), images, strict=True)]
        for c, (label, pixels) in enumerate(tiles):
            tile = Image.fromarray(pixels)
            _label(tile, label, font)
            grid.paste(tile, (c * width, r * height))
    return np.asarray(grid)
