"""Logical axis names -> mesh axes.

Every parameter names its axes (`magicface_jax.nn.layers`: embed, heads, mlp, conv_in, conv_out, ...); which
mesh axis each name is split over is a rule of the run's config, not of the model. A name mapped to a mesh
axis that does not divide that dimension is replicated instead (SD's widths are multiples of 64, but e.g.
`conv_out`'s 4 output channels are not).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# Parameters replicated on every device: plain data parallelism.
REPLICATED: Rules = ()
# Fully sharded data parallelism: weights split over the "fsdp" mesh axis along their widest axes.
FSDP: Rules = (
    ("embed", "fsdp"),
    ("mlp", "fsdp"),
    ("heads", "fsdp"),
    ("conv_out", "fsdp"),
    ("time_embed", "fsdp"),
)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drops the mesh axes that do not divide their dimension."""
    fitted = []
    for dim, axes in zip(shape, (*spec, *([None] * (len(shape) - len(spec)))), strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = 1
        for name in names:
            size *= mesh.shape[name]
        fitted.append(axes if names and dim % size == 0 else None)
    return P(*fitted)


def param_shardings(abstract_params, mesh: Mesh, rules: Rules):
    """A `NamedSharding` per parameter of a boxed (logically named) parameter tree."""
    logical = nn.get_partition_spec(abstract_params)
    specs = nn.logical_to_mesh(logical, rules)
    shapes = jax.tree.map(lambda leaf: leaf.shape, nn.meta.unbox(abstract_params))
    return jax.tree.map(
        lambda spec, shape: NamedSharding(mesh, _fit(spec, shape, mesh)),
        specs,
        shapes,
        is_leaf=lambda x: isinstance(x, P),
    )
