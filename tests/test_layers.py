"""The CPU convolution (im2col matmuls, whole or in bands of rows) computes what XLA's convolution does."""

import jax
import numpy as np
import pytest

from magicface_jax.nn.cpu_kernels import PLAIN, SAMPLING, Kernels, band_rows, conv2d, xla_conv
from magicface_jax.parallel.mesh import batch_sharded, data_mesh

SAME = ((1, 1), (1, 1))


def inputs(batch: int, height: int, width: int, channels: int = 5, features: int = 7, kernel: int = 3):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, height, width, channels), np.float32)
    k = rng.standard_normal((kernel, kernel, channels, features), np.float32)
    return x, k


def banded(budget: int) -> Kernels:
    return Kernels(im2col_whole_pixels=SAMPLING.im2col_whole_pixels, im2col_band_bytes=budget)


def test_band_rows_is_a_power_of_two_dividing_the_height_within_budget():
    x, k = inputs(2, 64, 64, channels=320)
    row_bytes = 4 * 2 * 64 * 9 * 320
    assert band_rows(x, k, SAME, banded(6 * 2**20)) == 4
    assert band_rows(x, k, SAME, banded(row_bytes - 1)) == 1  # at least one row
    x, k = inputs(1, 12, 64)
    assert band_rows(x, k, SAME, banded(4 * 64 * 9 * 5 * 8)) == 4  # 8 rows fit, but 8 does not divide 12
    x, k = inputs(1, 8, 8)
    assert band_rows(x, k, SAME, banded(1)) == 8  # small outputs: one matmul


@pytest.mark.parametrize(
    ("shape", "padding", "budget"),
    [
        ((2, 8, 8), SAME, 1),  # small: one matmul over the whole image
        ((2, 24, 30), SAME, 1),  # one row per band
        ((1, 24, 30), SAME, 4 * 30 * 9 * 5 * 4),  # 4 rows per band
        ((1, 22, 30), ((0, 1), (2, 0)), 4 * 30 * 9 * 5 * 4),  # uneven padding, 21 rows out: 1 per band
    ],
)
def test_im2col_convolution_equals_xla(shape, padding, budget):
    x, k = inputs(*shape)
    got = jax.jit(lambda x, k: conv2d(x, k, 1, padding, banded(budget)))(x, k)
    np.testing.assert_allclose(got, xla_conv(x, k, 1, padding), atol=2e-5)


def test_banded_convolution_on_a_sharded_batch():
    x, k = inputs(8, 24, 24)
    sharded = jax.device_put(x, batch_sharded(data_mesh()))
    got = jax.jit(lambda x, k: conv2d(x, k, 1, SAME, banded(1)))(sharded, k)
    np.testing.assert_allclose(got, xla_conv(x, k, 1, SAME), atol=2e-5)


def test_plain_kernels_are_xla_convolution():
    x, k = inputs(2, 8, 8)
    lowered = jax.jit(lambda x, k: conv2d(x, k, 1, SAME, PLAIN)).lower(x, k).as_text()
    assert "convolution" in lowered and "dot_general" not in lowered
