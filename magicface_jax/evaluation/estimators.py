"""What the metrics need from an image, behind small interfaces, so that the synthetic world and real
photographs plug different estimators into one evaluation.

Every estimator takes uint8 images (B, H, W, 3) and returns one row per image. `held_out` is the
estimator's own error on data it was not fitted on (a dict of named figures, empty when unknown), printed
next to every result so that a reader knows what the metric can resolve; `label` names what the estimate
is where it is printed (a proxy says so).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np


class AUEstimator(Protocol):
    label: str

    def aus(self, images: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """(B, 12) intensities ordered as `AU_NAMES`; NaN where an AU cannot be read. `names` name the
        images (an estimator that reads files written for them, such as OpenFace's, goes by the name)."""
        ...

    def held_out(self) -> dict[str, float]: ...


class IdentityEmbedder(Protocol):
    label: str

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(B, D) identity embeddings; ID L2 is the distance between two of them."""
        ...

    def held_out(self) -> dict[str, float]: ...


class PoseEstimator(Protocol):
    label: str

    def pose(self, images: np.ndarray) -> np.ndarray:
        """(B, 3) yaw, pitch, roll in degrees; NaN where an angle cannot be read."""
        ...

    def held_out(self) -> dict[str, float]: ...


@dataclasses.dataclass(frozen=True)
class Estimators:
    """One estimator per metric. The face mask for the background RMSE comes with the data (synthetic) or
    from `face_mask` (photos: from the landmarks)."""

    aus: AUEstimator
    identity: IdentityEmbedder
    pose: PoseEstimator

    def held_out(self) -> dict[str, dict[str, float]]:
        return {
            "aus": self.aus.held_out(),
            "identity": self.identity.held_out(),
            "pose": self.pose.held_out(),
        }
