"""The example schema both datasets share, so training reads either the same way.

Images are PNG bytes (uint8 (S, S, 3); masks (S, S) 0/255) in scalar string tensors, since tfds' image
feature needs TensorFlow to encode. AU vectors are ordered as `magicface_jax.faces.aus.AU_NAMES`.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from magicface_jax.faces.aus import AU_NAMES, NUM_AUS

IDENTITY_IMAGE = "identity_image"
TARGET_IMAGE = "target_image"
BACKGROUND = "background"
AU_VARIATION = "au_variation"
IMAGE_KEYS = (IDENTITY_IMAGE, TARGET_IMAGE, BACKGROUND)


def png(doc: str) -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=(), dtype=np.object_, doc=f"PNG bytes: {doc}")


def aus(doc: str) -> tfds.features.Tensor:
    return tfds.features.Tensor(
        shape=(NUM_AUS,), dtype=np.float32, doc=f"{doc}, ordered {', '.join(AU_NAMES)}"
    )


def landmarks(doc: str) -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=(68, 2), dtype=np.float32, doc=f"{doc}: 68-point scheme, (x, y) pixels")


def pair_features(size: int) -> dict[str, tfds.features.FeatureConnector]:
    """The features every pair has, for `size`² images."""
    return {
        IDENTITY_IMAGE: png(f"the identity face crop, uint8 ({size}, {size}, 3)"),
        TARGET_IMAGE: png(f"the same person with another expression, uint8 ({size}, {size}, 3)"),
        BACKGROUND: png(
            f"the target's background condition, uint8 ({size}, {size}, 3): scene kept, person black, "
            "17 jaw-line dots"
        ),
        AU_VARIATION: aus("target − identity AU intensities"),
        "identity_aus": aus("AU intensities of the identity image"),
        "target_aus": aus("AU intensities of the target image"),
        "identity_id": tfds.features.Text(doc="who the person is; no person is in two splits"),
        "target_landmarks": landmarks("landmarks of the target image"),
    }
