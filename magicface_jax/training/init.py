"""Where a run's networks start: an SD-initialised MagicFace checkpoint restored straight into its shards,
or a random initialisation that starts as the SD-initialised one does.

Both UNets start from one UNet: the identity encoder is that UNet, the denoiser is the same UNet with 4
more `conv_in` input channels (the background latents) and the AU linear, all zero, so that at step 0 the
denoiser computes what the UNet computes, plus attention to the identity tokens. With a random AU linear,
AU inputs of ±5 shift the time embedding so far that the true AU made the loss worse than AU = 0 for
thousands of steps.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from magicface_jax import checkpoint
from magicface_jax.config import (
    AU_EMBED_NAME,
    CROSS_ATTN_DOWN,
    CROSS_ATTN_UP,
    PLAIN_DOWN,
    PLAIN_UP,
    MagicFaceConfig,
    UNetConfig,
    VAEConfig,
    sd15_magicface_config,
    tiny_magicface_config,
)
from magicface_jax.diffusion import SD15_SCHEDULER_CONFIG
from magicface_jax.errors import MagicFaceError
from magicface_jax.models.magicface import COMPONENTS, Params, abstract_params, init_unet, init_vae, unbox
from magicface_jax.parallel.rules import Rules, param_shardings
from magicface_jax.training.autoencoder import SYNTHETIC_VAE, is_vae_export, load_vae
from magicface_jax.training.config import RunConfig


def nano_magicface_config() -> MagicFaceConfig:
    """The smallest layout with every part of MagicFace (two levels, one cross-attention level, a VAE
    that quarters the size): training tests compile it in seconds."""
    unet = UNetConfig(
        block_out_channels=(16, 32),
        down_block_types=(CROSS_ATTN_DOWN, PLAIN_DOWN),
        up_block_types=(PLAIN_UP, CROSS_ATTN_UP),
        layers_per_block=1,
        attention_heads=(2, 2),
        cross_attention_dim=16,
        norm_num_groups=4,
        sample_size=16,
    )
    vae = VAEConfig(block_out_channels=(16, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=64)
    return MagicFaceConfig(identity_encoder=unet, denoiser=unet.replace(in_channels=8, au_dim=12), vae=vae)


def synthetic_magicface_config() -> MagicFaceConfig:
    """The synthetic world's MagicFace (docs/evaluation.md): UNets of three levels (32, 64, 64 channels,
    one resnet per level; 16², 8² and 4² over the 16² latents, cross-attention on the first two), about
    1.5 M parameters each, so that the demo checkpoint with its VAE stays under 20 MB; the VAE of
    `training.autoencoder.SYNTHETIC_VAE` (64² images, downsampling 4), which a run takes trained from
    `model.vae_checkpoint`."""
    unet = UNetConfig(
        block_out_channels=(32, 64, 64),
        down_block_types=(CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, PLAIN_DOWN),
        up_block_types=(PLAIN_UP, CROSS_ATTN_UP, CROSS_ATTN_UP),
        layers_per_block=1,
        attention_heads=(2, 2, 2),
        cross_attention_dim=32,
        norm_num_groups=8,
        sample_size=16,
    )
    return MagicFaceConfig(
        identity_encoder=unet, denoiser=unet.replace(in_channels=8, au_dim=12), vae=SYNTHETIC_VAE
    )


PRESETS = {
    "nano": nano_magicface_config,
    "tiny": tiny_magicface_config,
    "synthetic": synthetic_magicface_config,
    "sd15": sd15_magicface_config,
}
UNETS = ("identity_encoder", "denoiser")


@dataclasses.dataclass(frozen=True)
class Start:
    """What a run starts from, before any training: the networks (placed on the mesh), the model's
    configuration, the noise schedule and the prompt embedding."""

    config: MagicFaceConfig
    networks: dict[str, Params]  # identity_encoder, denoiser, vae: jax.Arrays in their shardings
    scheduler: dict[str, Any]
    prompt_embeds: np.ndarray  # (1, tokens, cross_attention_dim)
    source: dict[str, Any]


def network_shardings(config: MagicFaceConfig, mesh: Mesh, rules: Rules) -> dict[str, Any]:
    return {name: param_shardings(abstract_params(config, name), mesh, rules) for name in COMPONENTS}


def load_start(run: RunConfig, mesh: Mesh) -> Start:
    """The networks of `run.init_checkpoint`, or a random start of `run.model.preset` (with the frozen
    VAE and prompt embedding of `run.model.vae_checkpoint` when given)."""
    if run.init_checkpoint:
        directory = _existing_checkpoint(run.init_checkpoint, "init_checkpoint")
        info = checkpoint.read_info(directory)
        shardings = network_shardings(info.config, mesh, run.mesh.rules)
        networks = {name: restore_network(directory, name, shardings[name]) for name in COMPONENTS}
        return Start(
            info.config,
            networks,
            info.scheduler,
            checkpoint.read_prompt_embeds(directory),
            {"init_checkpoint": str(directory), "steps_before": checkpoint.steps_behind(info.source)},
        )
    config = PRESETS[run.model.preset]()
    source: dict[str, Any] = {"preset": run.model.preset, "init_seed": run.model.init_seed}
    scheduler = dict(SD15_SCHEDULER_CONFIG)
    vae, prompt_embeds = None, None
    if run.model.vae_checkpoint:
        directory = _existing_checkpoint(run.model.vae_checkpoint, "model.vae_checkpoint")
        if is_vae_export(directory):  # a VAE trained by training.autoencoder: no prompt embedding
            exported = load_vae(directory)
            config = dataclasses.replace(config, vae=exported.config)
            shardings = network_shardings(config, mesh, run.mesh.rules)["vae"]
            vae = jax.device_put(exported.params, shardings)  # its layout checked by load_vae
        else:
            info = checkpoint.read_info(directory)
            config = dataclasses.replace(config, vae=info.config.vae)
            vae = restore_network(directory, "vae", network_shardings(config, mesh, run.mesh.rules)["vae"])
            prompt_embeds, scheduler = checkpoint.read_prompt_embeds(directory), info.scheduler
        source["vae_checkpoint"] = str(directory)
    init_unets, init_random_vae = random_initialisations(config, mesh, tuple(run.mesh.rules))
    key = jax.random.key(run.model.init_seed)
    unets = init_unets(key)
    if vae is None:
        vae = init_random_vae(jax.random.fold_in(key, 1))
    if prompt_embeds is None:
        width = config.denoiser.cross_attention_dim
        prompt_embeds = np.random.default_rng(run.model.init_seed).standard_normal((1, 77, width))
    return Start(config, {**unets, "vae": vae}, scheduler, np.asarray(prompt_embeds, np.float32), source)


# Tracing and compiling (or loading) a random initialisation takes seconds, and a process may start many runs
# of one config (the tests do): each is made once per process. Keys are arguments, so that a seed is not.
@functools.cache
def random_initialisations(config: MagicFaceConfig, mesh: Mesh, rules: Rules):
    """`(unets(key), vae(key))`: jitted random initialisations of the UNets and the VAE of `config`,
    placed in their shardings on `mesh`."""
    shardings = network_shardings(config, mesh, rules)
    unets = jax.jit(lambda key: random_unets(config, key), out_shardings={n: shardings[n] for n in UNETS})
    vae = jax.jit(lambda key: unbox(init_vae(config.vae, key)), out_shardings=shardings["vae"])
    return unets, vae


def random_unets(config: MagicFaceConfig, key: jax.Array) -> dict[str, Params]:
    """One random UNet as the identity encoder and, zero-extended, as the denoiser."""
    encoder = unbox(init_unet(config.identity_encoder, key))
    return {"identity_encoder": encoder, "denoiser": denoiser_from_unet(encoder, config)}


def denoiser_from_unet(unet: Params, config: MagicFaceConfig) -> Params:
    """The UNet's parameters with zero background channels in `conv_in` and a zero AU linear."""
    expected = unbox(abstract_params(config, "denoiser"))
    extra = config.denoiser.in_channels - config.identity_encoder.in_channels
    denoiser = dict(unet)
    kernel = unet["conv_in"]["kernel"]
    zeros = jnp.zeros((*kernel.shape[:2], extra, kernel.shape[3]), kernel.dtype)
    denoiser["conv_in"] = {**unet["conv_in"], "kernel": jnp.concatenate([kernel, zeros], axis=2)}
    if config.denoiser.au_dim:
        au = expected[AU_EMBED_NAME]
        denoiser[AU_EMBED_NAME] = {k: jnp.zeros(v.shape, v.dtype) for k, v in au.items()}
    if jax.tree.structure(denoiser) != jax.tree.structure(expected):
        raise MagicFaceError(
            "the identity encoder and denoiser configs differ beyond conv_in and the AU linear"
        )
    return denoiser


def restore_network(directory: Path, name: str, shardings) -> Params:
    """One network of a checkpoint read straight into its shards: each device reads only its own slices,
    so no process ever holds the whole network."""
    import orbax.checkpoint as ocp

    checkpoint.verify_network(directory, name)
    path = Path(directory) / name
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s, dtype=jnp.float32), shardings)
    try:
        return ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    except Exception as err:  # orbax raises assorted errors for damaged or mismatched directories
        raise MagicFaceError(
            f"cannot read {path} into the run's shardings ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None


def _existing_checkpoint(path: str, key: str) -> Path:
    directory = Path(path).expanduser()
    if directory.is_file():
        raise MagicFaceError(f"{key}={path} is a file; expected a MagicFace checkpoint folder")
    if not directory.is_dir():
        made_by = "convert_weights.py --sd SD_FOLDER --out DIR"
        if key == "model.vae_checkpoint":
            made_by += ", or train a synthetic VAE with benchmarks/synthetic_vae.py"
        raise MagicFaceError(f"{key}={path} does not exist; make one with {made_by}")
    return directory.resolve()  # orbax reads absolute paths only
