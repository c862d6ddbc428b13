"""Emotion presets: the basic emotions as AU edits, from the EMFACS prototypes restricted to the 12 AUs
MagicFace edits (docs/app.md has the table and its source).

    emotion_edit("happiness", 4)    # {'AU6': 4.0, 'AU12': 4.0}
    parse_emotion("surprise:6")     # {'AU1': 6.0, 'AU2': 6.0, 'AU5': 3.0, 'AU26': 6.0}

A preset gives each of its AUs a weight (1 unless the prototype names a lower FACS intensity); an edit is
the intensity times the weights, in the units of every AU variation here (positive = stronger).
"""

from __future__ import annotations

import math

from magicface_jax.errors import MagicFaceError
from magicface_jax.faces.aus import RECOMMENDED_RANGE

# Friesen & Ekman's EMFACS-7 prototypes (1983; the combinations commonly tabulated for the basic
# emotions), keeping the AUs among the 12 editable ones. Surprise's "5B" (AU5 at FACS intensity B,
# "slight", of A..E) becomes weight 0.5.
EMOTIONS: dict[str, dict[str, float]] = {
    "happiness": {"AU6": 1.0, "AU12": 1.0},  # 6+12
    "sadness": {"AU1": 1.0, "AU4": 1.0, "AU15": 1.0},  # 1+4+15
    "surprise": {"AU1": 1.0, "AU2": 1.0, "AU5": 0.5, "AU26": 1.0},  # 1+2+5B+26
    "fear": {"AU1": 1.0, "AU2": 1.0, "AU4": 1.0, "AU5": 1.0, "AU20": 1.0, "AU26": 1.0},  # 1+2+4+5+7+20+26
    "anger": {"AU4": 1.0, "AU5": 1.0},  # 4+5+7+23
    "disgust": {"AU9": 1.0, "AU15": 1.0},  # 9+15+16
}
# The prototypes' AUs outside the 12 (shown in the docs' table): AU7 lid tightener, AU16 lower lip
# depressor, AU23 lip tightener.
DROPPED_AUS: dict[str, tuple[str, ...]] = {"fear": ("AU7",), "anger": ("AU7", "AU23"), "disgust": ("AU16",)}
DEFAULT_INTENSITY = 4.0  # as the authors' example edit, AU4=+4
INTENSITY_RANGE = RECOMMENDED_RANGE


def _check_name(name: str) -> str:
    key = str(name).strip().lower()
    if key not in EMOTIONS:
        raise MagicFaceError(f"unknown emotion {name!r}: use one of {', '.join(EMOTIONS)}")
    return key


def _check_intensity(intensity: float, name: str) -> float:
    low, high = INTENSITY_RANGE
    try:
        value = float(intensity)
    except (TypeError, ValueError):
        raise MagicFaceError(f"intensity of {name}: {intensity!r} is not a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise MagicFaceError(f"intensity of {name} is {value:g}: give one in {low:g}..{high:g}")
    return value


def emotion_edit(name: str, intensity: float = DEFAULT_INTENSITY) -> dict[str, float]:
    """The AU edit of an emotion preset at an intensity in [-10, 10] (negative: less of it)."""
    key = _check_name(name)
    value = _check_intensity(intensity, key)
    return {au: weight * value for au, weight in EMOTIONS[key].items()}


def parse_emotion(spec: str) -> dict[str, float]:
    """'happiness' or 'happiness:6' (NAME[:INTENSITY], default intensity 4) -> its AU edit."""
    name, sep, intensity = spec.partition(":")
    if sep and not intensity.strip():
        raise MagicFaceError(f"emotion {spec!r} has no intensity after ':': write it as happiness:4")
    return emotion_edit(name, intensity if sep else DEFAULT_INTENSITY)
