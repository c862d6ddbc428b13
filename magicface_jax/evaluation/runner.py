"""Edits held-out pairs and measures the edits: for each pair, the identity image is edited by the pair's AU
variation with its own background condition (as at inference), and the paper's four metrics compare the
edit with what was asked. Two references are measured the same way: the no-edit baseline (the source
returned unchanged, the paper's) and the source through the checkpoint's VAE and back (where every edit
starts, since the VAE decodes every edit: what the VAE alone costs).

    pairs = load_pairs("synthetic_faces/64px", "test", data_dir=DIR, num=50)
    report = evaluate(pipe, pairs, [Setting("unipc", 20, 3.0)], estimators)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from magicface_jax.data import features
from magicface_jax.data.png import decode_mask, decode_png
from magicface_jax.data.synthetic_faces import IDENTITY_BACKGROUND
from magicface_jax.errors import MagicFaceError
from magicface_jax.evaluation import metrics
from magicface_jax.evaluation.estimators import Estimators
from magicface_jax.faces.aus import AU_NAMES
from magicface_jax.images import save_image, to_model_input, to_uint8


@dataclasses.dataclass(frozen=True)
class EvalPairs:
    """N held-out pairs, ready to edit."""

    sources: np.ndarray  # uint8 (N, S, S, 3): the identity images
    backgrounds: np.ndarray  # uint8 (N, S, S, 3): each identity image's own background condition
    identity_aus: np.ndarray  # (N, 12)
    variations: np.ndarray  # (N, 12): target − identity
    face_masks: np.ndarray  # bool (N, S, S): the sources' faces (left out of the background RMSE)
    names: tuple[str, ...]  # "pair00012"

    @property
    def requested(self) -> np.ndarray:
        return metrics.requested_aus(self.identity_aus, self.variations)

    def __len__(self) -> int:
        return len(self.sources)


@dataclasses.dataclass(frozen=True)
class Setting:
    sampler: str
    steps: int
    guidance: float

    @property
    def name(self) -> str:
        return f"{self.sampler}_s{self.steps}_g{self.guidance:g}"


SYNTHETIC, PHOTOS = "synthetic", "photos"


def dataset_kind(dataset: str | Path, split: str, data_dir: str | Path | None = None) -> str:
    """SYNTHETIC for `synthetic_faces` (its records carry the identity image's condition), else PHOTOS."""
    from magicface_jax.data.pipeline import open_source

    source = open_source(dataset, split, data_dir)
    if len(source) < 1:
        raise MagicFaceError(f"split {split!r} of {dataset} holds no pairs")
    return SYNTHETIC if IDENTITY_BACKGROUND in source[0] else PHOTOS


def estimators_for(kind: str, estimator: str | Path | None, openface=None):
    """(Estimators, PhotoFaces or None) for a dataset kind: the synthetic estimator from its folder, or for
    photographs dlib's identity and pose with AUs from `openface` (a `photos.OpenFaceAUs`), else the
    landmark proxy."""
    if kind == SYNTHETIC:
        if estimator is None:
            raise MagicFaceError(
                "a synthetic dataset is measured by the synthetic estimator: pass --estimator DIR (train one "
                "with python -m magicface_jax.evaluation.train_estimator)"
            )
        if openface is not None:
            raise MagicFaceError("--openface applies to photographs; synthetic AUs come from --estimator")
        from magicface_jax.evaluation.synthetic import SyntheticEstimator

        regressor = SyntheticEstimator.load(estimator)
        return Estimators(regressor, regressor, regressor), None
    if estimator is not None:
        raise MagicFaceError("--estimator is the synthetic estimator; photographs use dlib and --openface")
    from magicface_jax.evaluation import photos

    faces = photos.PhotoFaces()
    aus = openface if openface is not None else photos.LandmarkAUProxy.fit().with_faces(faces)
    return Estimators(aus, faces, faces), faces


def load_pairs(
    dataset: str | Path,
    split: str,
    data_dir: str | Path | None = None,
    num: int | None = None,
    photo_faces=None,
) -> EvalPairs:
    """The first `num` pairs of a `synthetic_faces` or `magicface_pairs` split. Synthetic records carry the
    identity image's condition and face mask; for photographs (`magicface_pairs`) the condition is built
    from the identity image by the face preprocessing and the face mask comes from `photo_faces`
    (a `photos.PhotoFaces`)."""
    from magicface_jax.data.pipeline import open_source

    source = open_source(dataset, split, data_dir)
    count = len(source) if num is None else min(num, len(source))
    if count < 1:
        raise MagicFaceError(f"split {split!r} of {dataset} holds no pairs")
    records = [source[i] for i in range(count)]
    sources = np.stack([decode_png(r[features.IDENTITY_IMAGE]) for r in records])
    if IDENTITY_BACKGROUND in records[0]:
        backgrounds = np.stack([decode_png(r[IDENTITY_BACKGROUND]) for r in records])
        masks = np.stack([decode_mask(r["identity_face_mask"]) for r in records])
    else:
        if photo_faces is None:
            raise MagicFaceError(f"{dataset} holds photographs: evaluating them needs the photo estimators")
        from magicface_jax.faces.preprocess import build_background

        backgrounds = np.stack([build_background(image).background for image in sources])
        masks = photo_faces.face_masks(sources)
    return EvalPairs(
        sources=sources,
        backgrounds=backgrounds,
        identity_aus=np.stack([np.asarray(r["identity_aus"], np.float64) for r in records]),
        variations=np.stack([np.asarray(r[features.AU_VARIATION], np.float64) for r in records]),
        face_masks=masks,
        names=tuple(f"pair{i:05d}" for i in range(count)),
    )


@dataclasses.dataclass(frozen=True)
class Estimates:
    """What the estimators read on N edits and their sources, pair by pair: enough to compute every metric
    over any subset of the pairs (`metrics_of`), as a bootstrap over pairs does."""

    aus: np.ndarray  # (N, 12) estimated on the edits
    source_embeddings: np.ndarray  # (N, D)
    edit_embeddings: np.ndarray  # (N, D)
    source_poses: np.ndarray  # (N, 3) degrees
    edit_poses: np.ndarray  # (N, 3)
    background_rmse: np.ndarray  # (N,) per image

    def to_json(self) -> dict[str, list]:
        return {f.name: getattr(self, f.name).tolist() for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, list]) -> Estimates:
        return cls(**{f.name: np.asarray(data[f.name], np.float64) for f in dataclasses.fields(cls)})


