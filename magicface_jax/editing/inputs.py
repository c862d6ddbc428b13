"""An edit's inputs, checked before any model work: the AU edit, the settings, the images, the output path."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from magicface_jax import atomic
from magicface_jax.checkpoint import AUTHORS_STEPS
from magicface_jax.diffusion import check_sampler, check_steps
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces import aus
from magicface_jax.faces import preprocess as faces
from magicface_jax.images import check_image_size, load_image
from magicface_jax.pipeline import DEFAULT_GUIDANCE, check_guidance

NO_BACKGROUND_HINT = (
    "install the face preprocessing (pip install 'magicface-jax[faces]'), which computes it from the "
    "face, or make one with python -m magicface_jax.preprocess --image PHOTO --out DIR on a machine that "
    "has it and pass DIR/background.png (see docs/preprocessing.md)"
)


@dataclasses.dataclass(frozen=True)
class EditSettings:
    """How every edit of a run is sampled."""

    steps: int = AUTHORS_STEPS
    guidance: float = DEFAULT_GUIDANCE
    sampler: str = "unipc"

    def __post_init__(self):
        check_steps(self.steps)
        check_guidance(self.guidance)
        check_sampler(self.sampler)


def resolve_edit(
    au: str | None = None, au_test: str | None = None, au_variation: str | None = None
) -> dict[str, float] | None:
    """The AU edit from `--au AU4=+4,AU1=+2` or the authors' `--au_test AU4+AU1 --AU_variation 4+2`;
    None when neither is given."""
    if au_test is not None or au_variation is not None:
        if au is not None:
            raise MagicFaceError("give the edit either as --au or as --au_test/--AU_variation, not both")
        if au_test is None or au_variation is None:
            raise MagicFaceError(
                "--au_test and --AU_variation go together, e.g. --au_test AU4+AU1 --AU_variation 4+2"
            )
        return aus.parse_authors_edit(au_test, au_variation)
    return None if au is None else aus.parse_edit(au)


def format_edit(edit: dict[str, float]) -> str:
    """{'AU4': 4.0, 'AU1': 2.0} -> 'AU4=+4, AU1=+2'."""
    return ", ".join(f"{name}={value:+g}" for name, value in edit.items()) or "no AU change"


def check_output(
    path: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str] | None] = (),
    overwrite: bool = False,
) -> Path:
    """An output image path (see `atomic.check_output`: not an input, not existing unless `overwrite`) whose
    format is known from its suffix."""
    path = atomic.user_path(path)
    if path.is_dir():
        raise MagicFaceError(f"output {path} is a folder: give an image file name, e.g. {path / 'edit.png'}")
    if path.suffix.lower() not in Image.registered_extensions():
        raise MagicFaceError(f"cannot write {path}: unknown image format {path.suffix!r}; use .png or .jpg")
    return atomic.check_output(path, inputs, overwrite=overwrite)


def check_size(size: int | None, multiple: int) -> int | None:
    """`--size`, checked by the image-size rule of a model whose sides must be multiples of `multiple`."""
    if size is not None:
        check_image_size(size, size, multiple, "--size")
    return size


def resize_square(image: np.ndarray, size: int, what: str) -> np.ndarray:
    """A square face crop resized to size × size."""
    height, width = image.shape[:2]
    if height != width:
        raise MagicFaceError(f"{what} is {width}x{height}: --size resizes square face crops only")
    if height == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))


def compute_background(face: np.ndarray, mask: str = "person") -> tuple[np.ndarray, list[str]]:
    """The background condition of a face crop, computed by the face preprocessing; and its notes."""
    if not faces.is_available():
        raise MagicFaceError(f"no background condition given: {NO_BACKGROUND_HINT}")
    result = faces.build_background(face, mask=mask)
    return result.background, [
        *result.notes,
        f"computed the background condition from the face ({mask} mask)",
    ]


@dataclasses.dataclass
class EditImages:
    """A source face and its background condition, uint8 (H, W, 3) of the same size."""

    source: np.ndarray
    background: np.ndarray
    notes: list[str] = dataclasses.field(default_factory=list)


def prepare_images(
    source: np.ndarray,
    background: np.ndarray | None,
    *,
    multiple: int,
    size: int | None = None,
    mask: str = "person",
) -> EditImages:
    """Checks a source and background (computing the background when None), resizes both to `size`;
    sides must be multiples of `multiple` (`MagicFaceConfig.size_multiple`)."""
    notes: list[str] = []
    if background is None:
        background, notes = compute_background(source, mask)
    if source.shape != background.shape:
        raise MagicFaceError(
            f"image is {source.shape[1]}x{source.shape[0]} but background is "
            f"{background.shape[1]}x{background.shape[0]}: they must have the same size"
        )
    if size is not None:
        source, background = (
            resize_square(source, size, "image"),
            resize_square(background, size, "background"),
        )
    check_image_size(*source.shape[:2], multiple, "image")
    return EditImages(source, background, notes)


def load_images(
    image: str | Path,
    background: str | Path | None,
    *,
    multiple: int,
    size: int | None = None,
    mask: str = "person",
) -> EditImages:
    """Reads a face crop and its background condition (computed when `background` is None)."""
    return prepare_images(
        load_image(image),
        None if background is None else load_image(background),
        multiple=multiple,
        size=size,
        mask=mask,
    )
