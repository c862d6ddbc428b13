"""The grain input pipeline: each process reads its own shard of a pairs dataset, shuffled by seed, decodes
and normalizes the images, batches and prefetches; the iterator's state is checkpointed and restored exactly.

    source = open_source("synthetic_faces/128px", "train", data_dir=DIR)
    iterator = iter(make_dataset(source, InputConfig(global_batch_size=32)))
    batch = next(iterator)  # {'identity', 'target', 'background': float32 (B, S, S, 3) in [-1, 1],
                            #  'au_variation': float32 (B, 12), 'index': int32 (B,)}
    state = iterator.get_state()  # a JSON-able dict; a fresh iterator then `set_state(state)` goes on exactly

With orbax, checkpoint the iterator beside the train state: `grain.checkpoint.CheckpointSave(iterator)` and
`grain.checkpoint.CheckpointRestore(iterator)` under a `grain.checkpoint.CheckpointHandler()` item, one
file per process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from magicface_jax.data import features
from magicface_jax.data.png import decode_png
from magicface_jax.errors import MagicFaceError
from magicface_jax.images import to_model_input

# batch key <- record key
IMAGE_FIELDS = {
    "identity": features.IDENTITY_IMAGE,
    "target": features.TARGET_IMAGE,
    "background": features.BACKGROUND,
}


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """How training reads a pairs dataset."""

    global_batch_size: int = 8  # over all processes; each process reads global / process count
    seed: int = 0
    shuffle: bool = True  # a new order every epoch, derived from the seed
    num_epochs: int | None = None  # None: repeat forever
    drop_remainder: bool = True  # a finite run drops the last short batch of each process
    read_threads: int = 4  # threads decoding batches in each process
    prefetch_batches: int = 4  # batches buffered ahead in each process
    workers: int = 0  # > 0: decode in that many worker processes (grain mp_prefetch)

    def __post_init__(self):
        if self.global_batch_size < 1:
            raise MagicFaceError(f"global_batch_size must be ≥ 1, got {self.global_batch_size}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise MagicFaceError(f"num_epochs must be ≥ 1 or None (forever), got {self.num_epochs}")
        if min(self.read_threads, self.prefetch_batches, self.workers) < 0:
            raise MagicFaceError("read_threads, prefetch_batches and workers must be ≥ 0")
        if not 0 <= self.seed < 2**32:
            raise MagicFaceError(f"the seed must be in [0, 2**32), got {self.seed}")


class IndexedSource:
    """A random-access source whose records also carry their own index (for shard checks and debugging)."""

    def __init__(self, source):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        return {**self._source[index], "index": np.int64(index)}


class InMemorySource:
    """Records held in memory, repeated to `length`: a source for benchmarks and tests, no disk involved."""

    def __init__(self, records: Sequence[Mapping[str, Any]], length: int | None = None):
        if not records:
            raise MagicFaceError("an in-memory source needs at least one record")
        self._records = list(records)
        self._length = len(self._records) if length is None else length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} records")
        return dict(self._records[index % len(self._records)])


def synthetic_source(
    resolution: int = 128, length: int = 1024, distinct: int = 8, seed: int = 0
) -> InMemorySource:
    """`distinct` rendered synthetic pairs repeated to `length` records, for benchmarks."""
    from magicface_jax.data.synthetic_faces import SyntheticFacesSpec, synthetic_example

    spec = SyntheticFacesSpec(resolution=resolution, seed=seed)
    return InMemorySource([synthetic_example(spec, "train", i) for i in range(distinct)], length)


def open_source(dataset: str | Path, split: str, data_dir: str | Path | None = None):
    """A tfds data source: `dataset` is 'synthetic_faces/128px' under `data_dir`, or a dataset folder."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.dataset_info import DatasetInfoFileError

    try:
        if data_dir is None:
            return tfds.builder_from_directory(str(dataset)).as_data_source(split)
        # importing the builders registers them, so their configs resolve by name
        from magicface_jax.data import magicface_pairs, synthetic_faces  # noqa: F401

        return tfds.data_source(str(dataset), split=split, data_dir=str(data_dir), download=False)
    except (OSError, ValueError, KeyError, tfds.core.DatasetNotFoundError, DatasetInfoFileError) as err:
        where = f"{dataset} under {data_dir}" if data_dir else str(dataset)
        raise MagicFaceError(
            f"cannot open split {split!r} of {where}: {str(err).splitlines()[0]}. Build it first with "
            "python -m magicface_jax.data.build"
        ) from None


def decode(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A record -> the arrays a training step takes: images float32 (S, S, 3) in [-1, 1]."""
    out = {name: to_model_input(decode_png(record[key])) for name, key in IMAGE_FIELDS.items()}
    out[features.AU_VARIATION] = np.asarray(record[features.AU_VARIATION], np.float32)
    out["index"] = np.int32(record["index"])  # JAX's default integer width
    return out


def process_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise MagicFaceError(
            f"global batch size {global_batch_size} does not split evenly over {process_count} processes: "
            f"use a multiple of {process_count}"
        )
    return global_batch_size // process_count


def make_dataset(
    source, config: InputConfig, process_index: int | None = None, process_count: int | None = None
) -> grain.IterDataset:
    """This process's batches of `source`. Process index and count default to JAX's. Shards are the
    records i with i % count == index: disjoint, complete, and the same for any seed."""
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise MagicFaceError(f"process index {process_index} is not in [0, {process_count})")
    batch_size = process_batch_size(config.global_batch_size, process_count)
    if len(source) < process_count:
        raise MagicFaceError(f"{len(source)} examples cannot be shared by {process_count} processes")
    dataset = grain.MapDataset.source(IndexedSource(source))[process_index::process_count]
    if config.shuffle:
        dataset = dataset.shuffle(seed=config.seed)
    dataset = (
        dataset.repeat(config.num_epochs).map(decode).batch(batch_size, drop_remainder=config.drop_remainder)
    )
    read = grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=config.prefetch_batches)
    iterable = dataset.to_iter_dataset(read)
    if config.workers:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags; use their defaults
            flags.FLAGS.mark_as_parsed()
        iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.workers))
    return iterable
