"""Training batches: each process reads its own shard of the pairs (or of their latent cache) with grain,
and the per-process batches become one global batch sharded over the mesh's (data, fsdp) axes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from magicface_jax.data.pipeline import InputConfig, make_dataset, open_source
from magicface_jax.errors import MagicFaceError
from magicface_jax.parallel.mesh import training_batch_sharding
from magicface_jax.training.config import RunConfig
from magicface_jax.training.latent_cache import LatentCache

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


def training_iterator(run: RunConfig, source) -> grain.DatasetIterator:
    """This process's batches, forever, in an order fixed by the seed; its state is checkpointable."""
    if isinstance(source, LatentCache):
        return iter(source.dataset(input_config(run)))
    return iter(make_dataset(source, input_config(run)))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """One process's rows -> the global batch, split over (data, fsdp). No process holds other rows."""
    sharding = training_batch_sharding(mesh)
    keys = [key for key in local if key != "index"]
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(local[key])) for key in keys}


def batches(iterator, mesh: Mesh) -> Iterator[dict[str, jax.Array]]:
    for local in iterator:
        yield global_batch(local, mesh)
