"""The geometry of a procedural face: the 68 landmarks (the iBUG/dlib scheme) and the face outline in face
units, moved by the 12 AUs at their intensities, and projected into the image by a pose.

Face units: half the face width at the eyes is about 1, the eye line is y = 0, y points down, x towards
the image's right. Landmark 0 is on the subject's right (the image's left), as in the 68-point scheme.
"""

from __future__ import annotations

import numpy as np

from magicface_jax.data.face_params import Identity, Pose
from magicface_jax.faces.aus import AU_NAMES

NUM_LANDMARKS = 68
JAW = slice(0, 17)
RIGHT_BROW, LEFT_BROW = slice(17, 22), slice(22, 27)
NOSE_BRIDGE, NOSE_BASE = slice(27, 31), slice(31, 36)
RIGHT_EYE, LEFT_EYE = slice(36, 42), slice(42, 48)
OUTER_LIPS, INNER_LIPS = slice(48, 60), slice(60, 68)

FACE_CENTER = (0.5, 0.44)  # where the eye line's centre sits, as fractions of the image
UNIT = 0.23  # one face unit as a fraction of the image size at scale 1
_HEAD_DEPTH = 0.85


def au_intensities(aus: np.ndarray) -> dict[str, float]:
    """{'AU1': s1, ...} from a (12,) vector ordered as AU_NAMES."""
    aus = np.asarray(aus, np.float64)
    if aus.shape != (len(AU_NAMES),):
        raise ValueError(f"expected {len(AU_NAMES)} AU intensities, got shape {aus.shape}")
    return dict(zip(AU_NAMES, aus.tolist(), strict=True))


def _superellipse(identity: Identity, phi: np.ndarray, s: dict[str, float]) -> np.ndarray:
    """Jaw line points for angles phi (pi: the subject's right, pi/2: chin, 0: left), with jaw drop and
    chin raise applied."""
    power = 2.0 / identity.jaw_squareness
    cos, sin = np.cos(phi), np.sin(phi)
    x = identity.face_width * np.sign(cos) * np.abs(cos) ** power
    y = identity.jaw_top + (identity.chin - identity.jaw_top) * np.abs(sin) ** power
    y = y + 0.045 * s["AU26"] * sin**2 - 0.01 * s["AU17"] * np.exp(-(((phi - np.pi / 2) / 0.4) ** 2))
    return np.stack([x, y], -1)


def jaw_line(identity: Identity, aus: np.ndarray, count: int = 17) -> np.ndarray:
    """`count` points along the jaw from the subject's right to left; 17 gives landmarks 0–16."""
    return _superellipse(identity, np.linspace(np.pi, 0.0, count), au_intensities(aus))


def face_outline(identity: Identity, aus: np.ndarray, count: int = 48) -> np.ndarray:
    """A closed polygon around the face: the jaw (right to left) then the skull back over the top."""
    jaw = jaw_line(identity, aus, count)
    psi = np.linspace(0.0, np.pi, count)[1:-1]
    top = identity.jaw_top + identity.head_top
    skull = np.stack([identity.face_width * np.cos(psi), identity.jaw_top - top * np.sin(psi) ** 0.9], -1)
    return np.concatenate([jaw, skull])


def _brow(identity: Identity, s: dict[str, float], side: float) -> np.ndarray:
    """Five brow points from outer to inner; side -1 is the subject's right (the image's left)."""
    t = np.array([1.0, 0.75, 0.5, 0.25, 0.0])  # 0 at the inner end
    inner = 0.13
    outer = identity.eye_spacing + identity.eye_width + 0.05
    x = inner + (outer - inner) * t
    u = 0.1 + 0.65 * t
    y = identity.brow_height - identity.brow_arch * 4 * u * (1 - u)
    y = y - 0.035 * s["AU1"] * (1 - t) ** 1.5 - 0.035 * s["AU2"] * t**1.5
    y = y + 0.022 * s["AU4"] * (0.5 + 0.5 * (1 - t)) + 0.008 * s["AU9"] * (1 - t)
    x = x - 0.014 * s["AU4"] * (1 - t)
    return np.stack([side * x, y], -1)


