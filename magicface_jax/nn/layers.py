"""Parameterised layers with logical axis names on every parameter.

Models only name axes; the mapping of names to mesh axes lives in the configs (`magicface_jax.parallel`).
Parameters are float32; `dtype` is the compute dtype.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# Logical axis names.
EMBED = "embed"  # token width inside transformer blocks
HEADS = "heads"  # query/key/value projections (heads x head_dim)
MLP = "mlp"  # feed-forward inner width
CROSS = "cross_embed"  # width of the prompt embedding (cross-attention context)
TIME_HIDDEN = "time_hidden"  # inside the time-embedding MLP
TIME = "time_embed"  # time-embedding width
AU = "au"  # AU vector
CONV_IN = "conv_in"  # input channels of a convolution
CONV_OUT = "conv_out"  # output channels of a convolution
NORM = "norm"  # per-channel scale and bias of a normalisation
KERNEL_H, KERNEL_W = "kernel_h", "kernel_w"


def _partitioned(init, names):
    return nn.with_logical_partitioning(init, names)


def dense(
    features: int, axes: tuple[str, str], dtype, name: str, use_bias: bool = True, zero_init: bool = False
) -> nn.Dense:
    kernel_init = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_partitioned(kernel_init, axes),
        bias_init=_partitioned(nn.initializers.zeros_init(), (axes[1],)),
        name=name,
    )


# On CPU a stride-1 convolution runs as matmuls over its input's shifted copies (im2col) instead of XLA's
# convolution. Outputs of at most CPU_IM2COL_WHOLE_PIXELS pixels (batch x height x width) take one matmul:
# measured 1.2-1.65x faster than XLA's convolution at SD1.5's 8² and 16² levels (batch 1-2). Larger ones
# take one matmul per band of output rows whose patches fit in CPU_IM2COL_BAND_BYTES (they stay in cache):
# 1.05-1.13x at the UNet's 64² and 32² levels, 1.09-1.33x at the VAE's 128²-512² levels (fp32, 2 cores).
# A budget of 0 leaves every convolution to XLA.
CPU_IM2COL_WHOLE_PIXELS = 512
CPU_IM2COL_BAND_BYTES = 6 * 2**20

Padding = tuple[tuple[int, int], tuple[int, int]]


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """NHWC x HWIO convolution: a matmul when 1x1, else XLA's convolution or, on CPU, im2col matmuls
    (same result up to float rounding)."""
    if kernel.shape[:2] == (1, 1) and stride == 1 and padding == ((0, 0), (0, 0)):
        return jnp.einsum("bhwc,co->bhwo", x, kernel[0, 0])
    if stride == 1 and CPU_IM2COL_BAND_BYTES:
        rows = band_rows(x, kernel, padding)
        return lax.platform_dependent(
            x,
            kernel,
            cpu=lambda x, k: _im2col_conv(x, k, padding, rows),
            default=lambda x, k: _xla_conv(x, k, 1, padding),
        )
    return _xla_conv(x, kernel, stride, padding)


def _output_size(x: jax.Array, kernel: jax.Array, padding: Padding) -> tuple[int, int]:
    (top, bottom), (left, right) = padding
    return x.shape[1] + top + bottom - kernel.shape[0] + 1, x.shape[2] + left + right - kernel.shape[1] + 1


def band_rows(x: jax.Array, kernel: jax.Array, padding: Padding, budget: int | None = None) -> int:
    """Output rows per im2col matmul: all of them for small outputs, else the largest power of two that
    divides the height and keeps a band's float32 patches within `budget` bytes (at least one row)."""
    budget = CPU_IM2COL_BAND_BYTES if budget is None else budget
    height, width = _output_size(x, kernel, padding)
    if x.shape[0] * height * width <= CPU_IM2COL_WHOLE_PIXELS:
        return height
    row_bytes = 4 * x.shape[0] * width * kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
    rows = 1
    while height % (2 * rows) == 0 and 2 * rows * row_bytes <= budget:
        rows *= 2
    return rows


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


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


class Conv(nn.Module):
    """`nn.Conv`'s parameters (`kernel` HWIO, `bias`) and result, computed by `conv2d`."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: Padding = ((1, 1), (1, 1))
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
        kernel_init = _partitioned(nn.initializers.lecun_normal(), (KERNEL_H, KERNEL_W, CONV_IN, CONV_OUT))
        kernel = self.param("kernel", kernel_init, shape, jnp.float32)
        bias = self.param("bias", _partitioned(nn.initializers.zeros_init(), (CONV_OUT,)), (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return conv2d(x, kernel, self.stride, self.padding) + bias


def conv(
    features: int,
    dtype,
    name: str,
    kernel: int = 3,
    stride: int = 1,
    padding: int | Padding = 1,
) -> Conv:
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return Conv(features, kernel, stride, padding, dtype, name=name)


def group_norm(groups: int, eps: float, dtype, name: str) -> nn.GroupNorm:
    # Two-pass variance, as PyTorch computes it.
    return nn.GroupNorm(
        num_groups=groups,
        epsilon=eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        scale_init=_partitioned(nn.initializers.ones_init(), (NORM,)),
        bias_init=_partitioned(nn.initializers.zeros_init(), (NORM,)),
        name=name,
    )


def layer_norm(eps: float, dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        scale_init=_partitioned(nn.initializers.ones_init(), (NORM,)),
        bias_init=_partitioned(nn.initializers.zeros_init(), (NORM,)),
        name=name,
    )
