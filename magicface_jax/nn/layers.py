"""Parameterised layers with logical axis names on every parameter.

Models only name axes; the mapping of names to mesh axes lives in the configs (`magicface_jax.parallel`).
Parameters are float32; `dtype` is the compute dtype.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from magicface_jax.nn.cpu_kernels import PLAIN, Kernels, Padding, conv2d

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


class Conv(nn.Module):
    """`nn.Conv`'s parameters (`kernel` HWIO, `bias`) and result, computed by `cpu_kernels.conv2d`."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: Padding = ((1, 1), (1, 1))
    dtype: jnp.dtype = jnp.float32
    kernels: Kernels = PLAIN

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
        kernel_init = _partitioned(nn.initializers.lecun_normal(), (KERNEL_H, KERNEL_W, CONV_IN, CONV_OUT))
        kernel = self.param("kernel", kernel_init, shape, jnp.float32)
        bias = self.param("bias", _partitioned(nn.initializers.zeros_init(), (CONV_OUT,)), (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return conv2d(x, kernel, self.stride, self.padding, self.kernels) + bias


def conv(
    features: int,
    dtype,
    name: str,
    kernel: int = 3,
    stride: int = 1,
    padding: int | Padding = 1,
    kernels: Kernels = PLAIN,
) -> Conv:
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return Conv(features, kernel, stride, padding, dtype, kernels, name=name)


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
