"""The grain input pipeline: batches, seeded shuffling, shards, exact restore, worker processes, and two
JAX processes (jax.distributed on loopback, gloo) reading disjoint, complete shards.

Run as a script, this file is one of those two processes.
"""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from magicface_jax.data.pipeline import (
    InMemorySource,
    InputConfig,
    make_dataset,
    open_source,
    synthetic_source,
)
from magicface_jax.data.png import encode_png
from magicface_jax.errors import MagicFaceError


@pytest.fixture(scope="session")
def source():
    return synthetic_source(resolution=64, length=24, distinct=3)


def _indices(dataset, batches: int | None = None) -> list[list[int]]:
    """The record indices of each batch, for `batches` batches or until the dataset ends."""
    iterator = iter(dataset)
    out = [batch["index"].tolist() for batch in itertools.islice(iterator, batches)]
    iterator.close()
    return out


def _flat(batches: list[list[int]]) -> list[int]:
    return list(itertools.chain.from_iterable(batches))


def test_batches_are_normalized_nhwc(source):
    iterator = iter(make_dataset(source, InputConfig(global_batch_size=4), 0, 1))
    batch = next(iterator)
    iterator.close()
    assert set(batch) == {"identity", "target", "background", "au_variation", "index"}
    for key in ("identity", "target", "background"):
        assert batch[key].shape == (4, 64, 64, 3) and batch[key].dtype == np.float32
        assert -1 <= batch[key].min() < 0 < batch[key].max() <= 1
    assert batch["au_variation"].shape == (4, 12) and batch["au_variation"].dtype == np.float32
    assert batch["index"].dtype == np.int32
    record = source[int(batch["index"][0])]
    np.testing.assert_array_equal(batch["au_variation"][0], record["au_variation"])


def test_shuffling_is_seeded_and_every_epoch_is_a_new_permutation(source):
    config = InputConfig(global_batch_size=4, num_epochs=2, drop_remainder=False, seed=5)
    order = _flat(_indices(make_dataset(source, config, 0, 1)))
    first, second = order[:24], order[24:]
    assert sorted(first) == sorted(second) == list(range(24)) and first != second
    assert order == _flat(_indices(make_dataset(source, config, 0, 1)))
    other = InputConfig(global_batch_size=4, num_epochs=2, drop_remainder=False, seed=6)
    assert order != _flat(_indices(make_dataset(source, other, 0, 1)))
    plain = InputConfig(global_batch_size=4, num_epochs=1, shuffle=False)
    assert _flat(_indices(make_dataset(source, plain, 0, 1))) == list(range(24))


def test_shards_are_disjoint_and_complete_even_when_uneven():
    pixels = encode_png(np.zeros((4, 4, 3), np.uint8))
    record = {key: pixels for key in ("identity_image", "target_image", "background")}
    source = InMemorySource([{**record, "au_variation": np.zeros(12, np.float32)}], length=10)
    config = InputConfig(global_batch_size=6, num_epochs=1, drop_remainder=False)
    shards = [sorted(_flat(_indices(make_dataset(source, config, rank, 3)))) for rank in range(3)]
    assert sorted(_flat(shards)) == list(range(10))
    assert [len(shard) for shard in shards] == [4, 3, 3]


def test_restoring_mid_epoch_gives_identical_next_batches(source):
    config = InputConfig(global_batch_size=4, seed=2)
    iterator = iter(make_dataset(source, config, 0, 1))
    for _ in range(4):  # 4 of the 6 batches of an epoch
        next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))  # as a checkpoint stores it
    expected = [next(iterator) for _ in range(5)]  # crosses into the next epoch
    restored = iter(make_dataset(source, config, 0, 1))
    restored.set_state(state)
    for want in expected:
        got = next(restored)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    iterator.close()
    restored.close()


