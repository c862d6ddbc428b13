"""Which pixels of a face crop to black out: the whole person, or only the face parts.

The person is MediaPipe's selfie segmentation model where it is installed (`person_model.py`): the pixels
it gives a probability of at least 0.5, with the face polygon of the landmarks, then the same clean-up as
below. It takes in light hair before a light wall, which colour models cannot tell apart.

Without the model, the person is cut out with OpenCV's GrabCut, seeded by a head-and-shoulders layout
built from the 68 landmarks:

- certainly person: the face (jaw line and forehead), the skull above the brows, the neck under the
  chin and the shoulders at the bottom of the crop;
- probably person: a head ellipse that takes in hair, and the shoulder region widening from the chin;
- certainly scene: the top corners and the sides of the crop above the chin, away from the head;
- probably scene: the rest.

GrabCut then fits colour models to both and settles the uncertain pixels. The result is the connected
region holding the face, its holes filled, grown by 1 % of the face width (the authors' masks reach a
little past the silhouette). All sizes are in units of the face width, measured on the authors' three
examples, so the layout does not depend on the crop's resolution; segmentation runs on a 384² copy.

`--mask face` is the variant of the authors' `retrieve_bg.py`, which blacks out only the face parts of a
face parser (skin, brows, eyes, glasses, nose, mouth, lips) and keeps hair, ears, neck and clothes: here
the region inside the jaw line and brows, plus the forehead skin that GrabCut tells apart from hair.
"""

from __future__ import annotations

import numpy as np

from magicface_jax.faces import person_model

MASK_KINDS = ("person", "face")
WORK_SIZE = 384

# Layout of the person prior, in face widths (the landmarks' horizontal extent).
_HEAD_TOP = 0.75  # top of the head above the highest brow point
_HEAD_HALF_WIDTH = 0.62  # half width of the head-and-hair ellipse
_SKULL = (0.5, 0.6)  # half width, height of the certain skull cap above the brows
_FOREHEAD = 0.3  # certain forehead above the brows
_SCENE_HALF_WIDTH = 1.0  # beyond this from the face centre, above the chin, is certainly scene
_SCENE_HEIGHT = 1.2  # ... and beyond this × the head ellipse's half height
_SCENE_BOTTOM = 0.3  # ... down to this far above the chin
_SHOULDER_TOP = 0.05  # shoulders may start this far above the chin
_SHOULDER_HALF_WIDTH = 0.5  # half width where they start
_SHOULDER_SLOPE = 2.5  # widening per unit of height
_SHOULDER_CORE = 0.25  # certainly shoulders from this far below the chin
_NECK = (0.2, 0.25)  # half width, height of the certain neck under the chin
_GROW = 0.01  # the final mask is grown by this much
_FOREHEAD_BAND = 0.35  # face mask: forehead skin may reach this far above the brows
_ITERATIONS = 5
_PERSON_PROBABILITY = 0.5  # the segmentation model's threshold


def _face_frame(landmarks: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """Centre, width, and (cos, sin) of the roll of the face: the eye line's angle."""
    low, high = landmarks.min(axis=0), landmarks.max(axis=0)
    left_eye, right_eye = landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)
    dx, dy = right_eye - left_eye
    norm = float(np.hypot(dx, dy)) or 1.0
    return (low + high) / 2, float(high[0] - low[0]), dx / norm, dy / norm


