"""Face parts as pixel boxes from the 68 landmarks (iBUG 300-W order): where an AU's change shows."""

from __future__ import annotations

import numpy as np

# landmark indices of each part; a part's box is their bounding box grown by `_GROW` of the face width
PARTS = {
    "brows": np.arange(17, 27),
    "eyes": np.arange(36, 48),
    "mouth": np.arange(48, 68),
    "face": np.arange(0, 68),
}
_GROW = {"brows": 0.12, "eyes": 0.08, "mouth": 0.1, "face": 0.0}
# which part shows each AU's change most (the design study measures these)
AU_PART = {"AU1": "brows", "AU2": "brows", "AU4": "brows", "AU5": "eyes", "AU6": "eyes", "AU12": "mouth"}


def part_box(landmarks: np.ndarray, part: str, size: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel box of `part` for landmarks (68, 2) in a size² image, clipped."""
    points = landmarks[PARTS[part]]
    width = np.ptp(landmarks[:, 0])
    grow = _GROW[part] * width
    left, top = np.floor(points.min(0) - grow).astype(int)
    right, bottom = np.ceil(points.max(0) + grow).astype(int) + 1
    if part == "face":  # up to the forehead: the brows' height above the eyes again
        top = int(
            np.floor(
                landmarks[17:27, 1].min() - 0.5 * (landmarks[36:48, 1].mean() - landmarks[17:27, 1].min())
            )
        )
    return max(top, 0), min(bottom, size), max(left, 0), min(right, size)


def part_mask(landmarks: np.ndarray, part: str, size: int) -> np.ndarray:
    """bool (size, size): the box of `part`."""
    top, bottom, left, right = part_box(landmarks, part, size)
    mask = np.zeros((size, size), bool)
    mask[top:bottom, left:right] = True
    return mask
