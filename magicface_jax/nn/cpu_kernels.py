"""CPU-only rewrites of convolution and attention, chosen per program by an explicit `Kernels` option.

XLA's CPU convolution and one-shot attention are slow at Stable Diffusion's sizes. For sampling on a CPU:

- a stride-1 convolution runs as matmuls over its input's shifted copies (im2col). Outputs of at most
  `im2col_whole_pixels` pixels (batch x height x width) take one matmul: measured 1.2-1.65x faster than
  XLA's convolution at SD1.5's 8² and 16² levels (batch 1-2). Larger ones take one matmul per band of
  output rows whose patches fit in `im2col_band_bytes` (they stay in cache): 1.05-1.13x at the UNet's 64²
  and 32² levels, 1.09-1.33x at the VAE's 128²-512² levels (fp32, 2 cores).
- attention runs one (example, head) pair and one block of queries at a time, so that each block's
  `attention_block_bytes` of float32 logits stay in the last-level cache: the whole (B, heads, T, S)
  array of SD1.5's first level (2 GiB at batch 2) streams through memory several times and runs about
  5x slower.

Both apply only where the program is compiled for a CPU (`lax.platform_dependent`); elsewhere XLA's
convolution and `jax.nn.dot_product_attention` run. `PLAIN` turns both off: training uses it (the banded
convolution made a tiny training step 1.4x slower and its compile 2.5x slower), and so does XLA's cost
analysis, which counts a loop body once and an im2col matmul's zero padding as work.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

Padding = tuple[tuple[int, int], tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class Kernels:
    """Which CPU rewrites a program uses; a budget of 0 turns a rewrite off."""

    im2col_whole_pixels: int = 0
    im2col_band_bytes: int = 0
    attention_block_bytes: int = 0


PLAIN = Kernels()
SAMPLING = Kernels(im2col_whole_pixels=512, im2col_band_bytes=6 * 2**20, attention_block_bytes=8 * 2**20)
KERNEL_CHOICES = {"plain": PLAIN, "sampling": SAMPLING}


def xla_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding, kernels: Kernels) -> jax.Array:
    """NHWC x HWIO convolution: a matmul when 1x1, else XLA's convolution or, on CPU with the im2col
    rewrite on, im2col matmuls (same result up to float rounding)."""
    if kernel.shape[:2] == (1, 1) and stride == 1 and padding == ((0, 0), (0, 0)):
        return jnp.einsum("bhwc,co->bhwo", x, kernel[0, 0])
    if stride == 1 and kernels.im2col_band_bytes:
        rows = band_rows(x, kernel, padding, kernels)
        return lax.platform_dependent(
            x,
            kernel,
            cpu=lambda x, k: _im2col_conv(x, k, padding, rows),
            default=lambda x, k: xla_conv(x, k, 1, padding),
        )
    return xla_conv(x, kernel, stride, padding)


def _output_size(x: jax.Array, kernel: jax.Array, padding: Padding) -> tuple[int, int]:
    (top, bottom), (left, right) = padding
    return x.shape[1] + top + bottom - kernel.shape[0] + 1, x.shape[2] + left + right - kernel.shape[1] + 1


def band_rows(x: jax.Array, kernel: jax.Array, padding: Padding, kernels: Kernels) -> int:
    """Output rows per im2col matmul: all of them for small outputs, else the largest power of two that
    divides the height and keeps a band's float32 patches within the band budget (at least one row)."""
    height, width = _output_size(x, kernel, padding)
    if x.shape[0] * height * width <= kernels.im2col_whole_pixels:
        return height
    row_bytes = 4 * x.shape[0] * width * kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
    rows = 1
    while height % (2 * rows) == 0 and 2 * rows * row_bytes <= kernels.im2col_band_bytes:
        rows *= 2
    return rows


def _im2col_conv(x: jax.Array, kernel: jax.Array, padding: Padding, rows: int) -> jax.Array:
    """Stride-1 convolution as one matmul per band of `rows` output rows (`rows` divides the height)."""
    kh, kw, channels, features = kernel.shape
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    height, width = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    flat_kernel = kernel.reshape(kh * kw * channels, features)

    def band(inputs: jax.Array) -> jax.Array:  # (B, rows + kh - 1, W + kw - 1, C) -> (B, rows, W, features)
        taps = [inputs[:, dy : dy + rows, dx : dx + width, :] for dy in range(kh) for dx in range(kw)]
        patches = jnp.concatenate(taps, axis=-1)  # (B, rows, W, kh*kw*C), tap-major like the HWIO kernel
        return jnp.einsum("bhwk,ko->bhwo", patches, flat_kernel)

    if rows == height:
        return band(x)
    starts = jnp.arange(0, height, rows)
    out = lax.map(lambda start: band(lax.dynamic_slice_in_dim(x, start, rows + kh - 1, axis=1)), starts)
    return jnp.moveaxis(out, 0, 1).reshape(x.shape[0], height, width, features)


def attend(query: jax.Array, key: jax.Array, value: jax.Array, kernels: Kernels) -> jax.Array:
    """Scaled dot-product attention over (B, T, heads, head_dim) arrays, softmax in float32: on CPU with
    the blocked rewrite on, in query blocks (`attend_blocked`); otherwise `jax.nn.dot_product_attention`."""
    budget = kernels.attention_block_bytes
    if not budget:
        return jax.nn.dot_product_attention(query, key, value)
    return lax.platform_dependent(
        query,
        key,
        value,
        cpu=lambda q, k, v: attend_blocked(q, k, v, budget),
        default=jax.nn.dot_product_attention,
    )


def query_block(queries: int, keys: int, budget: int) -> int:
    """Queries per block so that one head's (block, keys) float32 logits fit in `budget`."""
    rows = max(1, budget // (4 * keys))
    return min(queries, 1 << (rows.bit_length() - 1))


def attend_blocked(query: jax.Array, key: jax.Array, value: jax.Array, budget: int) -> jax.Array:
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
