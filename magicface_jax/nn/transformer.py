"""Transformer blocks of the SD UNet (diffusers' BasicTransformerBlock and Transformer2DModel).

MagicFace's change lives here: a block's self-attention may also attend to the identity tokens of the
matching block of the identity encoder. The authors concatenate [own ; identity] tokens, normalise and
attend with all of them as queries, then keep the own half. LayerNorm works per token, so the same
result comes from queries of the own tokens only, with keys and values of both; the identity keys and
values depend only on the identity image and are computed once (`identity_kv`).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from magicface_jax.nn.attention import Attention, KeyValue
from magicface_jax.nn.cpu_kernels import PLAIN, Kernels
from magicface_jax.nn.layers import CONV_IN, CONV_OUT, CROSS, EMBED, MLP, conv, dense, group_norm, layer_norm


class GEGLU(nn.Module):
    inner: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        hidden, gate = jnp.split(dense(self.inner * 2, (EMBED, MLP), self.dtype, "proj")(x), 2, axis=-1)
        return hidden * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
    dim: int
    mult: int = 4
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = GEGLU(self.dim * self.mult, self.dtype, name="net_0")(x)
        return dense(self.dim, (MLP, EMBED), self.dtype, "net_2")(x)


class BasicTransformerBlock(nn.Module):
    dim: int
    heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32
    kernels: Kernels = PLAIN

    def setup(self):
        self.norm1 = layer_norm(1e-5, self.dtype, "norm1")
        self.attn1 = Attention(self.heads, self.head_dim, self.dim, dtype=self.dtype, kernels=self.kernels)
        self.norm2 = layer_norm(1e-5, self.dtype, "norm2")
        self.attn2 = Attention(
            self.heads, self.head_dim, self.dim, context_axis=CROSS, dtype=self.dtype, kernels=self.kernels
        )
        self.norm3 = layer_norm(1e-5, self.dtype, "norm3")
        self.ff = FeedForward(self.dim, dtype=self.dtype)

    def identity_kv(self, identity_tokens: jax.Array) -> KeyValue:
        """This block's self-attention keys and values of the identity tokens (B, S, C)."""
        return self.attn1.key_value(self.norm1(identity_tokens.astype(self.dtype)))

    def __call__(self, x, context, identity_kv: KeyValue | None = None):
        x = x + self.attn1(self.norm1(x), extra_kv=identity_kv)
        x = x + self.attn2(self.norm2(x), context=context)
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    """GroupNorm -> proj_in -> transformer blocks over the h*w tokens -> proj_out, plus the input.

    Returns the output and the hidden states entering each transformer block (the identity features
    when this UNet is the identity encoder).
    """

    channels: int
    heads: int
    groups: int = 32
    use_linear_projection: bool = False
    dtype: jnp.dtype = jnp.float32
    kernels: Kernels = PLAIN

    def setup(self):
        self.norm = group_norm(self.groups, 1e-6, self.dtype, "norm")
        if self.use_linear_projection:
            self.proj_in = dense(self.channels, (CONV_IN, EMBED), self.dtype, "proj_in")
            self.proj_out = dense(self.channels, (EMBED, CONV_OUT), self.dtype, "proj_out")
        else:
            self.proj_in = conv(self.channels, self.dtype, "proj_in", kernel=1, padding=0)
            self.proj_out = conv(self.channels, self.dtype, "proj_out", kernel=1, padding=0)
        self.transformer_blocks = [
            BasicTransformerBlock(
                self.channels, self.heads, self.channels // self.heads, self.dtype, self.kernels
            )
        ]

    def identity_kv(self, identity_tokens: Sequence[jax.Array]) -> list[KeyValue]:
        return [blk.identity_kv(t) for blk, t in zip(self.transformer_blocks, identity_tokens, strict=True)]

    def __call__(self, x, context, identity_kv: Sequence[KeyValue] | None = None):
        batch, height, width, channels = x.shape
        h = self.norm(x)
        if self.use_linear_projection:
            h = self.proj_in(h.reshape(batch, height * width, channels))
        else:
            h = self.proj_in(h).reshape(batch, height * width, channels)
        block_inputs = []
        for i, block in enumerate(self.transformer_blocks):
            block_inputs.append(h)
            h = block(h, context, None if identity_kv is None else identity_kv[i])
        if self.use_linear_projection:
            h = self.proj_out(h).reshape(batch, height, width, channels)
        else:
            h = self.proj_out(h.reshape(batch, height, width, channels))
        return h + x, block_inputs
