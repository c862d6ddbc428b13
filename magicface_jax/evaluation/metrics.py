"""The paper's four metrics (Table I) as pure functions of arrays; each averages over the images.

- AU MSE: requested AU intensities (the identity's AUs plus the variation) against the AUs estimated on the
  edited image, squared error averaged over images and AUs (an AU the estimator leaves NaN is left out).
- ID L2: Euclidean distance between the identity embeddings of the source and of the edited image.
- Background RMSE: root mean squared difference between source and edited image over the pixels outside
  the source's face mask, values in [0, 1], per image, then averaged.
- Head-pose RMSE: root mean squared difference of (yaw, pitch, roll) between source and edited image, in
  degrees, over images and the three angles.
"""

from __future__ import annotations

import numpy as np

from magicface_jax.errors import MagicFaceError

POSE_UNIT = "degrees"


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise MagicFaceError(f"{what}: shapes {a.shape} and {b.shape} differ")
    return a, b


def requested_aus(identity_aus: np.ndarray, variation: np.ndarray) -> np.ndarray:
    """What an edit asks for: the identity image's AUs plus the variation (target − identity)."""
    return np.asarray(identity_aus, np.float64) + np.asarray(variation, np.float64)


def au_mse(requested: np.ndarray, estimated: np.ndarray, axis: int | None = None) -> float | np.ndarray:
    """Mean squared error over images (B, 12) and AUs, or with `axis=0` per AU (12,); NaN estimates (AUs an
    estimator cannot read) are left out; NaN where nothing is left."""
    requested, estimated = _same_shape(requested, estimated, "AU MSE")
    squared = (requested - estimated) ** 2
    valid = ~np.isnan(squared)
    count = valid.sum(axis)
    total = np.where(valid, squared, 0.0).sum(axis)
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return float(mean) if axis is None else mean


def id_l2(source_embeddings: np.ndarray, edited_embeddings: np.ndarray) -> float:
    """Mean L2 distance between embeddings (B, D); a pair with a NaN embedding (no face found) is left
    out; NaN if nothing is left."""
    a, b = _same_shape(source_embeddings, edited_embeddings, "ID L2")
    distance = np.linalg.norm(a - b, axis=-1)
    valid = ~np.isnan(distance)
    return float(distance[valid].mean()) if valid.any() else float("nan")


def background_rmse(source: np.ndarray, edited: np.ndarray, face_mask: np.ndarray) -> float:
    """Per-image RMSE outside the face mask, averaged; images (B, H, W, 3) uint8 or floats in [0, 1], masks
    bool (B, H, W) (True = face, left out)."""
    return float(np.mean(background_rmse_per_image(source, edited, face_mask)))


def background_rmse_per_image(source: np.ndarray, edited: np.ndarray, face_mask: np.ndarray) -> np.ndarray:
    """(B,) RMSE outside the face mask of each image (see `background_rmse`)."""
    source, edited = (_unit(x) for x in (source, edited))
    source, edited = _same_shape(source, edited, "background RMSE")
    face_mask = np.asarray(face_mask, bool)
    if face_mask.shape != source.shape[:3]:
        raise MagicFaceError(f"background RMSE: mask {face_mask.shape} does not match images {source.shape}")
    squared = ((source - edited) ** 2).mean(-1)
    outside = ~face_mask
    if not outside.reshape(len(outside), -1).any(-1).all():
        raise MagicFaceError("background RMSE: a face mask covers the whole image")
    return np.array([np.sqrt(s[o].mean()) for s, o in zip(squared, outside, strict=True)])


def pose_rmse(source_pose: np.ndarray, edited_pose: np.ndarray) -> float:
    """RMSE over images (B, 3) of (yaw, pitch, roll) in degrees; a NaN angle is left out."""
    a, b = _same_shape(source_pose, edited_pose, "head-pose RMSE")
    squared = (a - b) ** 2
    valid = ~np.isnan(squared)
    return float(np.sqrt(squared[valid].mean())) if valid.any() else float("nan")


def _unit(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    return images / 255.0 if images.dtype == np.uint8 else images.astype(np.float64)
