"""Training batches: one global order of the pairs (or of their latent cache), fixed by the seed; each
process reads only the rows of each global batch that its devices hold, and those rows become one global
batch sharded over the mesh's (data, fsdp) axes.

Because the order is global, a run computes the same batches on any number of processes and devices, and
a resume onto another mesh continues exactly where the data stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from magicface_jax.data.pipeline import InputConfig, decode, open_source
from magicface_jax.errors import MagicFaceError
from magicface_jax.parallel.mesh import training_batch_sharding
from magicface_jax.training.config import RunConfig
from magicface_jax.training.latent_cache import LatentCache
from magicface_jax.training.latent_cache import as_record as _as_record

BATCH_KEYS = ("identity", "target", "background", "au_variation")


def open_training_source(run: RunConfig, split: str):
    """The pairs of `split`: the latent cache when the run has one, else the dataset's images."""
    if run.data.latent_cache:
        return LatentCache.open(Path(run.data.latent_cache).expanduser(), split)
    data_dir = run.data.data_dir or None
    if data_dir is None and not Path(run.dataset).expanduser().is_dir():
        raise MagicFaceError(
            f"dataset {run.dataset!r} is not a dataset folder; give data.data_dir=DIR to read it by name, "
            "or build it with python -m magicface_jax.data.build"
        )
    return open_source(Path(run.dataset).expanduser() if data_dir is None else run.dataset, split, data_dir)


def input_config(run: RunConfig) -> InputConfig:
    return InputConfig(
        global_batch_size=run.train.batch_size,
        seed=run.data.seed,
        read_threads=run.data.read_threads,
        prefetch_batches=run.data.prefetch_batches,
        workers=run.data.workers,
    )


def process_rows(mesh: Mesh, batch_size: int) -> np.ndarray:
    """The rows of a global batch that this process's devices hold, in order."""
    indices = training_batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
    rows = {row for index in indices.values() for row in range(batch_size)[index[0]]}
    return np.asarray(sorted(rows))


def training_iterator(run: RunConfig, source, mesh: Mesh) -> grain.DatasetIterator:
    """This process's rows of every global batch, forever, in an order fixed by the seed (a new order each
    epoch); the iterator's position is checkpointable."""
    decode_fn = _as_record if isinstance(source, LatentCache) else decode
    config = input_config(run)
    rows = process_rows(mesh, run.train.batch_size)
    if len(source) < run.train.batch_size:
        raise MagicFaceError(
            f"the dataset has {len(source)} pairs, fewer than one batch of train.batch_size="
            f"{run.train.batch_size}"
        )

    def read(positions: np.ndarray) -> dict[str, np.ndarray]:
        records = [decode_fn({**source[int(i)], "index": np.int64(i)}) for i in positions[rows]]
        return {key: np.stack([r[key] for r in records]) for key in records[0]}

    order = grain.MapDataset.range(len(source)).shuffle(seed=config.seed).repeat(None)
    dataset = order.batch(run.train.batch_size, drop_remainder=True).map(read)
    read_options = grain.ReadOptions(
        num_threads=config.read_threads, prefetch_buffer_size=config.prefetch_batches
    )
    return iter(dataset.to_iter_dataset(read_options))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """One process's rows -> the global batch, split over (data, fsdp). No process holds other rows."""
    sharding = training_batch_sharding(mesh)
    keys = [key for key in local if key != "index"]
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(local[key])) for key in keys}


def batches(iterator, mesh: Mesh) -> Iterator[dict[str, jax.Array]]:
    for local in iterator:
        yield global_batch(local, mesh)
