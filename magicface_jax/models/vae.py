"""AutoencoderKL (Stable Diffusion's VAE) in Flax: encoder to the latent posterior, decoder back.

Names follow diffusers' PyTorch names (`encoder.down_blocks.0.resnets.1.conv1`), as in the UNet.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from magicface_jax.config import VAEConfig
from magicface_jax.nn.cpu_kernels import PLAIN, Kernels, attend
from magicface_jax.nn.layers import EMBED, HEADS, conv, dense, group_norm
from magicface_jax.nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D

VAE_NORM_EPS = 1e-6


class SpatialSelfAttention(nn.Module):
    """The VAE's single-head self-attention over all pixels, with GroupNorm and a residual."""

    channels: int
    groups: int
    dtype: jnp.dtype = jnp.float32
    kernels: Kernels = PLAIN

    @nn.compact
    def __call__(self, x):
        batch, height, width, channels = x.shape
        h = group_norm(self.groups, VAE_NORM_EPS, self.dtype, "group_norm")(x)
        h = h.reshape(batch, height * width, 1, channels)
        q, k, v = (dense(channels, (EMBED, HEADS), self.dtype, name)(h) for name in ("to_q", "to_k", "to_v"))
        out = attend(q, k, v, self.kernels).reshape(batch, height * width, channels)
        out = dense(channels, (HEADS, EMBED), self.dtype, "to_out_0")(out)
        return x + out.reshape(batch, height, width, channels)


class MidBlock(nn.Module):
    channels: int
    groups: int
    dtype: jnp.dtype = jnp.float32
    kernels: Kernels = PLAIN

    @nn.compact
    def __call__(self, x):
        x = ResnetBlock2D(
            self.channels, self.groups, VAE_NORM_EPS, self.dtype, self.kernels, name="resnets_0"
        )(x)
        x = SpatialSelfAttention(self.channels, self.groups, self.dtype, self.kernels, name="attentions_0")(x)
        return ResnetBlock2D(
            self.channels, self.groups, VAE_NORM_EPS, self.dtype, self.kernels, name="resnets_1"
        )(x)


class ResampleBlock(nn.Module):
    """`num_layers` resnets, then a 2x down- or upsampler (`resample` = "down", "up" or None)."""

    channels: int
    groups: int
    num_layers: int
    resample: str | None = None
    dtype: jnp.dtype = jnp.float32
    kernels: Kernels = PLAIN

    @nn.compact
    def __call__(self, x):
        for j in range(self.num_layers):
            x = ResnetBlock2D(
                self.channels, self.groups, VAE_NORM_EPS, self.dtype, self.kernels, name=f"resnets_{j}"
            )(x)
        if self.resample == "down":
            x = Downsample2D(self.channels, True, self.dtype, self.kernels, name="downsamplers_0")(x)
        elif self.resample == "up":
            x = Upsample2D(self.channels, self.dtype, self.kernels, name="upsamplers_0")(x)
        return x


class Encoder(nn.Module):
    config: VAEConfig
    dtype: jnp.dtype = jnp.float32
    kernels: Kernels = PLAIN

    @nn.compact
    def __call__(self, x):
        c = self.config
        widths = c.block_out_channels
        x = conv(widths[0], self.dtype, "conv_in", kernels=self.kernels)(x)
        for i, width in enumerate(widths):
            resample = "down" if i < len(widths) - 1 else None
            x = ResampleBlock(
                width,
                c.norm_num_groups,
                c.layers_per_block,
                resample,
                self.dtype,
                self.kernels,
                name=f"down_blocks_{i}",
            )(x)
        x = MidBlock(widths[-1], c.norm_num_groups, self.dtype, self.kernels, name="mid_block")(x)
        x = nn.silu(group_norm(c.norm_num_groups, VAE_NORM_EPS, self.dtype, "conv_norm_out")(x))
        return conv(2 * c.latent_channels, self.dtype, "conv_out", kernels=self.kernels)(x)


class Decoder(nn.Module):
    config: VAEConfig
    dtype: jnp.dtype = jnp.float32
    kernels: Kernels = PLAIN

    @nn.compact
    def __call__(self, z):
        c = self.config
        widths = c.block_out_channels[::-1]
        x = conv(widths[0], self.dtype, "conv_in", kernels=self.kernels)(z)
        x = MidBlock(widths[0], c.norm_num_groups, self.dtype, self.kernels, name="mid_block")(x)
        for i, width in enumerate(widths):
            resample = "up" if i < len(widths) - 1 else None
            x = ResampleBlock(
                width,
                c.norm_num_groups,
                c.layers_per_block + 1,
                resample,
                self.dtype,
                self.kernels,
                name=f"up_blocks_{i}",
            )(x)
        x = nn.silu(group_norm(c.norm_num_groups, VAE_NORM_EPS, self.dtype, "conv_norm_out")(x))
        return conv(c.out_channels, self.dtype, "conv_out", kernels=self.kernels)(x)


class AutoencoderKL(nn.Module):
    """`encode(images) -> (mean, logvar)`, `decode(latents) -> images`; NHWC, images in [-1, 1].

    Neither applies the scaling factor: MagicFace uses the unscaled posterior mean for the identity and
    background latents, and the caller divides by `scaling_factor` before decoding denoised latents.
    """

    config: VAEConfig
    dtype: jnp.dtype = jnp.float32
    kernels: Kernels = PLAIN

    def setup(self):
        c = self.config
        self.encoder = Encoder(c, self.dtype, self.kernels)
        self.quant_conv = conv(2 * c.latent_channels, self.dtype, "quant_conv", kernel=1, padding=0)
        self.post_quant_conv = conv(c.latent_channels, self.dtype, "post_quant_conv", kernel=1, padding=0)
        self.decoder = Decoder(c, self.dtype, self.kernels)

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        moments = self.quant_conv(self.encoder(images.astype(self.dtype))).astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, latents: jax.Array) -> jax.Array:
        return self.decoder(self.post_quant_conv(latents.astype(self.dtype))).astype(jnp.float32)

    def __call__(self, images: jax.Array) -> jax.Array:
        """Reconstruction through the posterior mode (used to initialise all parameters at once)."""
        mean, _ = self.encode(images)
        return self.decode(mean)


def sample_posterior(mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
    """A draw from the diagonal Gaussian posterior N(mean, exp(logvar))."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
