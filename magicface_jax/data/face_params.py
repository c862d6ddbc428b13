"""The factors of a procedural face: identity, pose and scene, sampled from a numpy Generator.

Lengths are in face units: half the face width at the eyes is about 1, the eye line is y = 0, y points
down. Colours are RGB in 0–255. Every field is stored as ground truth in `synthetic_faces`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from magicface_jax.faces.aus import NUM_AUS

HAIR_STYLES = ("short", "long", "bangs", "buzz", "curly")
SCENE_KINDS = ("gradient", "texture", "stripes", "shapes")
MAX_INTENSITY = 5.0

_SKIN = np.array(
    [(255, 224, 196), (241, 194, 160), (224, 172, 132), (198, 134, 96), (160, 102, 70), (112, 72, 50)],
    np.float64,
)
_HAIR = np.array(
    [(30, 25, 25), (65, 45, 35), (110, 75, 50), (140, 70, 40), (215, 185, 120), (170, 170, 170)], np.float64
)
_EYES = np.array(
    [(90, 60, 35), (50, 35, 25), (80, 120, 180), (90, 130, 80), (120, 130, 140), (130, 100, 50)], np.float64
)


@dataclasses.dataclass(frozen=True)
class Identity:
    """What stays the same for one synthetic person."""

    skin: tuple[float, float, float]
    eye_color: tuple[float, float, float]
    hair_color: tuple[float, float, float]
    lip_color: tuple[float, float, float]
    clothes_color: tuple[float, float, float]
    hair_style: int  # index into HAIR_STYLES
    hair_seed: int  # the jagged hairline
    face_width: float  # half width where the jaw starts
    jaw_top: float  # y where the jaw line starts (just below the eyes)
    chin: float  # y of the chin
    jaw_squareness: float  # superellipse exponent of the jaw: 2 oval, < 2 pointed, > 2 square
    head_top: float  # height of the skull above the eye line
    brow_height: float  # y of the brows (negative: above the eyes)
    brow_arch: float
    brow_thickness: float
    eye_spacing: float  # x of each eye's centre
    eye_width: float  # half width of an eye
    eye_open: float  # upper-lid height of a neutral eye
    nose_length: float  # y of the nose's base
    nose_width: float  # half width of the nostrils
    mouth_position: float  # where the mouth sits between nose base (0) and chin (1)
    mouth_width: float  # half width of the mouth
    upper_lip: float
    lower_lip: float


@dataclasses.dataclass(frozen=True)
class Pose:
    """Where the face is in the image."""

    rotation: float  # in-plane, degrees, counter-clockwise on screen
    shift_x: float  # fractions of the image size
    shift_y: float
    scale: float  # 1 = a face about 0.46 of the image wide
    yaw: float  # degrees, positive turns the face towards the image's right


@dataclasses.dataclass(frozen=True)
class Scene:
    """The background behind the person; `seed` makes its texture and shapes."""

    kind: int  # index into SCENE_KINDS
    seed: int
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]


def _jitter(rng: np.random.Generator, palette: np.ndarray, amount: float) -> tuple[float, float, float]:
    """A colour between two neighbouring palette entries, jittered; for skin the palette is ordered."""
    i = rng.integers(len(palette) - 1)
    color = palette[i] + rng.uniform() * (palette[i + 1] - palette[i]) + rng.normal(0, amount, 3)
    return tuple(float(c) for c in np.clip(color, 0, 255))


def _color(rng: np.random.Generator) -> tuple[float, float, float]:
    return tuple(float(c) for c in rng.uniform(20, 235, 3))


def sample_identity(rng: np.random.Generator) -> Identity:
    skin = _jitter(rng, _SKIN, 6)
    lip = np.array(skin) * np.array([0.85, 0.55, 0.55]) + np.array([40, 10, 15])
    return Identity(
        skin=skin,
        eye_color=tuple(
            float(c) for c in np.clip(_EYES[rng.integers(len(_EYES))] + rng.normal(0, 10, 3), 0, 255)
        ),
        hair_color=tuple(
            float(c) for c in np.clip(_HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 8, 3), 0, 255)
        ),
        lip_color=tuple(float(c) for c in np.clip(lip, 0, 255)),
        clothes_color=_color(rng),
        hair_style=int(rng.integers(len(HAIR_STYLES))),
        hair_seed=int(rng.integers(2**31)),
        face_width=float(rng.uniform(0.88, 1.04)),
        jaw_top=float(rng.uniform(0.04, 0.14)),
        chin=float(rng.uniform(1.38, 1.6)),
        jaw_squareness=float(rng.uniform(1.7, 2.8)),
        head_top=float(rng.uniform(1.15, 1.35)),
        brow_height=float(rng.uniform(-0.36, -0.28)),
        brow_arch=float(rng.uniform(0.02, 0.07)),
        brow_thickness=float(rng.uniform(0.045, 0.075)),
        eye_spacing=float(rng.uniform(0.36, 0.42)),
        eye_width=float(rng.uniform(0.15, 0.18)),
        eye_open=float(rng.uniform(0.07, 0.095)),
        nose_length=float(rng.uniform(0.55, 0.68)),
        nose_width=float(rng.uniform(0.13, 0.18)),
        mouth_position=float(rng.uniform(0.32, 0.4)),
        mouth_width=float(rng.uniform(0.3, 0.38)),
        upper_lip=float(rng.uniform(0.06, 0.085)),
        lower_lip=float(rng.uniform(0.08, 0.11)),
    )


def sample_pose(rng: np.random.Generator, face_scale: float = 1.0) -> Pose:
    """A random pose; `face_scale` multiplies the face's size in the image (1: about 0.46 of its width)."""
    return Pose(
        rotation=float(rng.uniform(-15, 15)),
        shift_x=float(rng.uniform(-0.06, 0.06)),
        shift_y=float(rng.uniform(-0.04, 0.04)),
        scale=float(rng.uniform(0.88, 1.12)) * face_scale,
        yaw=float(rng.uniform(-15, 15)),
    )


def sample_scene(rng: np.random.Generator) -> Scene:
    return Scene(
        kind=int(rng.integers(len(SCENE_KINDS))),
        seed=int(rng.integers(2**31)),
        color_a=_color(rng),
        color_b=_color(rng),
    )


def sample_aus(rng: np.random.Generator, active: float = 0.4) -> np.ndarray:
    """(12,) float32 intensities in [0, 5]: each AU active with probability `active`, uniform when active."""
    on = rng.uniform(size=NUM_AUS) < active
    return np.where(on, rng.uniform(0, MAX_INTENSITY, NUM_AUS), 0.0).astype(np.float32)
