"""What `sample.py --demo` and the web app edit by default, shipped with the package (no download): a
MagicFace trained on procedural faces at 64² and a few portraits of persons it never saw.

`assets/demo_model` is the synthetic replication's MagicFace with its VAE
(benchmarks/synthetic_replication.py, BENCHMARKS.md), trained further on same-pose pairs
(docs/evaluation.md, "The demo model"); `assets/demo_faces` holds neutral portraits (every AU at 0),
each with its background condition, rendered from `FACES_SEED`; `assets/synthetic_estimator` is the
estimator of the same world, trained on renderings and on round trips through the demo model's VAE
(docs/evaluation.md, "The estimators"), which evaluates the demo model. `write_demo_assets` writes the
model and the portraits, and given an estimator that too (the replication's `demo` stage gives all
three).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from magicface_jax import atomic, checkpoint
from magicface_jax.assets import DEMO_FACES, DEMO_MODEL, SYNTHETIC_ESTIMATOR
from magicface_jax.errors import MagicFaceError

# The portrait whose mouth the shipped model opens most plainly (the model follows AU26 only so far).
DEMO_IMAGE = DEMO_FACES / "face_2.png"
DEMO_BACKGROUND = DEMO_FACES / "face_2_bg.png"
# One row per AU (jaw drop, smile, brow lowerer, inner brow raiser): the source, then the AU at 0 … 5.
DEMO_SWEEPS = ("AU26=0:5:6", "AU12=0:5:6", "AU4=0:5:6", "AU1=0:5:6")
DEMO_SIZE = 64  # the demo model's images
DEMO_BATCH = 6  # a sweep's row in one call
TRAINING_TOLD_IN = 'docs/evaluation.md, "The demo model"'  # where a demo model's training is told
FACES_SEED = 2026  # the demo portraits' persons: a seed no synthetic_faces split uses
FACE_COUNT = 3
MAX_MODEL_BYTES = 20 * 2**20
# Marks a folder `write_demo_assets` wrote, which it may therefore replace.
ASSETS_MANIFEST = atomic.Manifest("demo_assets.json", ("magicface-jax/demo-1",))
# The demo's model is tiny: compiling its program takes far longer than running it, and XLA's cheaper code
# generation compiles it about a third faster for about a second more of running time.
FAST_COMPILE_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def prefer_fast_compilation() -> None:
    """Adds `FAST_COMPILE_XLA_FLAGS` to `XLA_FLAGS` where not set there; effective only before JAX starts
    its backend (the first computation)."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    given = {flag.split("=")[0] for flag in flags}
    flags += [flag for flag in FAST_COMPILE_XLA_FLAGS if flag.split("=")[0] not in given]
    os.environ["XLA_FLAGS"] = " ".join(flags)


def describe(model_dir: Path = DEMO_MODEL) -> str:
    """One line saying what the demo model is, from its manifest."""
    info = checkpoint.read_info(model_dir)
    steps = checkpoint.steps_behind(info.source)
    size = info.config.vae.sample_size
    note = info.source.get("note")
    made_by = info.source.get("demo", TRAINING_TOLD_IN)
    return (
        f"the demo model: MagicFace trained {steps} steps on procedural {size}x{size} faces "
        f"({made_by}); the portrait is a person it never saw" + (f". {note}" if note else "")
    )


def face_scale(model_dir: Path = DEMO_MODEL) -> float:
    """The `synthetic_faces` face scale of the world the demo model (and the shipped estimator) learnt."""
    return float(checkpoint.read_info(model_dir).source.get("face_scale", 1.0))


def render_demo_faces(
    directory: Path,
    count: int = FACE_COUNT,
    seed: int = FACES_SEED,
    size: int = DEMO_SIZE,
    face_scale: float = 1.0,
) -> None:
    """`count` neutral portraits (face_K.png) with their background conditions (face_K_bg.png), the faces
    drawn at `face_scale` as in the model's `synthetic_faces` world."""
    from magicface_jax.data import face_params
    from magicface_jax.data.backgrounds import render_scene
    from magicface_jax.data.face_render import render_face
    from magicface_jax.data.synthetic_faces import background_condition
    from magicface_jax.faces.aus import NUM_AUS
    from magicface_jax.images import save_image

    for k in range(count):
        rng = np.random.default_rng([seed, k])
        identity, pose, scene = (
            face_params.sample_identity(rng),
            face_params.sample_pose(rng, face_scale),
            face_params.sample_scene(rng),
        )
        face = render_face(identity, pose, np.zeros(NUM_AUS, np.float32), render_scene(scene, size))
        save_image(face.image, directory / f"face_{k}.png")
        save_image(
            background_condition(face.image, face.person_mask, face.landmarks), directory / f"face_{k}_bg.png"
        )


def write_demo_assets(
    export: Path,
    model_dir: Path = DEMO_MODEL,
    faces_dir: Path = DEMO_FACES,
    note: str = "",
    face_scale: float = 1.0,
    estimator: Path | None = None,
    estimator_dir: Path = SYNTHETIC_ESTIMATOR,
    made_by: str = TRAINING_TOLD_IN,
    sampling: checkpoint.SamplingDefault | None = None,
) -> int:
    """Writes the trained checkpoint `export` (its files verified on reading) to `model_dir`, renders
    the portraits, faces at `face_scale` (the model's world), into `faces_dir`, and with `estimator` (a
    synthetic estimator of that world) copies it to `estimator_dir`; a folder there is replaced only if
    this function wrote it (its `ASSETS_MANIFEST`). `note`: what a user should know about the model,
    printed with every demo; `made_by`: where its training is told; `sampling`: the steps measured for
    it, which the demo samples with (else the export's record). Returns the model's bytes."""
    from magicface_jax.evaluation.synthetic import SyntheticEstimator

    info = checkpoint.read_info(export)
    found = None if estimator is None else SyntheticEstimator.load(estimator)
    outputs = (model_dir, faces_dir) if found is None else (model_dir, faces_dir, estimator_dir)
    for directory in outputs:  # check_output skips an input of None
        atomic.check_output(
            directory, [export, estimator], overwrite=True, folder=True, manifest=ASSETS_MANIFEST
        )
    # Provenance without the paths of the machine that trained it.
    source = {k: v for k, v in info.source.items() if not k.endswith("checkpoint")}
    source |= {
        "vae": "the synthetic replication's VAE",
        "demo": made_by,
        "face_scale": face_scale,
    }
    if note:
        source["note"] = note
    with atomic.atomic_directory(model_dir, True, manifest=ASSETS_MANIFEST) as partial:
        writer = checkpoint.CheckpointWriter(partial)
        writer.copy_from(export)
        writer.finish(dataclasses.replace(info, source=source, sampling=sampling or info.sampling))
        _mark(partial)
        size = sum(f.stat().st_size for f in partial.rglob("*") if f.is_file())
        if size > MAX_MODEL_BYTES:
            raise MagicFaceError(f"{export} takes {size / 2**20:.1f} MB; a demo model must stay under 20 MB")
    with atomic.atomic_directory(faces_dir, True, manifest=ASSETS_MANIFEST) as partial:
        render_demo_faces(partial, face_scale=face_scale)
        _mark(partial)
    if found is not None:
        with atomic.atomic_directory(estimator_dir, True, manifest=ASSETS_MANIFEST) as partial:
            found.write_files(partial)
            _mark(partial)
    return size


def _mark(folder: Path) -> None:
    (folder / ASSETS_MANIFEST.name).write_text(json.dumps({"format": ASSETS_MANIFEST.formats[0]}) + "\n")