def eye_lids(
    identity: Identity, aus: np.ndarray, side: float, count: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """(upper, lower) lid curves of one eye, each `count` points from the outer to the inner corner."""
    s = au_intensities(aus)
    u = np.linspace(0.0, 1.0, count)  # 0 outer corner, 1 inner corner
    cx, hw = identity.eye_spacing, identity.eye_width
    x = side * (cx + hw - 2 * hw * u)
    base = -0.012 * (1 - u) + 0.005 * u
    bump = np.sin(np.pi * u)
    upper = base - identity.eye_open * bump**0.85
    upper = upper + (-0.012 * s["AU5"] + 0.004 * s["AU6"] + 0.003 * s["AU4"]) * bump**0.85
    lower_open = 0.55 * identity.eye_open + 0.01
    lower = base + lower_open * bump**0.9 - 0.008 * s["AU6"] * bump**0.9
    lower = np.maximum(lower, upper + 0.004 * bump)
    return np.stack([x, upper], -1), np.stack([x, lower], -1)


def _nose(identity: Identity, s: dict[str, float]) -> np.ndarray:
    ny, nw = identity.nose_length, identity.nose_width
    bridge = np.array([[0, -0.02], [0, 0.3 * ny], [0, 0.6 * ny], [0, ny - 0.06 - 0.006 * s["AU9"]]])
    lift = 0.012 * s["AU9"]
    spread = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    x = nw * spread + 0.006 * s["AU9"] * spread
    y = ny + np.array([-0.04, 0.01, 0.025, 0.01, -0.04]) - lift
    return np.concatenate([bridge, np.stack([x, y], -1)])


def mouth_center(identity: Identity) -> float:
    return identity.nose_length + identity.mouth_position * (identity.chin - identity.nose_length)


def _mouth(identity: Identity, s: dict[str, float]) -> np.ndarray:
    """Landmarks 48–67: outer lips (corner, upper lip, corner, lower lip) then inner lips."""
    my, mw = mouth_center(identity), identity.mouth_width
    thin = 1 - 0.06 * s["AU20"] - 0.02 * s["AU12"]
    ul, ll = identity.upper_lip * thin, identity.lower_lip * thin
    outer_u = np.array([-1, -0.6, -0.22, 0, 0.22, 0.6, 1, 0.6, 0.25, 0, -0.25, -0.6])
    outer_y = np.array([0, -0.75, -1.05, -0.85, -1.05, -0.75, 0, 0.75, 0.97, 1.0, 0.97, 0.75])
    outer_y = np.where(outer_y < 0, outer_y * ul, outer_y * ll)
    inner_u = np.array([-0.85, -0.35, 0, 0.35, 0.85, 0.35, 0, -0.35])
    u = np.concatenate([outer_u, inner_u])
    y = np.concatenate([outer_y, np.zeros(8)])
    # which lip a point moves with: +1 upper, -1 lower, 0 corner
    part = np.array([0, 1, 1, 1, 1, 1, 0, -1, -1, -1, -1, -1, 0, 1, 1, 1, 0, -1, -1, -1])
    corner, middle = u**2, 1 - u**2
    dx = u * (0.010 * s["AU12"] - 0.004 * s["AU15"] + 0.028 * s["AU20"])
    dy = corner * (-0.03 * s["AU12"] + 0.026 * s["AU15"] + 0.006 * s["AU20"] + 0.006 * s["AU17"])
    upper, lower = part == 1, part == -1
    gap = 0.5 * 0.014 * s["AU25"] * middle
    dy = dy + np.where(upper, -0.010 * s["AU9"] * (0.3 + 0.7 * middle) - 0.004 * s["AU17"] * middle - gap, 0)
    dy = dy + np.where(lower, -0.014 * s["AU17"] * (0.5 + 0.5 * middle) + gap, 0)
    dy = dy + np.where(lower, 0.040 * s["AU26"] * (0.6 + 0.4 * middle), 0.004 * s["AU26"] * (part == 0))
    return np.stack([u * mw + dx, my + y + dy], -1)


def landmarks(identity: Identity, aus: np.ndarray) -> np.ndarray:
    """The 68 landmarks (68, 2) in face units for an identity showing AU intensities `aus` (12,)."""
    s = au_intensities(aus)
    right_up, right_lo = eye_lids(identity, aus, -1.0)
    left_up, left_lo = eye_lids(identity, aus, 1.0)
    # 36 outer corner, 37–38 upper lid, 39 inner, 40–41 lower lid; the left eye starts inner (42)
    right_eye = np.concatenate([right_up[[0, 2, 4, 6]], right_lo[[4, 2]]])
    left_eye = np.concatenate([left_up[[6, 4, 2, 0]], left_lo[[2, 4]]])
    points = np.concatenate(
        [
            jaw_line(identity, aus),
            _brow(identity, s, -1.0),
            _brow(identity, s, 1.0)[::-1],
            _nose(identity, s),
            right_eye,
            left_eye,
            _mouth(identity, s),
        ]
    )
    assert points.shape == (NUM_LANDMARKS, 2)
    return points


def head_depth(points: np.ndarray) -> np.ndarray:
    """Depth towards the camera of points on the head's front, an ellipsoid; 0 at the silhouette."""
    x, y = points[..., 0], points[..., 1]
    inside = 1 - (x / 1.05) ** 2 - ((y - 0.35) / 1.7) ** 2
    return _HEAD_DEPTH * np.sqrt(np.clip(inside, 0, None))


def landmark_depth(points: np.ndarray) -> np.ndarray:
    """Depth of the 68 landmarks: the head's surface plus the nose and lips standing out."""
    extra = np.zeros(NUM_LANDMARKS)
    extra[27:36] = [0.1, 0.2, 0.3, 0.4, 0.15, 0.25, 0.3, 0.25, 0.15]
    extra[48:68] = 0.05
    return head_depth(points) + extra


def project(points: np.ndarray, depth: np.ndarray | float, pose: Pose, size: float) -> np.ndarray:
    """Face units -> (x, y) pixels of a `size`² image: yaw about the vertical axis, then scale, in-plane
    rotation and shift."""
    yaw, rot = np.radians(pose.yaw), np.radians(pose.rotation)
    x = points[..., 0] * np.cos(yaw) + np.asarray(depth) * np.sin(yaw)
    y = points[..., 1]
    unit = UNIT * size * pose.scale
    cx = size * (FACE_CENTER[0] + pose.shift_x)
    cy = size * (FACE_CENTER[1] + pose.shift_y)
    px = cx + unit * (x * np.cos(rot) + y * np.sin(rot))
    py = cy + unit * (-x * np.sin(rot) + y * np.cos(rot))
    return np.stack([px, py], -1)


def unproject(px: np.ndarray, py: np.ndarray, pose: Pose, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixels -> face units, undoing yaw as if every point lay at the head's mean depth (for shading)."""
    yaw, rot = np.radians(pose.yaw), np.radians(pose.rotation)
    unit = UNIT * size * pose.scale
    dx = (px - size * (FACE_CENTER[0] + pose.shift_x)) / unit
    dy = (py - size * (FACE_CENTER[1] + pose.shift_y)) / unit
    x = dx * np.cos(rot) - dy * np.sin(rot)
    y = dx * np.sin(rot) + dy * np.cos(rot)
    x = (x - 0.6 * _HEAD_DEPTH * np.sin(yaw)) / np.cos(yaw)
    return x, y
