"""Multi-head attention with optional extra key/value tokens (MagicFace's identity tokens)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from magicface_jax.nn.cpu_kernels import PLAIN, Kernels, attend
from magicface_jax.nn.layers import EMBED, HEADS, dense

KeyValue = tuple[jax.Array, jax.Array]  # each (B, S, heads, head_dim)


class Attention(nn.Module):
    """diffusers' `Attention` without bias on q/k/v: to_q, to_k, to_v, to_out.0.

    `context_axis` names the input axis of to_k/to_v: the token width for self-attention, the prompt
    width for cross-attention.
    """

    heads: int
    head_dim: int
    out_features: int
    context_axis: str = EMBED
    dtype: jnp.dtype = jnp.float32
    kernels: Kernels = PLAIN

    def setup(self):
        inner = self.heads * self.head_dim
        self.to_q = dense(inner, (EMBED, HEADS), self.dtype, "to_q", use_bias=False)
        self.to_k = dense(inner, (self.context_axis, HEADS), self.dtype, "to_k", use_bias=False)
        self.to_v = dense(inner, (self.context_axis, HEADS), self.dtype, "to_v", use_bias=False)
        self.to_out_0 = dense(self.out_features, (HEADS, EMBED), self.dtype, "to_out_0")

    def _split_heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.heads, self.head_dim)

    def key_value(self, context: jax.Array) -> KeyValue:
        return self._split_heads(self.to_k(context)), self._split_heads(self.to_v(context))

    def __call__(
        self, x: jax.Array, context: jax.Array | None = None, extra_kv: Sequence[jax.Array] | None = None
    ) -> jax.Array:
        """Queries from `x` only; keys and values from `context` (default `x`) plus `extra_kv`."""
        query = self._split_heads(self.to_q(x))
        key, value = self.key_value(x if context is None else context)
        if extra_kv is not None:
            key = jnp.concatenate([key, extra_kv[0].astype(key.dtype)], axis=1)
            value = jnp.concatenate([value, extra_kv[1].astype(value.dtype)], axis=1)
        out = attend(query, key, value, self.kernels)
        return self.to_out_0(out.reshape(*x.shape[:-1], self.heads * self.head_dim))
