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


# On CPU, a 3x3 convolution over at most this many output pixels (batch x height x width) runs as one
# matmul over the 9 shifted copies of its input: measured 1.2-1.65x faster than XLA's convolution at
# SD1.5's 8x8 and 16x16 levels (batch 1-2), and slower from about 2048 pixels on.
CPU_IM2COL_MAX_PIXELS = 512

Padding = tuple[tuple[int, int], tuple[int, int]]


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """NHWC x HWIO convolution: a matmul when 1x1, else XLA's convolution or, on CPU, im2col for small
    outputs (same result up to float rounding)."""
    if kernel.shape[:2] == (1, 1) and stride == 1 and padding == ((0, 0), (0, 0)):
        return jnp.einsum("bhwc,co->bhwo", x, kernel[0, 0])
    if stride == 1 and _output_pixels(x, kernel, padding) <= CPU_IM2COL_MAX_PIXELS:
        return lax.platform_dependent(
            x,
            kernel,
            cpu=lambda x, k: _im2col_conv(x, k, padding),
            default=lambda x, k: _xla_conv(x, k, 1, padding),
        )
    return _xla_conv(x, kernel, stride, padding)


def _output_pixels(x: jax.Array, kernel: jax.Array, padding: Padding) -> int:
    (top, bottom), (left, right) = padding
    height = x.shape[1] + top + bottom - kernel.shape[0] + 1
    width = x.shape[2] + left + right - kernel.shape[1] + 1
    return x.shape[0] * height * width


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _im2col_conv(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    kh, kw, channels, features = kernel.shape
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    height, width = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    taps = [x[:, dy : dy + height, dx : dx + width, :] for dy in range(kh) for dx in range(kw)]
    patches = jnp.concatenate(taps, axis=-1)  # (B, h, w, kh*kw*C), tap-major like the HWIO kernel
    return jnp.einsum("bhwk,ko->bhwo", patches, kernel.reshape(kh * kw * channels, features))


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
