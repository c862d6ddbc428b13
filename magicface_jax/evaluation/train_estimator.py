"""Trains the synthetic estimator on rendered `synthetic_faces` train pairs and measures it on test pairs.

python -m magicface_jax.evaluation.train_estimator --resolution 64 --train-pairs 1500 --steps 2500 --out DIR

The images are rendered from the spec (a pure function of resolution and seed), so no built dataset is
needed; the test split's persons are never seen in training. With `--vae DIR` (a frozen VAE exported by
`benchmarks/synthetic_vae.py`, or a MagicFace checkpoint of the synthetic world, whose VAE is taken), each
image's round trip through that VAE is trained on too, so that edits, which every VAE returns blurred, are
read as the faces themselves. Writes DIR (estimator.json with the
held-out errors, params.msgpack) and prints the held-out errors next to a constant predictor's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from magicface_jax import cli
from magicface_jax.atomic import check_output
from magicface_jax.data.synthetic_faces import RESOLUTIONS, SyntheticFacesSpec
from magicface_jax.evaluation import synthetic
from magicface_jax.training import autoencoder


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m magicface_jax.evaluation.train_estimator", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--resolution", type=int, default=64, choices=RESOLUTIONS)
    parser.add_argument("--train-pairs", type=int, default=1500)
    parser.add_argument("--test-pairs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument(
        "--face-scale", type=float, default=1.0, help="the synthetic_faces world's face size in the image"
    )
    parser.add_argument("--seed", type=int, default=0, help="the synthetic_faces seed and the training seed")
    parser.add_argument(
        "--vae",
        default=None,
        help="a frozen synthetic VAE (benchmarks/synthetic_vae.py's OUT/export) or a MagicFace checkpoint "
        "whose VAE is taken: train on each image's round trip through it too",
    )
    parser.add_argument("--out", required=True, help="new directory for the estimator")
    parser.add_argument("--overwrite", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    check_output(args.out, overwrite=args.overwrite, folder=True, inputs=[args.vae])
    spec = SyntheticFacesSpec(resolution=args.resolution, seed=args.seed, face_scale=args.face_scale)
    reconstruct = (
        None if args.vae is None else autoencoder.round_trip(args.vae, args.resolution, args.face_scale)
    )
    start = time.perf_counter()
    train = synthetic.labelled_images(synthetic.rendered_records(spec, "train", args.train_pairs))
    test = synthetic.labelled_images(synthetic.rendered_records(spec, "test", args.test_pairs))
    seconds = time.perf_counter() - start
    print(f"rendered {len(train.images)} train and {len(test.images)} test images in {seconds:.0f} s")
    config = synthetic.RegressorConfig(
        crop=synthetic.face_crop(args.face_scale), input_size=args.input_size, seed=args.seed
    )
    estimator = synthetic.train_estimator(config, train, test, args.steps, reconstruct=reconstruct)
    estimator.save(args.out, overwrite=args.overwrite)
    print(json.dumps(estimator.held_out(), indent=2))
    print(f"estimator -> {args.out}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
