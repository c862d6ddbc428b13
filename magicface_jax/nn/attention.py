"""Multi-head attention with optional extra key/value tokens (MagicFace's identity tokens)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from magicface_jax.nn.layers import EMBED, HEADS, dense

KeyValue = tuple[jax.Array, jax.Array]  # each (B, S, heads, head_dim)


# Bytes of float32 logits per step of the CPU attention loop: a block this size stays in the last-level
# cache, while the whole (B, heads, T, S) array of SD1.5's first level (2 GiB at batch 2) streams through
# memory several times and runs about 5x slower.
CPU_LOGITS_BLOCK_BYTES = 8 * 2**20


def attend(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    """Scaled dot-product attention over (B, T, heads, head_dim) arrays, softmax in float32.

    On CPU in query blocks (`attend_blocked`); elsewhere `jax.nn.dot_product_attention`. The choice is
    made for the platform the program is compiled for.
    """
    return lax.platform_dependent(query, key, value, cpu=attend_blocked, default=jax.nn.dot_product_attention)


def query_block(queries: int, keys: int, budget: int = CPU_LOGITS_BLOCK_BYTES) -> int:
    """Queries per block so that one head's (block, keys) float32 logits fit in `budget`."""
    rows = max(1, budget // (4 * keys))
    return min(queries, 1 << (rows.bit_length() - 1))


def attend_blocked(
    query: jax.Array, key: jax.Array, value: jax.Array, budget: int = CPU_LOGITS_BLOCK_BYTES
) -> jax.Array:
    """The same attention computed one (example, head) pair and one block of queries at a time
    (`lax.map`), so that each block's `budget` bytes of logits stay in cache."""
    batch, queries, heads, head_dim = query.shape
    keys = key.shape[1]
    if 4 * batch * heads * queries * keys <= budget:
        return jax.nn.dot_product_attention(query, key, value)
    spec = jax.typeof(query).sharding.spec
    if len(spec) and spec[0] is not None:
        # A batch sharded by type (explicit mesh axes) cannot be looped over: keep it inside every step.
        def per_example(q, k, v):
            q, k, v = (x.transpose(1, 0, 2) for x in (q, k, v))
            return _attend_heads(q, k, v, budget // batch).transpose(1, 0, 2)

        return jax.vmap(per_example)(query, key, value)
    # (B*heads, tokens, head_dim): examples and heads are independent.
    q, k, v = (x.transpose(0, 2, 1, 3).reshape(batch * heads, -1, head_dim) for x in (query, key, value))
    out = _attend_heads(q, k, v, budget)
    return out.reshape(batch, heads, queries, head_dim).transpose(0, 2, 1, 3)


def _attend_heads(query: jax.Array, key: jax.Array, value: jax.Array, budget: int) -> jax.Array:
    """(G, T, head_dim) queries against (G, S, head_dim) keys and values, one of the G heads and one block
    of queries per step. Normalising after the product with the values saves a pass over the logits."""
    heads, queries, head_dim = query.shape
    block = query_block(queries, key.shape[1], budget)
    blocks = -(-queries // block)
    scaled = query * jnp.asarray(head_dim**-0.5, query.dtype)
    scaled = jnp.pad(scaled, ((0, 0), (0, blocks * block - queries), (0, 0)))
    scaled = scaled.reshape(heads, blocks, block, head_dim)

    def one_head(args):
        q_head, k_head, v_head = args

        def one_block(q_block):
            logits = jnp.einsum("th,sh->ts", q_block, k_head, preferred_element_type=jnp.float32)
            weights = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
            out = jnp.einsum(
                "ts,sh->th", weights.astype(v_head.dtype), v_head, preferred_element_type=jnp.float32
            )
            return (out / weights.sum(axis=-1, keepdims=True)).astype(query.dtype)

        return lax.map(one_block, q_head)

    out = lax.map(one_head, (scaled, key, value))  # (G, blocks, block, head_dim)
    return out.reshape(heads, blocks * block, head_dim)[:, :queries]


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
        out = attend(query, key, value)
        return self.to_out_0(out.reshape(*x.shape[:-1], self.heads * self.head_dim))