def estimate(pairs: EvalPairs, edited: np.ndarray, names: Sequence[str], estimators: Estimators) -> Estimates:
    """The estimators on `edited` (uint8 (N, S, S, 3)) and on the pairs' sources."""
    return Estimates(
        aus=np.asarray(estimators.aus.aus(edited, names), np.float64),
        source_embeddings=np.asarray(estimators.identity.embed(pairs.sources), np.float64),
        edit_embeddings=np.asarray(estimators.identity.embed(edited), np.float64),
        source_poses=np.asarray(estimators.pose.pose(pairs.sources), np.float64),
        edit_poses=np.asarray(estimators.pose.pose(edited), np.float64),
        background_rmse=metrics.background_rmse_per_image(pairs.sources, edited, pairs.face_masks),
    )


def metrics_of(pairs: EvalPairs, found: Estimates, rows: np.ndarray | slice = slice(None)) -> dict:
    """The four metrics over the pairs `rows` (all by default; indices may repeat)."""
    return {
        "au_mse": metrics.au_mse(pairs.requested[rows], found.aus[rows]),
        "id_l2": metrics.id_l2(found.source_embeddings[rows], found.edit_embeddings[rows]),
        "background_rmse": float(np.mean(found.background_rmse[rows])),
        "pose_rmse_degrees": metrics.pose_rmse(found.source_poses[rows], found.edit_poses[rows]),
    }


def measure(pairs: EvalPairs, edited: np.ndarray, names: Sequence[str], estimators: Estimators) -> dict:
    """The four metrics of `edited` (uint8 (N, S, S, 3)) against the pairs' sources and requests, and the
    AU MSE of each AU (`au_mse_by_au`: which AUs an edit follows)."""
    return summary(pairs, estimate(pairs, edited, names, estimators))


def summary(pairs: EvalPairs, found: Estimates) -> dict:
    """`metrics_of` all pairs, and `au_mse_by_au`."""
    by_au = metrics.au_mse(pairs.requested, found.aus, axis=0)
    return metrics_of(pairs, found) | {"au_mse_by_au": dict(zip(AU_NAMES, by_au.tolist(), strict=True))}


# "Of equal quality": no metric (each an error, lower is better) worse than the reference's by more than
# 2 paired standard errors *and* by more than this fraction of the reference's value. The noise alone
# would let enough pairs hold any difference against a setting, however small: on 200 pairs, 0.05% of
# the background's error, a 100th of a grey level, was 3 standard errors.
EQUAL_QUALITY_TOLERANCE = 0.01
EQUAL_QUALITY_RULE = f"no metric worse by > 2 SE and > {EQUAL_QUALITY_TOLERANCE * 100:g}%"


