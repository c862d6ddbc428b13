"""The CPU attention loop computes what `jax.nn.dot_product_attention` computes."""

import jax
import numpy as np
import pytest

from magicface_jax.nn.cpu_kernels import PLAIN, attend, attend_blocked, query_block
from magicface_jax.parallel.mesh import batch_sharded, data_mesh


def qkv(batch: int, queries: int, keys: int, heads: int = 3, head_dim: int = 8):
    rng = np.random.default_rng(0)
    return (
        rng.standard_normal((batch, queries, heads, head_dim), np.float32),
        rng.standard_normal((batch, keys, heads, head_dim), np.float32) * 2,
        rng.standard_normal((batch, keys, heads, head_dim), np.float32),
    )


def test_query_block_is_a_power_of_two_within_budget():
    assert query_block(queries=4096, keys=8192, budget=8 * 2**20) == 256
    assert query_block(queries=100, keys=8192, budget=8 * 2**20) == 100
    assert query_block(queries=4096, keys=2**30, budget=1) == 1


@pytest.mark.parametrize("queries", [64, 77])  # 77: the last block is padded
def test_blocked_attention_equals_dense(queries):
    query, key, value = qkv(2, queries, 50)
    expected = jax.nn.dot_product_attention(query, key, value)
    # A budget of 16 query rows: several blocks per head.
    got = jax.jit(lambda q, k, v: attend_blocked(q, k, v, 4 * 50 * 16))(query, key, value)
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_blocked_attention_on_a_sharded_batch():
    query, key, value = qkv(8, 40, 24)
    sharding = batch_sharded(data_mesh())
    sharded = [jax.device_put(x, sharding) for x in (query, key, value)]
    got = jax.jit(lambda q, k, v: attend_blocked(q, k, v, 4 * 24 * 8))(*sharded)
    np.testing.assert_allclose(got, jax.nn.dot_product_attention(query, key, value), atol=2e-6)


def test_plain_kernels_attend_in_one_piece():
    query, key, value = qkv(2, 64, 50)
    lowered = jax.jit(lambda q, k, v: attend(q, k, v, PLAIN)).lower(query, key, value).as_text()
    assert "while" not in lowered
