"""Builds a dataset into a tensorflow-datasets data dir (array_record files, read without TensorFlow).

python -m magicface_jax.data.build synthetic_faces --resolution 128 --num-pairs 2000 --data-dir DIR
python -m magicface_jax.data.build magicface_pairs --images FRAMES --labels LABELS --data-dir DIR
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from magicface_jax import atomic, cli
from magicface_jax.cli import run
from magicface_jax.data import pairing
from magicface_jax.data.magicface_pairs import REPORT_NAME, MagicfacePairs, MagicfacePairsConfig, PairsSpec
from magicface_jax.data.synthetic_faces import (
    RESOLUTIONS,
    SyntheticFaces,
    SyntheticFacesSpec,
    builder_config,
)
from magicface_jax.errors import MagicFaceError


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m magicface_jax.data.build", description=__doc__.split("\n")[0])
    kinds = parser.add_subparsers(dest="dataset", required=True)

    synthetic = kinds.add_parser("synthetic_faces", help="procedural faces with exact AU ground truth")
    synthetic.add_argument("--resolution", type=int, default=128, choices=RESOLUTIONS)
    synthetic.add_argument("--num-pairs", type=int, default=2000, help="train pairs")
    synthetic.add_argument("--num-test-pairs", type=int, default=None, help="default: a tenth of --num-pairs")
    synthetic.add_argument("--pairs-per-identity", type=int, default=4)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument(
        "--same-pose-and-scene",
        action="store_true",
        help="targets keep the identity image's pose and scene (default: both differ, as in the paper)",
    )
    synthetic.add_argument(
        "--face-scale",
        type=float,
        default=1.0,
        help="the face's size in the image (1: about 0.46 of its width)",
    )

    pairs = kinds.add_parser(
        "magicface_pairs", help="pairs of one person's images from a folder with AU labels"
    )
    pairs.add_argument("--images", required=True, help="image folder, one sub-folder per person")
    pairs.add_argument(
        "--labels", required=True, help="CSV file,AU1,...,AU26 or a folder of OpenFace 2.0 CSVs"
    )
    pairs.add_argument("--identity-column", default=None, help="CSV column naming the person")
    pairs.add_argument("--resolution", type=int, default=512)
    pairs.add_argument("--mask", choices=("person", "face"), default="person")
    pairs.add_argument(
        "--min-au-change", type=float, default=1.0, help="largest |target − identity| of a pair"
    )
    pairs.add_argument("--max-pairs-per-identity", type=int, default=100)
    pairs.add_argument("--test-fraction", type=float, default=0.1, help="share of persons in the test split")
    pairs.add_argument("--validation-fraction", type=float, default=0.0)
    pairs.add_argument("--seed", type=int, default=0)
    pairs.add_argument("--name", default="default", help="config name: magicface_pairs/NAME")

    for sub in (synthetic, pairs):
        sub.add_argument("--data-dir", required=True, help="tensorflow-datasets data dir to build into")
        sub.add_argument("--workers", type=int, default=1, help="processes that render or preprocess")
    return parser


def _builder(args: argparse.Namespace):
    if args.dataset == "synthetic_faces":
        test = args.num_pairs // 10 if args.num_test_pairs is None else args.num_test_pairs
        spec = SyntheticFacesSpec(
            resolution=args.resolution,
            train_pairs=args.num_pairs,
            test_pairs=test,
            pairs_per_identity=args.pairs_per_identity,
            seed=args.seed,
            same_pose_and_scene=args.same_pose_and_scene,
            face_scale=args.face_scale,
        )
        return SyntheticFaces(config=builder_config(spec), data_dir=args.data_dir, workers=args.workers)
    config = pairing.PairingConfig(
        min_au_change=args.min_au_change,
        max_pairs_per_identity=args.max_pairs_per_identity,
        test_fraction=args.test_fraction,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
    )
    spec = PairsSpec(args.images, args.labels, args.identity_column, args.resolution, args.mask, config)
    return MagicfacePairs(
        config=MagicfacePairsConfig(spec, args.name), data_dir=args.data_dir, workers=args.workers
    )


def _check_output(builder, args: argparse.Namespace) -> Path:
    """The dataset's own folder (DATA_DIR/NAME/CONFIG/VERSION), checked against the inputs and for being
    creatable before any work: the data dir itself may hold other datasets and the inputs."""
    output = Path(builder.data_dir)
    inputs = (args.images, args.labels) if args.dataset == "magicface_pairs" else ()
    atomic.check_not_an_input(output, inputs)
    atomic.check_location(output)
    return output


def remove_incomplete(output: Path) -> list[Path]:
    """Removes the partial folders tensorflow-datasets left beside `output` when a build of it was killed
    (call it holding `atomic.exclusive(output)`)."""
    pattern = re.compile(rf"^incomplete\.[A-Z0-9]{{6}}_{re.escape(output.name)}$")
    leftovers = [entry for entry in output.parent.iterdir() if pattern.match(entry.name)]
    for entry in leftovers:
        shutil.rmtree(entry, ignore_errors=True)
    return leftovers


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.workers < 1:
        raise MagicFaceError(f"--workers must be at least 1, got {args.workers}")
    for name in ("data_dir", "images", "labels"):
        if getattr(args, name, None) is not None:
            setattr(args, name, str(atomic.user_path(getattr(args, name))))
    builder = _builder(args)
    output = _check_output(builder, args)
    start = time.perf_counter()
    atomic.make_folder(output.parent)
    with atomic.exclusive(output):
        for leftover in remove_incomplete(output):
            print(f"removed {leftover}, left by an interrupted build")
        builder.download_and_prepare()
    seconds = time.perf_counter() - start
    splits = ", ".join(f"{name} {info.num_examples}" for name, info in sorted(builder.info.splits.items()))
    print(f"{builder.info.full_name}: {splits} examples in {seconds:.1f} s -> {builder.data_dir}")
    report = Path(builder.data_dir) / REPORT_NAME
    if report.exists():
        print(f"build report: {report}")
    if getattr(builder, "report", None) is not None:
        print(builder.report.summary())


if __name__ == "__main__":
    sys.exit(run(main))