def test_iterator_state_goes_through_an_orbax_checkpoint(tmp_path, source):
    import grain
    import orbax.checkpoint as ocp

    config = InputConfig(global_batch_size=4, seed=9)
    iterator = iter(make_dataset(source, config, 0, 1))
    next(iterator), next(iterator), next(iterator)
    with ocp.CheckpointManager(
        tmp_path, item_handlers={"data": grain.checkpoint.CheckpointHandler()}
    ) as manager:
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = [next(iterator)["index"].tolist() for _ in range(3)]
    restored = iter(make_dataset(source, config, 0, 1))
    with ocp.CheckpointManager(
        tmp_path, item_handlers={"data": grain.checkpoint.CheckpointHandler()}
    ) as manager:
        manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    assert [next(restored)["index"].tolist() for _ in range(3)] == expected
    iterator.close()
    restored.close()


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_restore(source):
    threads = InputConfig(global_batch_size=4, seed=1)
    workers = InputConfig(global_batch_size=4, seed=1, workers=2)
    expected = _indices(make_dataset(source, threads, 0, 1), 9)
    iterator = iter(make_dataset(source, workers, 0, 1))
    assert [next(iterator)["index"].tolist() for _ in range(5)] == expected[:5]
    state = iterator.get_state()
    iterator.close()
    restored = iter(make_dataset(source, workers, 0, 1))
    restored.set_state(state)
    assert [next(restored)["index"].tolist() for _ in range(4)] == expected[5:]
    restored.close()


def test_bad_configs_are_errors(source, tmp_path):
    with pytest.raises(MagicFaceError, match="multiple of 2"):
        make_dataset(source, InputConfig(global_batch_size=3), 0, 2)
    with pytest.raises(MagicFaceError, match="process index"):
        make_dataset(source, InputConfig(), 2, 2)
    with pytest.raises(MagicFaceError, match="cannot be shared"):
        make_dataset(InMemorySource([{}], length=1), InputConfig(global_batch_size=2), 0, 2)
    for bad in ({"global_batch_size": 0}, {"num_epochs": 0}, {"workers": -1}, {"seed": -1}):
        with pytest.raises(MagicFaceError):
            InputConfig(**bad)
    with pytest.raises(MagicFaceError, match="at least one record"):
        InMemorySource([])
    with pytest.raises(MagicFaceError, match="Build it first"):
        open_source(tmp_path / "nothing", "train")
    with pytest.raises(MagicFaceError, match="Build it first"):
        open_source("synthetic_faces/64px", "train", data_dir=tmp_path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_jax_processes_read_disjoint_complete_shards(tmp_path):
    from magicface_jax.data.synthetic_faces import SyntheticFaces, SyntheticFacesConfig, SyntheticFacesSpec
    from tests.conftest import child_environment  # here: this file also runs as each process's script

    spec = SyntheticFacesSpec(resolution=64, train_pairs=11, test_pairs=1, pairs_per_identity=3)
    builder = SyntheticFaces(config=SyntheticFacesConfig(spec), data_dir=str(tmp_path))
    builder.download_and_prepare()
    port = _free_port()
    env = child_environment() | {"JAX_PLATFORMS": "cpu"}  # each process sets its devices
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                str(port),
                str(rank),
                str(builder.data_dir),
                str(tmp_path / f"{rank}.json"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    logs = []
    try:
        for process in processes:
            logs.append(process.communicate(timeout=120)[0])
    finally:
        for process in processes:
            process.kill()
    assert [p.returncode for p in processes] == [0, 0], "\n".join(logs)[-3000:]
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    mine = [sorted(r["indices"]) for r in results]
    assert not set(mine[0]) & set(mine[1])
    assert sorted(mine[0] + mine[1]) == list(range(11))
    for result in results:  # each process saw both shards through a gloo all-gather
        assert sorted(i for i in result["gathered"] if i >= 0) == list(range(11))


def _worker(port: int, rank: int, dataset_dir: str, out: str) -> None:
    import jax

    from magicface_jax.parallel.hosts import join_processes

    join_processes(f"127.0.0.1:{port}", num_processes=2, process_id=rank)
    from jax.experimental import multihost_utils

    config = InputConfig(global_batch_size=4, num_epochs=1, drop_remainder=False, seed=3)
    dataset = make_dataset(open_source(dataset_dir, "train"), config)  # process index and count from JAX
    indices = [i for batch in _indices(dataset) for i in batch]
    padded = np.full(6, -1, np.int64)
    padded[: len(indices)] = indices
    gathered = multihost_utils.process_allgather(padded)
    Path(out).write_text(json.dumps({"indices": indices, "gathered": np.asarray(gathered).ravel().tolist()}))
    jax.distributed.shutdown()


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
