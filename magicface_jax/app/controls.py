"""What the page's controls mean: the 12 AU sliders ↔ an AU vector, the emotion presets on the sliders,
and the sampling settings, each checked as an API call may send anything."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from magicface_jax.diffusion import SAMPLERS
from magicface_jax.editing.inputs import EditSettings
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces import aus, emotions
from magicface_jax.pipeline import check_seed

SLIDER_RANGE = aus.RECOMMENDED_RANGE  # -10 .. 10, the range the authors recommend
SLIDER_STEP = 0.5
MAX_STEPS = 100
GUIDANCE_RANGE = (0.0, 10.0)
SWEEP_COUNTS = (2, 9)


def slider_label(au: str) -> str:
    """'AU12' -> 'AU12 · lip corner puller'."""
    return f"{au} · {aus.FACS_NAMES[au]}"


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise MagicFaceError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise MagicFaceError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _whole(value: object, what: str) -> int:
    number = _number(value, what)
    if number != int(number):
        raise MagicFaceError(f"{what} must be a whole number, got {value!r}")
    return int(number)


def au_from_sliders(values: Sequence[object]) -> np.ndarray:
    """The 12 slider values, in `AU_NAMES` order, as a (12,) float32 AU vector; each within the sliders'
    range."""
    if len(values) != aus.NUM_AUS:
        raise MagicFaceError(
            f"expected {aus.NUM_AUS} AU values ({', '.join(aus.AU_NAMES)}), got {len(values)}"
        )
    low, high = SLIDER_RANGE
    vector = np.zeros(aus.NUM_AUS, np.float32)
    for i, (name, value) in enumerate(zip(aus.AU_NAMES, values, strict=True)):
        number = _number(value, name)
        if not low <= number <= high:
            raise MagicFaceError(f"{name} is {number:g}: the AU sliders go from {low:g} to {high:g}")
        vector[i] = number
    return vector


def sliders_from_edit(edit: Mapping[str, float]) -> list[float]:
    """An AU edit {'AU12': 4} as the 12 slider values (unnamed AUs at 0)."""
    return [float(v) for v in aus.au_vector(edit)]


def emotion_sliders(name: str, intensity: object) -> list[float]:
    """The slider values of an emotion preset at an intensity."""
    return sliders_from_edit(emotions.emotion_edit(name, _number(intensity, "emotion intensity")))


def settings_from_controls(
    steps: object, guidance: object, sampler: object, seed: object
) -> tuple[EditSettings, int]:
    """The sampling settings and the seed from the advanced controls (numbers may come as floats)."""
    steps = _whole(steps, "steps")
    if not 1 <= steps <= MAX_STEPS:
        raise MagicFaceError(f"steps is {steps}: give 1 to {MAX_STEPS}")
    guidance = _number(guidance, "guidance")
    low, high = GUIDANCE_RANGE
    if not low <= guidance <= high:
        raise MagicFaceError(f"guidance is {guidance:g}: give {low:g} to {high:g} (3.0 is the paper's best)")
    if sampler not in SAMPLERS:
        raise MagicFaceError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    return EditSettings(steps, guidance, str(sampler)), check_seed(_whole(seed, "seed"))


def sweep_values(au: object, start: object, stop: object, count: object) -> tuple[str, np.ndarray]:
    """A sweep of one AU from the sweep tab: its canonical name and `count` values from start to stop."""
    name = aus.canonical_au(str(au))
    low, high = SLIDER_RANGE
    ends = [_number(start, "sweep start"), _number(stop, "sweep stop")]
    if not all(low <= end <= high for end in ends):
        raise MagicFaceError(f"a sweep goes from {low:g} to {high:g} at most, got {ends[0]:g} to {ends[1]:g}")
    count = _whole(count, "sweep count")
    if not SWEEP_COUNTS[0] <= count <= SWEEP_COUNTS[1]:
        raise MagicFaceError(f"sweep count is {count}: give {SWEEP_COUNTS[0]} to {SWEEP_COUNTS[1]}")
    return name, np.linspace(*ends, count, dtype=np.float32)
