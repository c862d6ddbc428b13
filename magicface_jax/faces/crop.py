"""The authors' face crop: a square 1.5 face-widths wide, centred on the face, mapped onto [80, 432]².

Their `utils/preprocess.py` takes the largest face box of an InsightFace (SCRFD) detector, builds the
square of side 1.5 × the box width centred on the box, and maps it by a similarity transform onto the
square [80, 432]² of a 512² image: no rotation, so the crop spans 512 / 352 × 1.5 ≈ 2.2 face widths.

We have dlib instead of SCRFD, so the box is derived from the 68 landmarks: SCRFD's box is as wide as
the landmarks' horizontal extent (cheek to cheek) and reaches higher (to the hairline), so its centre
lies above the centre of the landmarks' extent. `BOX_WIDTH_SCALE` and `BOX_RAISE` were measured on the
authors' three example crops: dlib's landmarks on each of them give back the box that produced it
(width 352 / 1.5 ≈ 234.7 px, centre (256, 256)) to within 3.5 % in scale and 9 px in position.
"""

from __future__ import annotations

import numpy as np

REFERENCE_SIZE = 512
# The square the face box's 1.5× square is mapped onto in a 512² crop: [80, 432]².
BOX_LOW, BOX_HIGH = 80.0, 432.0
CROP_RATIO = 1.5
# SCRFD box width / landmark x-extent, and how far SCRFD's box centre lies above the landmarks'
# extent centre, in box widths (measured on the authors' examples: 0.18-0.19).
BOX_WIDTH_SCALE = 1.0
BOX_RAISE = 0.19


def face_box(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(centre x, centre y, width) of the face box the authors' detector would give, from 68 landmarks."""
    low, high = landmarks.min(axis=0), landmarks.max(axis=0)
    width = float(high[0] - low[0]) * BOX_WIDTH_SCALE
    centre_x = float(low[0] + high[0]) / 2
    centre_y = float(low[1] + high[1]) / 2 - BOX_RAISE * width
    return centre_x, centre_y, width


def crop_matrix(landmarks: np.ndarray, size: int = REFERENCE_SIZE) -> np.ndarray:
    """The (2, 3) affine matrix from image pixels to the size² crop of the face with these landmarks."""
    centre_x, centre_y, width = face_box(landmarks)
    side = CROP_RATIO * max(width, 1.0)
    scale = (BOX_HIGH - BOX_LOW) / side * size / REFERENCE_SIZE
    middle = (BOX_LOW + BOX_HIGH) / 2 * size / REFERENCE_SIZE
    return np.array([[scale, 0.0, middle - scale * centre_x], [0.0, scale, middle - scale * centre_y]])


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Applies a (2, 3) affine matrix to points (N, 2)."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The size² image seen through `matrix`: bilinear, black outside the source, as the authors do.

    When the crop shrinks the photo, the photo is first shrunk by area averaging to the crop's scale:
    a bilinear warp alone (the authors' way) aliases hair and edges of a large photo.
    """
    import cv2

    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    height, width = image.shape[:2]
    if scale < 0.75:
        small = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
        # Pixel centres: x_small = (x + 0.5) * small / width - 0.5.
        fx, fy = small[0] / width, small[1] / height
        to_small = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5], [0.0, 0.0, 1.0]])
        matrix = matrix @ np.linalg.inv(to_small)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def inside_source(shape: tuple[int, int], matrix: np.ndarray, size: int) -> np.ndarray:
    """bool (size, size): True where the crop shows the source image rather than the black border."""
    ones = np.full(shape, 255, np.uint8)
    return warp(ones, matrix, size) >= 128
