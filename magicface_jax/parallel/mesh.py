"""Meshes and data placement shared by sampling and training.

Arrays given on the host are the same global value on every process; `to_global` places them on a mesh
from that value (each process keeps only its own shards), `to_host` brings a global array back whole to
every process. Both work unchanged on one device, several, or several hosts.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from magicface_jax.errors import MagicFaceError

DATA = "data"
FSDP = "fsdp"
TENSOR = "tensor"
TRAINING_AXES = (DATA, FSDP, TENSOR)


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh over every device (of every process) for data parallelism."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA,))


def training_mesh(data: int, fsdp: int, tensor: int, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over every device; one size may be -1 (whatever the others leave)."""
    from jax.experimental import mesh_utils

    devices = jax.devices() if devices is None else devices
    sizes = [data, fsdp, tensor]
    known = int(np.prod([size for size in sizes if size != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise MagicFaceError(
                f"mesh sizes {dict(zip(TRAINING_AXES, sizes, strict=True))} do not divide the "
                f"{len(devices)} devices"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise MagicFaceError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs {int(np.prod(sizes))} "
            f"devices; there are {len(devices)}: choose sizes whose product is {len(devices)} (or one -1)"
        )
    return Mesh(mesh_utils.create_device_mesh(sizes, devices), TRAINING_AXES)


def training_batch_sharding(mesh: Mesh) -> NamedSharding:
    """Examples split over the data and fsdp axes (FSDP is data parallelism with sharded weights)."""
    return NamedSharding(mesh, P((DATA, FSDP)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA))


def to_global(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def replicate(tree, mesh: Mesh):
    """Every leaf of a pytree of host arrays, replicated on every device of the mesh. Leaves already
    replicated there are kept as they are, not copied."""
    sharding = replicated(mesh)

    def put(leaf):
        if isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
            return leaf
        return to_global(leaf, sharding)

    return jax.tree.map(put, tree)


def to_host(array: jax.Array | np.ndarray) -> np.ndarray:
    if not isinstance(array, jax.Array) or array.is_fully_addressable:
        return np.asarray(array)
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def pad_batch(array: np.ndarray, multiple: int) -> np.ndarray:
    """Repeats the last item so that the batch divides evenly over `multiple` devices."""
    extra = -len(array) % multiple
    return np.concatenate([array, np.repeat(array[-1:], extra, axis=0)]) if extra else array