def _grabcut(image: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    import cv2

    seeds = seeds.copy()
    if not (seeds == cv2.GC_FGD).any() or not np.isin(seeds, (cv2.GC_BGD, cv2.GC_PR_BGD)).any():
        return np.isin(seeds, (cv2.GC_FGD, cv2.GC_PR_FGD))
    # GrabCut seeds its colour models with k-means on OpenCV's global random generator: fix it so the
    # mask does not depend on what ran before.
    cv2.setRNGSeed(0)
    background, foreground = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.grabCut(
        np.ascontiguousarray(image), seeds, None, background, foreground, _ITERATIONS, cv2.GC_INIT_WITH_MASK
    )
    return np.isin(seeds, (cv2.GC_FGD, cv2.GC_PR_FGD))


def _keep_face_region(mask: np.ndarray, landmarks: np.ndarray, grow: float) -> np.ndarray:
    """The connected part of `mask` holding the nose, holes filled, grown by `grow` pixels."""
    import cv2
    from scipy import ndimage

    labels, _ = ndimage.label(mask)
    nose = np.clip(np.round(landmarks[30]).astype(int), 0, np.array(mask.shape[::-1]) - 1)
    label = labels[nose[1], nose[0]]
    if label == 0:
        return mask
    region = ndimage.binary_fill_holes(labels == label)
    radius = round(grow)
    if radius >= 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        region = cv2.dilate(region.astype(np.uint8), kernel) > 0
    return region


def _person_seeds(shape: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
    import cv2

    centre, width, cos, sin = _face_frame(landmarks)
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    # Coordinates in the upright face frame, in face widths, origin at the face centre.
    u = ((xs - centre[0]) * cos + (ys - centre[1]) * sin) / width
    v = (-(xs - centre[0]) * sin + (ys - centre[1]) * cos) / width
    upright = (landmarks - centre) @ np.array([[cos, -sin], [sin, cos]]) / width
    brow_top = upright[17:27, 1].min()
    chin = upright[8, 1]
    brow_centre = upright[17:27].mean(axis=0)
    head_top = brow_top - _HEAD_TOP
    head_middle, head_half_height = (head_top + chin) / 2, (chin - head_top) / 2

    def in_ellipse(cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
        return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0

    # The shoulders do not roll with the head: they are laid out in image rows below the chin point.
    chin_y = landmarks[8, 1]
    below = (ys - chin_y) / width
    across = np.abs(xs - centre[0]) / width

    seeds = np.full(shape, cv2.GC_PR_BGD, np.uint8)
    scene = ~in_ellipse(0.0, head_middle, _SCENE_HALF_WIDTH, _SCENE_HEIGHT * head_half_height)
    seeds[scene & (v < chin - _SCENE_BOTTOM)] = cv2.GC_BGD
    seeds[in_ellipse(0.0, head_middle, _HEAD_HALF_WIDTH, head_half_height)] = cv2.GC_PR_FGD
    shoulders = below + _SHOULDER_TOP
    seeds[(shoulders > 0) & (across < _SHOULDER_HALF_WIDTH + _SHOULDER_SLOPE * shoulders)] = cv2.GC_PR_FGD
    core = below - _SHOULDER_CORE
    seeds[(core > 0) & (across < _SHOULDER_HALF_WIDTH + _SHOULDER_SLOPE * core)] = cv2.GC_FGD
    seeds[(below >= 0) & (below < _NECK[1]) & (across < _NECK[0])] = cv2.GC_FGD
    skull = in_ellipse(brow_centre[0], brow_centre[1], *_SKULL) & (v < brow_centre[1])
    seeds[skull] = cv2.GC_FGD
    cv2.fillPoly(seeds, [_face_polygon(landmarks, _FOREHEAD * width)], cv2.GC_FGD)
    return seeds


def _face_polygon(landmarks: np.ndarray, forehead: float) -> np.ndarray:
    """The jaw line (0-16) closed over the brows (26 back to 17) raised by `forehead` pixels, int32."""
    _, _, cos, sin = _face_frame(landmarks)
    up = np.array([sin, -cos])  # the face's "up" in image coordinates
    brows = landmarks[26:16:-1] + forehead * up
    return np.round(np.concatenate([landmarks[0:17], brows])).astype(np.int32)


def _face_seeds(shape: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
    import cv2

    width = _face_frame(landmarks)[1]
    seeds = np.full(shape, cv2.GC_BGD, np.uint8)
    cv2.fillPoly(seeds, [_face_polygon(landmarks, _FOREHEAD_BAND * width)], cv2.GC_PR_FGD)
    cv2.fillPoly(seeds, [_face_polygon(landmarks, 0.0)], cv2.GC_FGD)
    return seeds


def segment(image: np.ndarray, landmarks: np.ndarray, kind: str = "person") -> np.ndarray:
    """bool (H, W): the pixels of a face crop to black out, `kind` 'person' or 'face'; the person by the
    segmentation model where it is installed, else by GrabCut.

    `image` is the uint8 RGB crop (H, W, 3) and `landmarks` its 68 landmarks (68, 2) in its pixels.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"mask kind {kind!r}: use one of {MASK_KINDS}")
    if kind == "person" and person_model.is_installed():
        return model_person_mask(image, landmarks)
    return grabcut_mask(image, landmarks, kind)


def model_person_mask(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The person by the segmentation model, with the landmarks' face polygon, cleaned up as GrabCut's."""
    import cv2

    mask = person_model.person_probability(image) >= _PERSON_PROBABILITY
    face = np.zeros(mask.shape, np.uint8)
    cv2.fillPoly(face, [_face_polygon(landmarks, 0.0)], 1)
    return _keep_face_region(mask | (face > 0), landmarks, _GROW * _face_frame(landmarks)[1])


def grabcut_mask(image: np.ndarray, landmarks: np.ndarray, kind: str) -> np.ndarray:
    """The person or the face parts by GrabCut seeded from the landmarks, on a `WORK_SIZE` copy."""
    import cv2

    height, width = image.shape[:2]
    scale = WORK_SIZE / max(height, width)
    work_shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(image, work_shape[::-1], interpolation=interpolation)
    points = (landmarks + 0.5) * np.array([work_shape[1] / width, work_shape[0] / height]) - 0.5
    seeds = (_person_seeds if kind == "person" else _face_seeds)(work_shape, points)
    # GrabCut reads its image as BGR; the colour order makes no difference to its colour models.
    mask = _grabcut(small, seeds)
    face_width = _face_frame(points)[1]
    mask = _keep_face_region(mask, points, _GROW * face_width if kind == "person" else 0.0)
    # Back to the crop's size with smooth edges: linear interpolation of the 0/1 mask, then a threshold.
    full = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return full >= 0.5
