"""MagicFace as pure functions of a parameter pytree.

`MagicFace(config)` holds the three Flax modules (identity encoder, denoiser, VAE); the parameters
travel separately as `{"identity_encoder": ..., "denoiser": ..., "vae": ...}`, plain float32 arrays.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from magicface_jax.config import MagicFaceConfig, UNetConfig, VAEConfig
from magicface_jax.models.unet import UNet
from magicface_jax.models.vae import AutoencoderKL
from magicface_jax.nn.attention import KeyValue
from magicface_jax.nn.cpu_kernels import PLAIN, Kernels

COMPONENTS = ("identity_encoder", "denoiser", "vae")
Params = dict


def _unet_example_inputs(config: UNetConfig):
    size = 2 ** (len(config.block_out_channels) - 1)
    sample = jnp.zeros((1, size, size, 4), jnp.float32)
    context = jnp.zeros((1, 1, config.cross_attention_dim), jnp.float32)
    kwargs = {}
    if config.au_dim:
        kwargs["au"] = jnp.zeros((1, config.au_dim), jnp.float32)
    if config.in_channels > 4:
        kwargs["background"] = jnp.zeros((1, size, size, config.in_channels - 4), jnp.float32)
    return (sample, jnp.zeros((1,), jnp.float32), context), kwargs


def init_unet(config: UNetConfig, rng: jax.Array, dtype=jnp.float32) -> Params:
    """Random parameters, each boxed with its logical axis names (`nn.Partitioned`)."""
    args, kwargs = _unet_example_inputs(config)
    return UNet(config, dtype).init(rng, *args, **kwargs)["params"]


def init_vae(config: VAEConfig, rng: jax.Array, dtype=jnp.float32) -> Params:
    size = config.downsample_factor
    images = jnp.zeros((1, size, size, config.in_channels), jnp.float32)
    return AutoencoderKL(config, dtype).init(rng, images)["params"]


def abstract_unet(config: UNetConfig) -> Params:
    """Shapes, dtypes and logical axis names of a UNet's parameters, computing nothing."""
    return _fresh(_traced_unet(config))


def abstract_vae(config: VAEConfig) -> Params:
    return _fresh(_traced_vae(config))


# Tracing a network's init takes about a second and a run asks for the same shapes several times (the
# shardings, the train state, the checkpoint layout): each config is traced once per process.
@functools.cache
def _traced_unet(config: UNetConfig) -> Params:
    return jax.eval_shape(lambda: init_unet(config, jax.random.key(0)))


@functools.cache
def _traced_vae(config: VAEConfig) -> Params:
    return jax.eval_shape(lambda: init_vae(config, jax.random.key(0)))


def _fresh(tree: Params) -> Params:
    """A copy of the cached tree's containers, so that a caller's changes stay its own."""
    return jax.tree.map(lambda leaf: leaf, tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def init_component(config: MagicFaceConfig, name: str, rng: jax.Array) -> Params:
    if name == "vae":
        return init_vae(config.vae, rng)
    return init_unet(getattr(config, name), rng)


def abstract_params(config: MagicFaceConfig, name: str) -> Params:
    """Abstract parameters of one component ("identity_encoder", "denoiser" or "vae")."""
    return abstract_vae(config.vae) if name == "vae" else abstract_unet(getattr(config, name))


def init_params(config: MagicFaceConfig, rng: jax.Array) -> Params:
    """Random parameters of all three components (boxed with logical axis names)."""
    keys = jax.random.split(rng, len(COMPONENTS))
    return {name: init_component(config, name, key) for name, key in zip(COMPONENTS, keys, strict=True)}


@dataclasses.dataclass(frozen=True)
class MagicFace:
    """The model's forward functions. Every method is pure: params in, arrays out.

    `kernels` and `remat` are how the program computes, not what: the CPU rewrites of convolution and
    attention (`nn.cpu_kernels`; sampling turns them on, training leaves them off) and the UNets'
    rematerialization policy for training (`REMAT_POLICIES`).
    """

    config: MagicFaceConfig
    kernels: Kernels = PLAIN
    remat: str = "none"

    @property
    def identity_encoder(self) -> UNet:
        return UNet(self.config.identity_encoder, self.config.compute_dtype, self.kernels, self.remat)

    @property
    def denoiser(self) -> UNet:
        return UNet(self.config.denoiser, self.config.compute_dtype, self.kernels, self.remat)

    @property
    def vae(self) -> AutoencoderKL:
        return AutoencoderKL(self.config.vae, self.config.compute_dtype, self.kernels)

    def vae_encode(self, vae_params: Params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, H, W, 3) in [-1, 1] -> posterior (mean, logvar), each (B, H/8, W/8, 4), unscaled."""
        return self.vae.apply({"params": vae_params}, images, method=AutoencoderKL.encode)

    def vae_decode(self, vae_params: Params, latents: jax.Array) -> jax.Array:
        """Latents (unscaled) -> raw decoder output (B, H, W, 3), nominally in [-1, 1]."""
        return self.vae.apply({"params": vae_params}, latents, method=AutoencoderKL.decode)

    def identity_features(
        self, encoder_params: Params, source_latents: jax.Array, prompt_embeds: jax.Array
    ) -> list[jax.Array]:
        """The identity encoder at timestep 0: hidden states entering each transformer block."""
        context = jnp.broadcast_to(prompt_embeds, (source_latents.shape[0], *prompt_embeds.shape[1:]))
        _, features = self.identity_encoder.apply({"params": encoder_params}, source_latents, 0, context)
        return features

    def plain_unet_noise(
        self, encoder_params: Params, noisy_latents: jax.Array, timesteps: jax.Array, prompt_embeds: jax.Array
    ) -> jax.Array:
        """The identity encoder as the plain UNet it starts from (SD's): its noise prediction, prompted."""
        context = jnp.broadcast_to(prompt_embeds, (noisy_latents.shape[0], *prompt_embeds.shape[1:]))
        return self.identity_encoder.apply({"params": encoder_params}, noisy_latents, timesteps, context)[0]

    def identity_kv(self, denoiser_params: Params, features: Sequence[jax.Array]) -> list[KeyValue]:
        """The denoiser's self-attention keys and values of the identity tokens, once per image."""
        return self.denoiser.apply({"params": denoiser_params}, features, method=UNet.identity_kv)

    def predict_noise(
        self,
        denoiser_params: Params,
        noisy_latents: jax.Array,
        background_latents: jax.Array,
        au: jax.Array,
        timesteps: jax.Array | float,
        identity_kv: Sequence[KeyValue],
        prompt_embeds: jax.Array,
    ) -> jax.Array:
        """ε-prediction (B, h, w, 4) from noisy latents, background latents, AU vector (B, 12)."""
        context = jnp.broadcast_to(prompt_embeds, (noisy_latents.shape[0], *prompt_embeds.shape[1:]))
        out, _ = self.denoiser.apply(
            {"params": denoiser_params},
            noisy_latents,
            timesteps,
            context,
            au=au,
            background=background_latents,
            identity_kv=identity_kv,
        )
        return out


def unbox(params: Params) -> Params:
    """Plain arrays from parameters boxed with logical axis names."""
    return nn.meta.unbox(params)
