"""Validation grids during training: fixed held-out pairs, each identity image edited by a few AU
changes, sampled straight from the sharded training weights.

The edit program is the pipeline's (`edit_program`), jitted over the whole mesh with the weights in the
shardings training keeps them in: XLA partitions the sampling loop as it partitions the step, so no
replicated copy of the weights is ever made.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from magicface_jax.data.pipeline import decode
from magicface_jax.data.png import decode_png
from magicface_jax.data.synthetic_faces import IDENTITY_BACKGROUND
from magicface_jax.diffusion import NoiseSchedule, make_sampler
from magicface_jax.faces.aus import au_vector, parse_edit
from magicface_jax.images import to_model_input
from magicface_jax.models.magicface import MagicFace, Params
from magicface_jax.parallel.mesh import replicated, to_host
from magicface_jax.pipeline import edit_program
from magicface_jax.training.config import EvaluationSettings


@dataclasses.dataclass(frozen=True)
class ValidationSet:
    sources: np.ndarray  # float32 (N, S, S, 3) in [-1, 1]
    backgrounds: np.ndarray
    edits: np.ndarray  # (E, 12): the AU variations, the first all zero (the reconstruction)


def validation_record(record) -> dict[str, np.ndarray]:
    """A held-out record decoded for a grid: the identity image with its own background condition where
    the dataset stores one (synthetic_faces 2.0.0, whose targets differ in pose and scene), as at
    inference; otherwise the pair's condition."""
    decoded = decode(record)
    if IDENTITY_BACKGROUND in record:
        decoded["background"] = to_model_input(decode_png(record[IDENTITY_BACKGROUND]))
    return decoded


def validation_set(records: list[dict[str, np.ndarray]], settings: EvaluationSettings) -> ValidationSet:
    edits = [np.zeros(12, np.float32)] + [au_vector(parse_edit(edit)) for edit in settings.edits]
    return ValidationSet(
        np.stack([r["identity"] for r in records]),
        np.stack([r["background"] for r in records]),
        np.stack(edits).astype(np.float32),
    )


@functools.cache
def _grid_program(model: MagicFace, guided: bool):
    return jax.jit(functools.partial(edit_program, model, guided=guided, decode=True))


def validation_grid(
    model: MagicFace,
    schedule: NoiseSchedule,
    networks: dict[str, Params],
    prompt_embeds: jax.Array,
    data: ValidationSet,
    settings: EvaluationSettings,
    mesh: Mesh,
    seed: int = 0,
) -> np.ndarray:
    """uint8 (N·S, (E + 1)·S, 3): a row per pair, the source first, then one column per edit."""
    count, size = len(data.sources), data.sources.shape[1]
    edits = len(data.edits)
    sources = np.repeat(data.sources, edits, axis=0)
    backgrounds = np.repeat(data.backgrounds, edits, axis=0)
    au = np.tile(data.edits, (count, 1))
    factor = model.config.vae.downsample_factor
    latent_shape = (len(au), size // factor, size // factor, model.config.vae.latent_channels)
    noise = jax.random.normal(jax.random.key(seed), latent_shape, jnp.float32)
    sampler = make_sampler(settings.sampler, schedule, settings.steps)
    arrays = [jax.device_put(x, replicated(mesh)) for x in (sources, backgrounds, au, noise)]
    program = _grid_program(model, settings.guidance != 1.0)
    images = program(networks, prompt_embeds, *arrays, jnp.float32(settings.guidance), sampler)
    edited = to_host(images).reshape(count, edits, size, size, 3)
    originals = (data.sources[:, None] + 1.0) / 2.0
    grid = np.concatenate([originals, edited], axis=1)  # (N, E + 1, S, S, 3)
    grid = grid.transpose(0, 2, 1, 3, 4).reshape(count * size, (edits + 1) * size, 3)
    return np.round(np.clip(grid, 0.0, 1.0) * 255).astype(np.uint8)
