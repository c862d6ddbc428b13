"""Moving one network's tensors through the name table, with every check the table makes possible:
each source tensor is used exactly once, every parameter is filled, every shape is what the model expects,
and every value is finite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from magicface_jax.convert.names import Row, get_path, set_path, to_flax, to_torch
from magicface_jax.convert.sources import TensorSource
from magicface_jax.errors import MagicFaceError


def _preview(keys: list[str], limit: int = 5) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_keys(source: TensorSource, rows: Sequence[Row], what: str) -> None:
    expected = {row.torch_key for row in rows}
    found = set(source.keys())
    unknown, missing = sorted(found - expected), sorted(expected - found)
    if unknown:
        raise MagicFaceError(
            f"{source.name}: {len(unknown)} tensors are not part of the {what}: {_preview(unknown)}; "
            "is this the right checkpoint for it?"
        )
    if missing:
        raise MagicFaceError(
            f"{source.name}: the {what} needs {len(missing)} missing tensors: {_preview(missing)}"
        )


def check_shapes(source: TensorSource, rows: Sequence[Row], what: str) -> None:
    for row in rows:
        found = tuple(source.shape(row.torch_key))
        if found != row.torch_shape:
            raise MagicFaceError(
                f"{source.name}: {row.torch_key} has shape {found}, the {what} expects {row.torch_shape}"
            )


def to_flax_params(source: TensorSource, rows: Sequence[Row], what: str, dtype=np.float32) -> dict:
    """A Flax parameter tree (numpy arrays of `dtype`) from a PyTorch state dict, one tensor at a time."""
    check_keys(source, rows, what)
    check_shapes(source, rows, what)
    params: dict = {}
    for row in rows:
        array = np.ascontiguousarray(to_flax(row.kind, source.get(row.torch_key)), dtype=dtype)
        check_finite(array, f"{source.name}: {row.torch_key}")
        set_path(params, row.flax_path, array)
    return params


def check_finite(array: np.ndarray, what: str) -> None:
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if bad:
        raise MagicFaceError(
            f"{what} has {bad} non-finite values (NaN or Inf) of {array.size}: the weights are damaged or "
            "diverged; convert from an intact copy"
        )


def check_flax_params(params: Mapping, rows: Sequence[Row]) -> None:
    """Every parameter of the table is present with its shape."""
    for row in rows:
        _flax_value(params, row)


def _flax_value(params: Mapping, row: Row) -> np.ndarray:
    try:
        value = get_path(params, row.flax_path)
    except KeyError:
        raise MagicFaceError(f"parameters lack {'/'.join(row.flax_path)}") from None
    if tuple(np.shape(value)) != row.flax_shape:
        raise MagicFaceError(
            f"{'/'.join(row.flax_path)} has shape {np.shape(value)}, expected {row.flax_shape}"
        )
    return value


def to_torch_array(params: Mapping, row: Row, dtype=None) -> np.ndarray:
    """One parameter of a Flax tree in PyTorch layout (the state-dict tensor of `row.torch_key`)."""
    value = np.asarray(_flax_value(params, row))
    check_finite(value, "/".join(row.flax_path))
    return np.ascontiguousarray(to_torch(row.kind, value), dtype=dtype or value.dtype)
