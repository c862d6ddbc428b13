"""Which images become (identity, target) pairs, and which person goes to which split."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

from magicface_jax.errors import MagicFaceError

_EXHAUSTIVE_LIMIT = 250_000  # up to this many ordered pairs per person, every valid pair is listed
_GIVE_UP_AFTER = 20_000  # random draws in a row without a new valid pair


@dataclasses.dataclass(frozen=True)
class PairingConfig:
    """Pairs are two images of one person whose AUs differ enough; persons never share a split."""

    min_au_change: float = 1.0  # the largest |target − identity| over the 12 AUs is at least this
    max_pairs_per_identity: int = 100
    test_fraction: float = 0.1  # of the persons
    validation_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.min_au_change < 0:
            raise MagicFaceError(f"the minimum AU change must be ≥ 0, got {self.min_au_change}")
        if self.max_pairs_per_identity < 1:
            raise MagicFaceError(
                f"the cap of pairs per person must be ≥ 1, got {self.max_pairs_per_identity}"
            )
        fractions = (self.test_fraction, self.validation_fraction)
        if min(fractions) < 0 or sum(fractions) >= 1:
            raise MagicFaceError(
                f"test ({self.test_fraction}) and validation ({self.validation_fraction}) fractions must be "
                "≥ 0 and leave persons for training"
            )
        if not 0 <= self.seed < 2**32:
            raise MagicFaceError(f"the seed must be in [0, 2**32), got {self.seed}")


def split_identities(identities: Sequence[str], config: PairingConfig) -> dict[str, list[str]]:
    """{'train': [...], 'test': [...], 'validation': [...]} over sorted unique persons, seeded; a split with a
    non-zero fraction gets at least one person when there are enough."""
    people = sorted(set(identities))
    order = np.random.default_rng(config.seed).permutation(len(people))
    shuffled = [people[i] for i in order]
    counts = {}
    for split, fraction in (("test", config.test_fraction), ("validation", config.validation_fraction)):
        counts[split] = max(1, round(fraction * len(people))) if fraction > 0 else 0
    if len(people) - counts["test"] - counts["validation"] < 1:
        raise MagicFaceError(
            f"{len(people)} person(s) cannot fill train, test ({config.test_fraction}) and validation "
            f"({config.validation_fraction}) splits without sharing anyone: add people or lower the fractions"
        )
    test = shuffled[: counts["test"]]
    validation = shuffled[counts["test"] : counts["test"] + counts["validation"]]
    train = shuffled[counts["test"] + counts["validation"] :]
    splits = {"train": sorted(train), "test": sorted(test), "validation": sorted(validation)}
    return {name: members for name, members in splits.items() if members}


def identity_rng(identity: str, seed: int) -> np.random.Generator:
    """A generator that depends only on the person and the seed, not on who else is in the dataset."""
    return np.random.default_rng([seed, zlib.crc32(identity.encode("utf-8"))])


def _max_change(aus: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return np.abs(aus[i] - aus[j]).max(axis=-1)


def candidate_pairs(
    aus: np.ndarray, min_change: float, rng: np.random.Generator
) -> Iterator[tuple[int, int]]:
    """Distinct ordered pairs (i, j), i != j, of rows of `aus` (n, 12) whose largest AU difference is at least
    `min_change`, in random order. Large persons are sampled, not listed, and sampling stops once valid new
    pairs have become too rare to find."""
    n = len(aus)
    if n * n <= _EXHAUSTIVE_LIMIT:
        first, second = np.nonzero(~np.eye(n, dtype=bool))
        keep = _max_change(aus, first, second) >= min_change
        first, second = first[keep], second[keep]
        for k in rng.permutation(len(first)):
            yield int(first[k]), int(second[k])
        return
    seen: set[tuple[int, int]] = set()
    misses = 0
    while misses < _GIVE_UP_AFTER:
        draws = rng.integers(n, size=(1024, 2))
        valid = (draws[:, 0] != draws[:, 1]) & (_max_change(aus, draws[:, 0], draws[:, 1]) >= min_change)
        for (i, j), ok in zip(draws.tolist(), valid.tolist(), strict=True):
            if not ok or (i, j) in seen:
                misses += 1
                continue
            misses = 0
            seen.add((i, j))
            yield i, j
