"""Measures the data side: synthetic_faces build time per 1000 pairs, the per-example decode cost, and the
examples/s the grain pipeline delivers from memory and from array_record files.

    python benchmarks/data_pipeline.py --resolution 128 --build-pairs 200 --workers 2
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time

from magicface_jax.data.pipeline import InputConfig, decode, make_dataset, open_source, synthetic_source
from magicface_jax.data.synthetic_faces import SyntheticFaces, SyntheticFacesConfig, SyntheticFacesSpec


def _build(resolution: int, pairs: int, workers: int, data_dir: str) -> tuple[float, str]:
    spec = SyntheticFacesSpec(resolution=resolution, train_pairs=pairs, test_pairs=0)
    builder = SyntheticFaces(config=SyntheticFacesConfig(spec), data_dir=data_dir, workers=workers)
    start = time.perf_counter()
    builder.download_and_prepare()
    return time.perf_counter() - start, str(builder.data_dir)


def _decode_ms(source, count: int) -> float:
    records = [source[i] | {"index": i} for i in range(count)]
    start = time.perf_counter()
    for record in records:
        decode(record)
    return (time.perf_counter() - start) / count * 1e3


def _examples_per_second(source, config: InputConfig, batches: int) -> float:
    iterator = iter(make_dataset(source, config, 0, 1))
    next(iterator)  # start-up (threads, worker processes) is not throughput
    start = time.perf_counter()
    for _ in itertools.islice(iterator, batches):
        pass
    seconds = time.perf_counter() - start
    iterator.close()
    return batches * config.global_batch_size / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=128, choices=(64, 128, 512))
    parser.add_argument("--build-pairs", type=int, default=200, help="0 skips the build")
    parser.add_argument("--workers", type=int, default=2, help="build processes")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    size = args.resolution

    source = synthetic_source(resolution=size, length=100_000, distinct=16)
    print(f"decode + normalize, one thread: {_decode_ms(source, 16):.2f} ms per example at {size}²")
    for threads, workers in ((1, 0), (2, 0), (4, 0), (1, 2)):
        config = InputConfig(global_batch_size=args.batch_size, read_threads=threads, workers=workers)
        rate = _examples_per_second(source, config, args.batches)
        print(f"in memory, {threads} read threads, {workers} worker processes: {rate:.0f} examples/s")

    if args.build_pairs:
        with tempfile.TemporaryDirectory() as data_dir:
            seconds, path = _build(size, args.build_pairs, args.workers, data_dir)
            per_1000 = seconds / args.build_pairs * 1000
            print(
                f"build synthetic_faces {size}², {args.build_pairs} pairs, {args.workers} processes: "
                f"{seconds:.1f} s = {per_1000:.0f} s per 1000 pairs"
            )
            disk = open_source(path, "train")
            config = InputConfig(global_batch_size=args.batch_size, read_threads=2)
            rate = _examples_per_second(
                disk, config, min(args.batches, args.build_pairs // args.batch_size - 1)
            )
            print(f"array_record on local disk, 2 read threads: {rate:.0f} examples/s")


if __name__ == "__main__":
    main()
