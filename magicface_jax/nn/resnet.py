"""Residual blocks and resampling layers (diffusers' ResnetBlock2D, Downsample2D, Upsample2D)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from magicface_jax.nn.cpu_kernels import PLAIN, Kernels
from magicface_jax.nn.layers import CONV_OUT, TIME, conv, dense, group_norm


class ResnetBlock2D(nn.Module):
    out_channels: int
    groups: int = 32
    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32
    kernels: Kernels = PLAIN

    @nn.compact
    def __call__(self, x, temb=None):
        h = nn.silu(group_norm(self.groups, self.eps, self.dtype, "norm1")(x))
        h = conv(self.out_channels, self.dtype, "conv1", kernels=self.kernels)(h)
        if temb is not None:
            t = dense(self.out_channels, (TIME, CONV_OUT), self.dtype, "time_emb_proj")(nn.silu(temb))
            h = h + t[:, None, None, :]
        h = nn.silu(group_norm(self.groups, self.eps, self.dtype, "norm2")(h))
        h = conv(self.out_channels, self.dtype, "conv2", kernels=self.kernels)(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, self.dtype, "conv_shortcut", kernel=1, padding=0)(x)
        return x + h


class Downsample2D(nn.Module):
    """3x3 convolution with stride 2; `asymmetric` pads only right and bottom (the VAE encoder)."""

    channels: int
    asymmetric: bool = False
    dtype: jnp.dtype = jnp.float32
    kernels: Kernels = PLAIN

    @nn.compact
    def __call__(self, x):
        padding = ((0, 1), (0, 1)) if self.asymmetric else 1
        return conv(self.channels, self.dtype, "conv", stride=2, padding=padding, kernels=self.kernels)(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    channels: int
    dtype: jnp.dtype = jnp.float32
    kernels: Kernels = PLAIN

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv(self.channels, self.dtype, "conv", kernels=self.kernels)(x)
