"""The 17 jaw-line dots of the background condition, drawn the way the authors' `retrieve_bg.py` draws them.

They align the face to a 256² frame by a similarity fitted to five points (eye centres, nose tip, mouth
corners), draw each jaw point (0-16 of the 68-point scheme) there as a filled circle of radius 2, warp
that layer back onto the 512² crop with bilinear interpolation (so a dot is about 7-8 px across at 512²,
soft-edged) and add it to the masked image, saturating at 255.

Their jaw points come from a 3D face-model fit, ours from dlib's 68-point predictor, whose jaw line is
annotated on the visible contour: on the authors' three examples dlib's points sit 4.6-8.3 px (in the
256² frame) below theirs. The dots are therefore drawn `JAW_RAISE` frame pixels higher than dlib's
points, which brings them from 14.3, 15.8 and 8.5 px (at 512²) to 11.3, 9.8 and 6.8 px from the
authors' dots (11.2, 9.9 and 7.7 px when each image's shift is measured on the other two only).
"""

from __future__ import annotations

import numpy as np

JAW = slice(0, 17)

# Pixel colours of the 17 dots as they appear in the authors' images (RGB). They are the first 17 of 70
# colours of matplotlib's 'rainbow' colour map, (255 * rgba).astype(int), with red and blue swapped: the
# authors pass an RGB colour to OpenCV as if it were BGR. Checked against their example images and
# against matplotlib in the tests.
JAW_COLOURS = np.array(
    [
        [255, 0, 127],
        [254, 9, 121],
        [254, 21, 113],
        [254, 34, 105],
        [254, 43, 99],
        [253, 56, 91],
        [252, 68, 83],
        [251, 77, 77],
        [250, 89, 69],
        [249, 100, 61],
        [248, 112, 53],
        [247, 120, 47],
        [245, 131, 39],
        [243, 142, 31],
        [242, 149, 25],
        [240, 159, 17],
        [238, 169, 9],
    ],
    np.uint8,
)

# The authors' five-point template of the 256² alignment frame: eye centres (image left, image right),
# nose tip, mouth corners (image left, image right).
FIVE_POINT_TEMPLATE_256 = np.array(
    [
        [(30.2946 + 8) * 2 + 16, 51.6963 * 2],
        [(65.5318 + 8) * 2 + 16, 51.5014 * 2],
        [(48.0252 + 8) * 2 + 16, 71.7366 * 2],
        [(33.5493 + 8) * 2 + 16, 92.3655 * 2],
        [(62.7299 + 8) * 2 + 16, 92.2041 * 2],
    ]
)
DOT_RADIUS = 2  # in the 256² frame
JAW_RAISE = 7.0  # in the 256² frame, towards the brows (see above)
# The frame is drawn with this margin on every side so that dots just outside it are not cut off.
_MARGIN = 128


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip and mouth corners (5, 2) from the 68 landmarks, in the template's order."""
    return np.stack(
        [
            landmarks[36:42].mean(axis=0),
            landmarks[42:48].mean(axis=0),
            landmarks[30],
            landmarks[48],
            landmarks[54],
        ]
    )


def similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, shift) taking `source` onto `target`, (2, 3)."""
    x, y = source[:, 0], source[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    design = np.concatenate([np.stack([x, -y, ones, zeros], 1), np.stack([y, x, zeros, ones], 1)])
    a, b, tx, ty = np.linalg.lstsq(design, np.concatenate([target[:, 0], target[:, 1]]), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def _frame_jaw(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(crop pixels -> 256² frame matrix (2, 3), the 17 dot positions (17, 2) in that frame)."""
    to_frame = similarity(five_points(landmarks), FIVE_POINT_TEMPLATE_256)
    jaw = landmarks[JAW] @ to_frame[:, :2].T + to_frame[:, 2] - [0.0, JAW_RAISE]
    return to_frame, jaw


def jaw_dot_centres(landmarks: np.ndarray) -> np.ndarray:
    """Where the 17 dots are drawn (17, 2), in the crop's pixels, for its landmarks (68, 2)."""
    to_frame, jaw = _frame_jaw(landmarks)
    linear = to_frame[:, :2]
    return (jaw - to_frame[:, 2]) @ np.linalg.inv(linear).T


def jaw_dot_layer(landmarks: np.ndarray, size: int) -> np.ndarray:
    """uint8 (size, size, 3): the jaw dots on black, for landmarks (68, 2) in the size² crop's pixels."""
    import cv2

    to_frame, jaw = _frame_jaw(landmarks)
    jaw = jaw + _MARGIN
    to_frame[:, 2] += _MARGIN
    canvas = np.zeros((256 + 2 * _MARGIN, 256 + 2 * _MARGIN, 3), np.uint8)
    for (x, y), colour in zip(np.round(jaw).astype(int), JAW_COLOURS, strict=True):
        cv2.circle(canvas, (int(x), int(y)), DOT_RADIUS, tuple(int(c) for c in colour), thickness=-1)
    return cv2.warpAffine(
        canvas,
        to_frame,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
    )


def add_layer(image: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """image + layer, saturating at 255 (the dots are added, not pasted)."""
    return np.minimum(image.astype(np.uint16) + layer, 255).astype(np.uint8)
