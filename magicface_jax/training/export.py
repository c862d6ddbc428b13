"""The inference checkpoint of a training run: what `MagicFacePipeline.from_pretrained` and
`convert_weights.py --to-pytorch` read, written from the EMA or the raw weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from magicface_jax import checkpoint
from magicface_jax.models.magicface import COMPONENTS, Params
from magicface_jax.parallel.mesh import to_host
from magicface_jax.training.init import Start
from magicface_jax.training.state import TrainState


def exported_networks(state: TrainState, frozen: dict[str, Params], weights: str) -> dict[str, Params]:
    trained = state.ema if weights == "ema" and state.ema else state.params
    return {**frozen, **trained}


def write_export(
    directory: Path, start: Start, state: TrainState, frozen: dict[str, Params], weights: str, step: int
) -> None:
    """Gathers each network to the host (one at a time) and, on process 0, writes the checkpoint. Every
    process takes part in the gathers; only process 0 writes (orbax told so, see `checkpoint`)."""
    networks = exported_networks(state, frozen, weights)
    writing = jax.process_index() == 0
    config = dataclasses.replace(start.config, dtype="float32")  # the compute dtype is a run setting
    info = checkpoint.CheckpointInfo(
        config=config,
        scheduler=start.scheduler,
        source={**start.source, "trained_steps": step, "weights": weights},
    )
    if not writing:
        for name in COMPONENTS:
            jax.tree.map(to_host, networks[name])
        return
    with checkpoint.writing_checkpoint(directory, overwrite=True) as writer:
        for name in COMPONENTS:
            writer.write_params(
                name, jax.tree.map(lambda a: np.asarray(to_host(a), np.float32), networks[name])
            )
        writer.write_prompt_embeds(start.prompt_embeds)
        writer.finish(info)
