"""Face detection and 68-point landmarks with dlib, fully offline.

The models are dlib's own HOG frontal-face detector, and the 68-point shape predictor and the CNN (MMOD)
face detector that ship inside the `face_recognition_models` wheel. HOG runs first (about 0.1 s on a
512² photo) and its detections scoring below `_HOG_MIN_SCORE` are dropped (on scikit-image's astronaut
the face scores 1.2 and a mission patch 0.1); only when no face is left does the slower CNN detector
(about 2 s) get a second look, which catches turned, tilted and small faces. Models load once per process.

dlib and its models are optional dependencies (`pip install 'magicface-jax[faces]'`): nothing here is
imported before a function needs it.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magicface_jax.errors import MagicFaceError

_MODULES = ("dlib", "cv2", "face_recognition_models", "scipy")
INSTALL_HINT = "install the optional face dependencies: pip install 'magicface-jax[faces]'"

# HOG works on a copy whose longer side is at most this many pixels, upsampled once by dlib: faces down
# to about 40 px at that scale are found without spending seconds on a large photo. The CNN works on a
# copy of at most 512 pixels, not upsampled (faces from about 80 px there; 2 s on two CPU cores).
_HOG_MAX_SIDE = 1024
_HOG_MIN_SCORE = 0.5
_CNN_MAX_SIDE = 512


class FaceDependencyError(MagicFaceError):
    """The optional face dependencies (dlib, OpenCV, face_recognition_models, SciPy) are not installed."""


def is_available() -> bool:
    """True when the optional face dependencies can be imported (checked without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in _MODULES)


def require_face_dependencies() -> None:
    """Raises `FaceDependencyError`, naming what is missing, unless `is_available()`."""
    missing = [name for name in _MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise FaceDependencyError(f"face preprocessing needs {', '.join(missing)}: {INSTALL_HINT}")


def model_file(name: str) -> str:
    # Located without importing the package: its __init__ imports pkg_resources, which recent
    # setuptools no longer ships.
    spec = importlib.util.find_spec("face_recognition_models")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = Path(root) / "models" / name
        if path.is_file():
            return str(path)
    raise FaceDependencyError(f"model file {name} is missing from face_recognition_models: {INSTALL_HINT}")


@functools.cache
def _hog_detector():
    require_face_dependencies()
    import dlib

    return dlib.get_frontal_face_detector()


@functools.cache
def _cnn_detector():
    require_face_dependencies()
    import dlib

    return dlib.cnn_face_detection_model_v1(model_file("mmod_human_face_detector.dat"))


@functools.cache
def _shape_predictor():
    require_face_dependencies()
    import dlib

    return dlib.shape_predictor(model_file("shape_predictor_68_face_landmarks.dat"))


@dataclass(frozen=True)
class Face:
    """One detected face in image pixel coordinates."""

    box: np.ndarray  # (4,) float: left, top, right, bottom of the detector's box
    landmarks: np.ndarray  # (68, 2) float: x, y of the 68-point scheme (iBUG 300-W order)

    @property
    def area(self) -> float:
        left, top, right, bottom = self.box
        return float(max(right - left, 0.0) * max(bottom - top, 0.0))


def _resized(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    import cv2

    scale = min(1.0, max_side / max(image.shape[:2]))
    if scale == 1.0:
        return image, 1.0
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _detect_boxes(image: np.ndarray) -> np.ndarray:
    """Face boxes (N, 4) as left, top, right, bottom in `image` pixels: HOG first, then the CNN."""
    small, scale = _resized(image, _HOG_MAX_SIDE)
    found, scores, _ = _hog_detector().run(small, 1, 0.0)
    rects = [rect for rect, score in zip(found, scores, strict=True) if score >= _HOG_MIN_SCORE]
    if not rects:
        small, scale = _resized(image, _CNN_MAX_SIDE)
        rects = [detection.rect for detection in _cnn_detector()(small, 0)]
    boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], np.float64)
    return boxes.reshape(-1, 4) / scale


def landmarks_in_box(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The 68 landmarks (68, 2) of the face in `box` (left, top, right, bottom) of a uint8 RGB image."""
    import dlib

    left, top, right, bottom = (round(float(v)) for v in box)
    shape = _shape_predictor()(image, dlib.rectangle(left, top, right, bottom))
    return np.array([(p.x, p.y) for p in shape.parts()], np.float64)


def detect_faces(image: np.ndarray) -> list[Face]:
    """Every face found in a uint8 RGB image (H, W, 3), largest first."""
    require_face_dependencies()
    faces = [Face(box, landmarks_in_box(image, box)) for box in _detect_boxes(image)]
    return sorted(faces, key=lambda face: face.area, reverse=True)


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise MagicFaceError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")


def largest_face(image: np.ndarray) -> tuple[Face | None, int]:
    """The largest face in a uint8 RGB image and how many faces were found (None, 0 when none)."""
    _check_image(image)
    faces = detect_faces(np.ascontiguousarray(image))
    return (faces[0] if faces else None), len(faces)
