"""From a photo to the two images MagicFace needs: the face crop and its background condition.

    result = preprocess_image(photo, size=512, mask="person")
    result.face, result.background  # uint8 (size, size, 3)

The crop follows the authors' `utils/preprocess.py` (see `crop.py`); the background condition follows
the images the authors ship with their weights: the person blacked out, the scene behind kept, and the
17 jaw-line landmarks added as coloured dots (see `segment.py` and `jaw_dots.py`). For a face that is
already cropped, `build_background` makes only the background condition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from magicface_jax.config import SD15_SIZE_MULTIPLE
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces import crop as crop_lib
from magicface_jax.faces import person_model
from magicface_jax.faces.detect import (
    FaceDependencyError,
    is_available,
    largest_face,
    require_face_dependencies,
)
from magicface_jax.faces.jaw_dots import add_layer, jaw_dot_layer
from magicface_jax.faces.segment import MASK_KINDS, segment
from magicface_jax.images import ImageLike, as_rgb_uint8, check_image_size

__all__ = [
    "FaceDependencyError",
    "NoFaceError",
    "Preprocessed",
    "build_background",
    "is_available",
    "preprocess_image",
]

# A crop that enlarges the photo more than this looks soft: say so.
_MAX_UPSCALE = 2.0
# A crop on a square this big or bigger lets dlib find the face again in `build_background`.
_REDETECT_SIZE = 512


class NoFaceError(MagicFaceError):
    """No face was found in the image."""


@dataclass
class Preprocessed:
    """A face crop and its background condition, both uint8 (size, size, 3)."""

    face: np.ndarray
    background: np.ndarray
    landmarks: np.ndarray  # float (68, 2) in crop pixels
    person_mask: np.ndarray  # bool (size, size): True where blacked out
    notes: list[str] = field(default_factory=list)


def _check_size(size: int) -> int:
    check_image_size(size, size, SD15_SIZE_MULTIPLE, "size")
    return int(size)


def _check_mask(mask: str) -> str:
    if mask not in MASK_KINDS:
        raise MagicFaceError(f"mask {mask!r} is not one of {', '.join(MASK_KINDS)}")
    return mask


def _segmentation_notes(mask: str) -> list[str]:
    if mask == "person" and not person_model.is_installed():
        return [
            "no person segmentation model is installed (python -m magicface_jax.faces.person_model installs "
            "it): GrabCut cut out the person and may miss light hair"
        ]
    return []


def _condition(
    face: np.ndarray, landmarks: np.ndarray, mask: str, region: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(background, blacked-out mask) of a crop; `region` limits the mask to pixels of the photo."""
    blacked = segment(face, landmarks, mask)
    if region is not None:
        blacked &= region
    masked = np.where(blacked[..., None], np.uint8(0), face)
    return add_layer(masked, jaw_dot_layer(landmarks, face.shape[0])), blacked


def preprocess_image(image: ImageLike, size: int = 512, mask: str = "person") -> Preprocessed:
    """Crops the largest face of a photo the authors' way and builds its background condition.

    `image` is a PIL image or a uint8 array (H, W, 3) (grayscale and RGBA are converted to RGB);
    `size` the side of the square outputs (a multiple of 64, SD1.5's size rule; the authors use 512);
    `mask` 'person' (blacks out the whole person, as in the authors' released examples) or 'face' (only
    the face parts, as their published `retrieve_bg.py`). Raises `NoFaceError` when there is no face.
    """
    size, mask = _check_size(size), _check_mask(mask)
    require_face_dependencies()
    photo = as_rgb_uint8(image)
    found, count = largest_face(photo)
    if found is None:
        raise NoFaceError(
            f"no face found in the {photo.shape[1]}x{photo.shape[0]} image: give a photo with a clearly "
            "visible, roughly frontal face"
        )
    notes = [f"{count} faces found; used the largest"] if count > 1 else []
    notes += _segmentation_notes(mask)
    matrix = crop_lib.crop_matrix(found.landmarks, size)
    crop = crop_lib.warp(photo, matrix, size)
    landmarks = crop_lib.transform_points(matrix, found.landmarks)
    region = crop_lib.inside_source(photo.shape[:2], matrix, size)
    if not region.all():
        notes.append(
            f"the face is near the photo's edge: {1 - region.mean():.0%} of the crop is black padding"
        )
    upscale = float(matrix[0, 0])
    if upscale > _MAX_UPSCALE:
        face_width = crop_lib.face_box(found.landmarks)[2]
        notes.append(
            f"the face is only {face_width:.0f} px wide in the photo: the crop enlarges it {upscale:.1f}x "
            "and will look soft"
        )
    background, blacked = _condition(crop, landmarks, mask, region)
    return Preprocessed(crop, background, landmarks, blacked, notes)


def build_background(face: ImageLike, mask: str = "person") -> Preprocessed:
    """The background condition of an already-cropped square face (e.g. the authors' 512² crops).

    The crop is used as it is (`result.face`); only its landmarks, mask and background are computed.
    Raises `NoFaceError` when no face is found in it.
    """
    mask = _check_mask(mask)
    require_face_dependencies()
    crop = as_rgb_uint8(face)
    size = crop.shape[0]
    if crop.shape[1] != size:
        raise MagicFaceError(
            f"a face crop is square; this one is {crop.shape[1]}x{size}: use preprocess_image to crop a photo"
        )
    # Small crops are enlarged for the detector: dlib's HOG detector needs faces of about 40 px or more.
    scale = max(1.0, _REDETECT_SIZE / size)
    search = crop
    if scale > 1:
        import cv2

        search = cv2.resize(crop, (round(size * scale),) * 2, interpolation=cv2.INTER_CUBIC)
    found, count = largest_face(search)
    if found is None:
        raise NoFaceError(
            f"no face found in the {size}x{size} crop: give a face crop (or a photo to preprocess_image)"
        )
    landmarks = (found.landmarks + 0.5) / scale - 0.5
    notes = [f"{count} faces found; used the largest"] if count > 1 else []
    notes += _segmentation_notes(mask)
    background, blacked = _condition(crop, landmarks, mask, None)
    return Preprocessed(crop, background, landmarks, blacked, notes)