def versus(pairs: EvalPairs, found: Estimates, reference: Estimates) -> dict:
    """Each metric of `found` minus the reference's over the same pairs (`delta`), its paired bootstrap
    standard error (`standard_error`), and `not_worse`: of equal quality to the reference or better
    (`EQUAL_QUALITY_TOLERANCE`). A metric that could not be measured (NaN) is not held against either."""
    mine, theirs = metrics_of(pairs, found), metrics_of(pairs, reference)
    noise = bootstrap_noise(pairs, found, reference)
    delta = {k: mine[k] - theirs[k] for k in mine}
    worse = [
        k
        for k in delta
        if np.isfinite(delta[k]) and delta[k] > max(2 * noise[k], EQUAL_QUALITY_TOLERANCE * abs(theirs[k]))
    ]
    return {"delta": delta, "standard_error": noise, "not_worse": not worse}


def bootstrap_noise(
    pairs: EvalPairs, a: Estimates, b: Estimates | None = None, draws: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Per metric, the standard error of the metric of `a` or, with `b`, of (metric of `a` − metric of `b`)
    over the same pairs, from a paired bootstrap: pairs resampled with replacement, the metrics recomputed on
    each resample."""
    rng = np.random.default_rng(seed)
    draws_seen = []
    for _ in range(draws):
        rows = rng.integers(0, len(pairs), len(pairs))
        first = metrics_of(pairs, a, rows)
        second = metrics_of(pairs, b, rows) if b is not None else dict.fromkeys(first, 0.0)
        draws_seen.append([first[k] - second[k] for k in first])
    spread = np.nanstd(np.asarray(draws_seen), axis=0)
    return dict(zip(metrics_of(pairs, a, slice(0, 1)), map(float, spread), strict=True))


def edit_pairs(pipe, pairs: EvalPairs, setting: Setting, seed: int = 0, batch_size: int = 8) -> np.ndarray:
    """Each source edited by its variation with `pipe` (a MagicFacePipeline): uint8 (N, S, S, 3)."""
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = slice(start, start + batch_size)
        images = pipe(
            list(pairs.sources[chunk]),
            list(pairs.backgrounds[chunk]),
            pairs.variations[chunk].astype(np.float32),
            num_inference_steps=setting.steps,
            guidance_scale=setting.guidance,
            scheduler=setting.sampler,
            seed=seed + start,
            output_type="np",
        )
        out.append(to_uint8(images))
    return np.concatenate(out)


def vae_round_trip(pipe, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """uint8 images (N, S, S, 3) through the pipeline's VAE and back (the posterior mean decoded), uint8."""
    out = []
    for start in range(0, len(images), batch_size):
        latents = pipe.vae_encode(to_model_input(images[start : start + batch_size]))
        out.append(to_uint8((np.asarray(pipe.vae_decode(latents)) + 1) / 2))
    return np.concatenate(out)


def evaluate(
    pipe,
    pairs: EvalPairs,
    settings: Sequence[Setting],
    estimators: Estimators,
    seed: int = 0,
    batch_size: int = 8,
    save_edits: Path | None = None,
    log: Callable[[str], None] = print,
    reference: Setting | None = None,
) -> dict:
    """{"baseline": metrics, "vae_round_trip": metrics, "settings": [{"setting", ...metrics}],
    "estimators": labels and held-out errors, "pairs": N}. With `save_edits`, every edit is written there as
    NAME_SETTING.png (each source as NAME_source.png, its VAE round trip as NAME_vae_round_trip.png), the
    names under which an AU reader such as OpenFace's finds them. With `reference` (one of `settings`),
    every setting's row gets `versus_reference` (`versus`), and the fewest steps of equal quality are
    named (`fewest_steps_of_equal_quality`, by `equal_quality_rule`)."""
    if reference is not None and reference not in settings:
        raise MagicFaceError(f"the reference {reference.name} is not among the settings evaluated")
    references = {"source": pairs.sources, "vae_round_trip": vae_round_trip(pipe, pairs.sources, batch_size)}
    names_of = {ref: [f"{name}_{ref}" for name in pairs.names] for ref in references}
    if save_edits is not None:
        for ref, images in references.items():
            for name, image in zip(names_of[ref], images, strict=True):
                save_image(image, save_edits / f"{name}.png")
    report = {
        "pairs": len(pairs),
        "estimators": {
            "aus": estimators.aus.label,
            "identity": estimators.identity.label,
            "pose": estimators.pose.label,
            "pose_unit": metrics.POSE_UNIT,
            "held_out": estimators.held_out(),
        },
        "baseline": measure(pairs, pairs.sources, names_of["source"], estimators),
        "vae_round_trip": measure(
            pairs, references["vae_round_trip"], names_of["vae_round_trip"], estimators
        ),
        "settings": [],
    }
    noise = estimator_noise(report["estimators"]["held_out"])
    log(format_estimators(report))
    log(format_row("no edit (source returned)", report["baseline"], noise))
    log(format_row("no edit, through the VAE and back", report["vae_round_trip"], noise))
    found = {}
    for setting in settings:
        edited = edit_pairs(pipe, pairs, setting, seed, batch_size)
        names = [f"{name}_{setting.name}" for name in pairs.names]
        if save_edits is not None:
            for name, image in zip(names, edited, strict=True):
                save_image(image, save_edits / f"{name}.png")
        found[setting] = estimate(pairs, edited, names, estimators)
        row = {"setting": dataclasses.asdict(setting), **summary(pairs, found[setting])}
        report["settings"].append(row)
        log(format_row(setting.name, row, noise))
    if reference is not None:
        for setting, row in zip(settings, report["settings"], strict=True):
            row["versus_reference"] = versus(pairs, found[setting], found[reference])
            log(format_versus(setting.name, reference.name, row["versus_reference"]))
        equal = [
            s
            for s, row in zip(settings, report["settings"], strict=True)
            if row["versus_reference"]["not_worse"]
        ]
        fewest = min(equal, key=lambda s: s.steps)  # the reference itself is always of equal quality
        report["fewest_steps_of_equal_quality"] = dataclasses.asdict(fewest)
        report["equal_quality_rule"] = EQUAL_QUALITY_RULE
        log(f"fewest steps of equal quality to {reference.name} ({EQUAL_QUALITY_RULE}): {fewest.name}")
    return report


# Where each metric's estimator reports its own error on held-out data (the first key present counts).
_NOISE_KEYS = {
    "au_mse": ("aus", ("au_mse", "au_mse_on_synthetic_landmarks")),
    "id_l2": ("identity", ("id_l2_same_person",)),
    "pose_rmse_degrees": ("pose", ("pose_rmse_degrees",)),
}


def estimator_noise(held_out: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per metric, the estimator's own held-out error in the metric's unit, where it reports one."""
    noise = {}
    for metric, (what, keys) in _NOISE_KEYS.items():
        found = [held_out[what][k] for k in keys if k in held_out[what]]
        if found:
            noise[metric] = found[0]
    return noise


def format_row(name: str, row: dict, noise: dict[str, float]) -> str:
    """One result line; next to each metric, the estimator's own held-out error where known."""

    def own(metric: str, unit: str = "") -> str:
        return f" (estimator's own {noise[metric]:.3g}{unit})" if metric in noise else ""

    by_au = " ".join(f"{au} {value:.2f}" for au, value in row.get("au_mse_by_au", {}).items())
    return (
        f"{name}: AU MSE {row['au_mse']:.3f}{own('au_mse')}, ID L2 {row['id_l2']:.3f}{own('id_l2')}, "
        f"background RMSE {row['background_rmse']:.4f}, head-pose RMSE {row['pose_rmse_degrees']:.2f}°"
        f"{own('pose_rmse_degrees', '°')}" + (f"\n  AU MSE by AU: {by_au}" if by_au else "")
    )


def format_versus(name: str, reference: str, found: dict) -> str:
    """One line: each metric's difference from the reference with its paired standard error."""
    cells = ", ".join(
        f"Δ {metric} {found['delta'][metric]:+.3g} ± {found['standard_error'][metric]:.2g}"
        for metric in found["delta"]
    )
    return f"{name} − {reference}: {cells}: {'not worse' if found['not_worse'] else 'worse'}"


def format_estimators(report: dict) -> str:
    """One line naming the estimators and their own held-out errors."""
    parts, shown = [], set()
    for what in ("aus", "identity", "pose"):
        label = report["estimators"][what]
        held = report["estimators"]["held_out"][what]
        figures = ", ".join(f"{k} {v:.3g}" for k, v in held.items() if isinstance(v, float))
        new_figures = figures and label not in shown  # one estimator serving several metrics: once
        parts.append(f"{what}: {label}" + (f" (held out: {figures})" if new_figures else ""))
        shown.add(label)
    return f"estimators ({report['estimators']['pose_unit']} for pose) — " + "; ".join(parts)
