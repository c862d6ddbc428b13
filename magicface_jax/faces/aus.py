"""The 12 editable Action Units, their names and spellings, and the parsing of edit specifications.

Every AU vector in this project is ordered as `AU_NAMES`. A variation is relative to the identity
image: target − identity, so positive means "stronger" (+4 on AU12 is more smile).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from magicface_jax.errors import MagicFaceError

AU_NAMES: tuple[str, ...] = (
    "AU1",
    "AU2",
    "AU4",
    "AU5",
    "AU6",
    "AU9",
    "AU12",
    "AU15",
    "AU17",
    "AU20",
    "AU25",
    "AU26",
)
NUM_AUS = len(AU_NAMES)

FACS_NAMES: dict[str, str] = {
    "AU1": "inner brow raiser",
    "AU2": "outer brow raiser",
    "AU4": "brow lowerer",
    "AU5": "upper lid raiser",
    "AU6": "cheek raiser",
    "AU9": "nose wrinkler",
    "AU12": "lip corner puller",
    "AU15": "lip corner depressor",
    "AU17": "chin raiser",
    "AU20": "lip stretcher",
    "AU25": "lips part",
    "AU26": "jaw drop",
}

# The authors report distortion for variations outside this range.
RECOMMENDED_RANGE = (-10.0, 10.0)

_AU_PATTERN = re.compile(r"^\s*au\s*0*(\d+)\s*$", re.IGNORECASE)
_VALID = ", ".join(AU_NAMES)


def canonical_au(name: str) -> str:
    """'AU01', 'au12', ' AU 4 ' -> 'AU1', 'AU12', 'AU4'; anything else raises `MagicFaceError`."""
    match = _AU_PATTERN.match(str(name))
    canonical = f"AU{int(match.group(1))}" if match else None
    if canonical not in AU_NAMES:
        raise MagicFaceError(f"unknown action unit {name!r}: use one of {_VALID}")
    return canonical


def au_index(name: str) -> int:
    """Position of an AU in every AU vector of this project."""
    return AU_NAMES.index(canonical_au(name))


def openface_column(name: str) -> str:
    """The intensity column OpenFace 2.0 writes for this AU, e.g. 'AU01_r'."""
    return f"AU{int(canonical_au(name)[2:]):02d}_r"


def _parse_number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise MagicFaceError(f"{what}: {text!r} is not a number") from None
    if not np.isfinite(value):
        raise MagicFaceError(f"{what}: {text!r} is not a finite number")
    return value


def au_vector(edit: Mapping[str, float] | Sequence[float] | np.ndarray) -> np.ndarray:
    """A (12,) float32 variation from a dict {'AU4': 4, 'AU1': 2} or a length-12 sequence."""
    if isinstance(edit, Mapping):
        vector = np.zeros(NUM_AUS, np.float32)
        for name, value in edit.items():
            vector[au_index(name)] = _parse_number(str(value), f"intensity of {name}")
        return vector
    vector = np.asarray(edit, np.float32)
    if vector.shape != (NUM_AUS,):
        raise MagicFaceError(f"an AU vector has {NUM_AUS} entries ({_VALID}); got shape {vector.shape}")
    return vector


def parse_edit(spec: str) -> dict[str, float]:
    """'AU4=+4,AU1=+2' -> {'AU4': 4.0, 'AU1': 2.0}. An AU named twice is an error."""
    edit: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise MagicFaceError(f"AU edit {item!r} has no '=': write it as AU12=+4")
        au = canonical_au(name)
        if au in edit:
            raise MagicFaceError(f"AU edit names {au} twice in {spec!r}")
        edit[au] = _parse_number(value.strip(), f"intensity of {au}")
    if not edit:
        raise MagicFaceError(f"empty AU edit {spec!r}: write it as AU4=+4,AU1=+2")
    return edit


def parse_authors_edit(aus: str, variations: str) -> dict[str, float]:
    """The authors' flags: `--au_test AU4+AU1 --AU_variation 4+2` -> {'AU4': 4.0, 'AU1': 2.0}."""
    names = [part for part in aus.split("+") if part.strip()]
    # A variation may itself be negative: '4+-2' splits into '4', '-2'.
    values = [part for part in variations.split("+") if part.strip()]
    if not names or len(names) != len(values):
        raise MagicFaceError(
            f"--au_test {aus!r} names {len(names)} AUs but --AU_variation {variations!r} gives "
            f"{len(values)} values: give one value per AU, both joined by '+'"
        )
    return parse_edit(",".join(f"{n}={v}" for n, v in zip(names, values, strict=True)))


def parse_sweep(spec: str, max_count: int | None = None) -> tuple[str, np.ndarray]:
    """'AU12=-6:6:7' -> ('AU12', [-6, -4, ..., 6]): `start:stop:count`, both ends included; a count above
    `max_count` is refused before anything is allocated."""
    name, sep, rng = spec.partition("=")
    parts = rng.split(":")
    if not sep or len(parts) != 3:
        raise MagicFaceError(f"sweep {spec!r} is not AU=start:stop:count, e.g. AU12=-6:6:7")
    au = canonical_au(name)
    start, stop = (_parse_number(p, f"sweep of {au}") for p in parts[:2])
    count = _parse_number(parts[2], f"sweep count of {au}")
    if count < 1 or count != int(count):
        raise MagicFaceError(f"sweep {spec!r}: the count must be a whole number ≥ 1")
    if max_count is not None and count > max_count:
        raise MagicFaceError(
            f"sweep {spec!r} asks for {count:g} intensities; at most {max_count} fit one grid"
        )
    return au, np.linspace(start, stop, int(count), dtype=np.float32)


def out_of_range(vector: np.ndarray) -> list[str]:
    """AUs whose variation lies outside the range the authors recommend, e.g. ['AU12']."""
    low, high = RECOMMENDED_RANGE
    flat = np.asarray(vector, np.float32).reshape(-1, NUM_AUS)
    bad = np.any((flat < low) | (flat > high), axis=0)
    return [AU_NAMES[i] for i in np.flatnonzero(bad)]
