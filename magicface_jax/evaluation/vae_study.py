"""Does an expression survive a VAE? The rendered change of one AU in its face part, against the VAE's
reconstruction error there, on synthetic faces whose every other factor is held fixed; and the same change
as the evaluation's AU estimator reads it, before and after the VAE.

Errors are mean absolute differences in 0–255 units over a part's box (`regions.part_box`), averaged over
the colour channels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from magicface_jax.data import face_params
from magicface_jax.data.backgrounds import render_scene
from magicface_jax.data.face_render import render_face
from magicface_jax.evaluation.regions import AU_PART, part_mask
from magicface_jax.faces.aus import NUM_AUS, au_index

Reconstruct = Callable[[np.ndarray], np.ndarray]  # uint8 (N, S, S, 3) -> uint8 (N, S, S, 3)
ReadAUs = Callable[[np.ndarray], np.ndarray]  # uint8 (N, S, S, 3) -> (N, 12) AU intensities


@dataclasses.dataclass(frozen=True)
class AUProbe:
    """Each person rendered at `low` and at `high` intensity of one AU, every other factor the same."""

    au: str
    low: np.ndarray  # uint8 (N, S, S, 3)
    high: np.ndarray
    landmarks: np.ndarray  # (N, 68, 2) at the high intensity


def au_probe(
    au: str,
    size: int,
    people: int,
    low: float = 0.0,
    high: float = 4.0,
    seed: int = 0,
    face_scale: float = 1.0,
) -> AUProbe:
    """`people` random persons (neutral apart from `au`), poses and scenes, seeded; faces drawn at
    `face_scale` as in `SyntheticFacesSpec`."""
    lows, highs, points = [], [], []
    for k in range(people):
        rng = np.random.default_rng([seed, 7919, k])
        identity, pose, scene = (
            face_params.sample_identity(rng),
            face_params.sample_pose(rng, face_scale),
            face_params.sample_scene(rng),
        )
        backdrop = render_scene(scene, size)
        aus = np.zeros(NUM_AUS, np.float32)
        aus[au_index(au)] = low
        lows.append(render_face(identity, pose, aus, backdrop).image)
        aus[au_index(au)] = high
        face = render_face(identity, pose, aus, backdrop)
        highs.append(face.image)
        points.append(face.landmarks)
    return AUProbe(au, np.stack(lows), np.stack(highs), np.stack(points))


def _part_means(values: np.ndarray, landmarks: np.ndarray, part: str) -> np.ndarray:
    """Per image, the mean of `values` (N, S, S) over the part's box."""
    size = values.shape[1]
    return np.array([v[part_mask(lm, part, size)].mean() for v, lm in zip(values, landmarks, strict=True)])


def part_error(originals: np.ndarray, recons: np.ndarray, landmarks: np.ndarray, part: str) -> float:
    """Mean |reconstruction − original| in the part's box, 0–255 units."""
    diff = np.abs(recons.astype(np.float64) - originals).mean(-1)
    return float(_part_means(diff, landmarks, part).mean())


def part_rmse(originals: np.ndarray, recons: np.ndarray, landmarks: np.ndarray, part: str) -> float:
    """Root mean squared reconstruction error in the part's boxes, values in [0, 1]."""
    squared = ((recons.astype(np.float64) - originals) / 255.0) ** 2
    return float(np.sqrt(_part_means(squared.mean(-1), landmarks, part).mean()))


def au_survival(probe: AUProbe, reconstruct: Reconstruct, read_aus: ReadAUs | None = None) -> dict:
    """In the AU's part: `change` = mean |high − low| (the signal), `vae_error` = mean reconstruction error
    of both images (the noise), and `kept` = 1 − mean |Δreconstruction − Δoriginal| / mean |Δoriginal|:
    1 when the VAE carries the change through exactly, 0 or below when it loses it.

    `kept` counts every pixel the VAE gets wrong as lost signal. With `read_aus` (an AU estimator), also
    what the metric sees: `estimated_change`, the AU's mean estimated rise from low to high on the
    originals, `estimated_change_reconstructed` on the reconstructions, and `estimated_kept`, their ratio
    (1: the estimator reads the whole change through the VAE, 0: none of it)."""
    part = AU_PART[probe.au]
    low_r, high_r = reconstruct(probe.low), reconstruct(probe.high)
    delta = probe.high.astype(np.float64) - probe.low
    delta_r = high_r.astype(np.float64) - low_r
    change = _part_means(np.abs(delta).mean(-1), probe.landmarks, part)
    lost = _part_means(np.abs(delta_r - delta).mean(-1), probe.landmarks, part)
    error = 0.5 * (
        part_error(probe.low, low_r, probe.landmarks, part)
        + part_error(probe.high, high_r, probe.landmarks, part)
    )
    found = {
        "part": part,
        "change": float(change.mean()),
        "vae_error": error,
        "kept": float(1.0 - lost.mean() / change.mean()),
    }
    if read_aus is not None:
        column = au_index(probe.au)

        def rise(low, high) -> float:
            return float((read_aus(high)[:, column] - read_aus(low)[:, column]).mean())

        found["estimated_change"] = rise(probe.low, probe.high)
        found["estimated_change_reconstructed"] = rise(low_r, high_r)
        found["estimated_kept"] = found["estimated_change_reconstructed"] / found["estimated_change"]
    return found
