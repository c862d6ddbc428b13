"""The inference checkpoint of a training run: what `MagicFacePipeline.from_pretrained` and
`convert_weights.py --to-pytorch` read, written from the EMA or the raw weights."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from magicface_jax import checkpoint
from magicface_jax.config import MagicFaceConfig
from magicface_jax.models.magicface import COMPONENTS, Params
from magicface_jax.parallel.mesh import to_host
from magicface_jax.training.config import TrainSettings
from magicface_jax.training.init import Start, denoiser_from_unet
from magicface_jax.training.state import TrainState


def exported_networks(
    state: TrainState, frozen: dict[str, Params], weights: str, train: TrainSettings, config: MagicFaceConfig
) -> dict[str, Params]:
    """The networks to export. A denoiser trained with zeroed identity features
    (`train.train_identity_features` false) gets an all-zero identity encoder: its features are then
    exactly zero at sampling too (every layer of a zero UNet, normalisations included, maps to zero), so
    the checkpoint samples as it trained. An identity encoder trained as a plain UNet (`train.objective`
    unet) also becomes the denoiser, zero-extended, as a MagicFace starts from SD's UNet
    (`init.random_unets`)."""
    trained = state.ema if weights == "ema" and state.ema else state.params
    networks = {**frozen, **trained}
    if not train.train_identity_features:
        networks["identity_encoder"] = jax.tree.map(jnp.zeros_like, networks["identity_encoder"])
    if train.objective == "unet":
        extend = jax.jit(functools.partial(denoiser_from_unet, config=config))
        networks["denoiser"] = extend(networks["identity_encoder"])
    return networks


def write_export(
    directory: Path,
    start: Start,
    state: TrainState,
    frozen: dict[str, Params],
    weights: str,
    step: int,
    train: TrainSettings,
) -> None:
    """Gathers each network to the host (one at a time) and, on process 0, writes the checkpoint. Every
    process takes part in the gathers; only process 0 writes (orbax told so, see `checkpoint`)."""
    config = dataclasses.replace(start.config, dtype="float32")  # the compute dtype is a run setting
    networks = exported_networks(state, frozen, weights, train, config)
    writing = jax.process_index() == 0
    info = checkpoint.CheckpointInfo(
        config=config,
        scheduler=start.scheduler,
        source={
            **start.source,
            "trained_steps": step,
            "weights": weights,
            **({} if train.train_identity_features else {"identity_features": "zero"}),
            **({"objective": "unet"} if train.objective == "unet" else {}),
        },
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
