"""The one table between PyTorch state-dict keys and Flax parameter paths, used in both directions.

Our Flax modules carry diffusers' names, so a row follows from the Flax path by a declared rule:
list containers are indexed with a dot (`down_blocks_0` <-> `down_blocks.0`), `kernel`/`scale` are
PyTorch's `weight`, and the layout changes with the kind of parameter:

    conv kernel   Flax (H, W, in, out)  <->  PyTorch (out, in, H, W)
    dense kernel  Flax (in, out)        <->  PyTorch (out, in)
    norm scale, biases                  unchanged

The table is built from the abstract parameters (`jax.eval_shape`), so it always matches the model.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterator, Mapping

import flax.linen as nn
import jax
import numpy as np

# Flax module names that stand for PyTorch `ModuleList`/`Sequential` entries.
_LIST_NAMES = (
    "down_blocks",
    "up_blocks",
    "resnets",
    "attentions",
    "transformer_blocks",
    "downsamplers",
    "upsamplers",
    "to_out",
    "net",
)
_LIST_ITEM = re.compile(rf"^({'|'.join(_LIST_NAMES)})_(\d+)$")
_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}

CONV, DENSE, VECTOR = "conv", "dense", "vector"


@dataclasses.dataclass(frozen=True)
class Row:
    torch_key: str
    flax_path: tuple[str, ...]
    kind: str  # CONV, DENSE or VECTOR
    flax_shape: tuple[int, ...]

    @property
    def torch_shape(self) -> tuple[int, ...]:
        return torch_shape(self.kind, self.flax_shape)


def torch_shape(kind: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if kind == CONV:
        h, w, i, o = flax_shape
        return (o, i, h, w)
    if kind == DENSE:
        return tuple(reversed(flax_shape))
    return tuple(flax_shape)


def to_flax(kind: str, array: np.ndarray) -> np.ndarray:
    """A PyTorch-layout array in Flax layout (a view where numpy allows)."""
    if kind == CONV:
        return array.transpose(2, 3, 1, 0)
    if kind == DENSE:
        return array.T
    return array


def to_torch(kind: str, array: np.ndarray) -> np.ndarray:
    if kind == CONV:
        return array.transpose(3, 2, 0, 1)
    if kind == DENSE:
        return array.T
    return array


def torch_key(flax_path: tuple[str, ...]) -> str:
    parts = []
    for name in flax_path[:-1]:
        match = _LIST_ITEM.match(name)
        parts.extend(match.groups() if match else (name,))
    parts.append(_TORCH_LEAF[flax_path[-1]])
    return ".".join(parts)


def _kind(path: tuple[str, ...], shape: tuple[int, ...]) -> str:
    if path[-1] == "kernel":
        return CONV if len(shape) == 4 else DENSE
    return VECTOR


def leaves(tree: Mapping, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    for name, value in tree.items():
        if isinstance(value, Mapping):
            yield from leaves(value, (*prefix, name))
        else:
            yield (*prefix, name), value


def build_table(abstract: Mapping) -> list[Row]:
    """One row per parameter of an abstract (or concrete) Flax parameter tree."""
    rows = []
    for path, leaf in leaves(nn.meta.unbox(abstract)):
        shape = tuple(jax.numpy.shape(leaf))
        rows.append(Row(torch_key(path), path, _kind(path, shape), shape))
    return rows


def logical_names(abstract: Mapping) -> dict[tuple[str, ...], tuple[str | None, ...]]:
    """Flax path -> logical axis names, from parameters boxed by `nn.with_logical_partitioning`."""
    names = {}
    flat = jax.tree_util.tree_flatten_with_path(abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
    for key_path, leaf in flat:
        path = tuple(k.key for k in key_path)
        names[path] = tuple(leaf.names) if isinstance(leaf, nn.Partitioned) else (None,) * np.ndim(leaf)
    return names


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def get_path(tree: Mapping, path: tuple[str, ...]):
    for name in path:
        tree = tree[name]
    return tree


@functools.cache
def network_table(config) -> tuple[Row, ...]:
    """The table of a UNet or VAE config, from abstract parameters (no weights are created)."""
    from magicface_jax.config import VAEConfig
    from magicface_jax.models.magicface import abstract_unet, abstract_vae

    return tuple(
        build_table(abstract_vae(config) if isinstance(config, VAEConfig) else abstract_unet(config))
    )
