"""The step profiler's join of profiler events with the optimised HLO: kinds and FLOPs of real programs."""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.profile_step import by_category, hlo_ops, op_rows, traced_events


def _program():
    def fn(x, w, kernel):
        h = jnp.tanh(x @ w)  # (64, 48) @ (48, 32)
        image = h.reshape(1, 8, 8, 32)
        return lax.conv_general_dilated(
            image, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    args = (jnp.ones((64, 48)), jnp.ones((48, 32)), jnp.ones((3, 3, 32, 16)))
    return jax.jit(fn).lower(*args).compile(), args


def test_products_have_their_flops_and_kinds():
    executable, _ = _program()
    ops = hlo_ops(executable.as_text()).values()
    products = [op for op in ops if op.flops]
    assert sorted(op.flops for op in products) == sorted([2.0 * 64 * 48 * 32, 2.0 * 64 * 16 * 9 * 32])
    assert {op.category for op in products} <= {"products", "products + elementwise"}
    assert sum(op.flops for op in ops) == sum(op.flops for op in products)


def test_loops_are_not_counted_but_their_bodies_are():
    def fn(x):
        return lax.fori_loop(0, 3, lambda i, y: jnp.tanh(y @ y), x)

    x = jnp.asarray(np.random.default_rng(0).standard_normal((32, 32)), jnp.float32)
    executable = jax.jit(fn).lower(x).compile()
    ops = hlo_ops(executable.as_text())
    assert any(op.category == "loop" for op in ops.values())
    rows = op_rows(traced_events(lambda: executable(x)), ops)
    assert all(r.category != "loop" for r in rows)
    products = [r for r in by_category(rows) if r.category.startswith("products")]
    assert sum(r.count for r in products) == 3
    assert sum(r.flops for r in products) == 3 * 2.0 * 32**3


def test_the_profile_of_a_call_covers_its_products():
    executable, args = _program()
    rows = op_rows(traced_events(lambda: executable(*args)), hlo_ops(executable.as_text()))
    totals = {r.category: r for r in by_category(rows)}
    flops = sum(r.flops for name, r in totals.items() if name.startswith("products"))
    assert flops == 2.0 * 64 * 48 * 32 + 2.0 * 64 * 16 * 9 * 32
    assert all(r.seconds > 0 for r in rows)
