"""Timestep embeddings of the Stable Diffusion UNet."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from magicface_jax.nn.layers import TIME, TIME_HIDDEN, dense


def timestep_embedding(
    timesteps: jnp.ndarray, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0
) -> jnp.ndarray:
    """Sinusoidal embedding (B,) -> (B, dim) in float32, as diffusers' `get_timestep_embedding`."""
    half = dim // 2
    exponent = -math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    angles = jnp.asarray(timesteps, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = dense(self.features, (None, TIME_HIDDEN), self.dtype, "linear_1")(x)
        return dense(self.features, (TIME_HIDDEN, TIME), self.dtype, "linear_2")(nn.silu(x))
