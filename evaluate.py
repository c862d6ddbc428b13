"""Measure a MagicFace checkpoint on held-out pairs with the paper's four metrics (AU MSE, ID L2, background
RMSE, head-pose RMSE), next to the no-edit baseline (the source returned unchanged).

Synthetic faces (the estimator from python -m magicface_jax.evaluation.train_estimator):
    python evaluate.py --checkpoint CKPT --dataset synthetic_faces/64px --data-dir DIR --estimator EST
Photographs (magicface_pairs; dlib identity and pose; AUs from OpenFace 2.0 CSVs, else a landmark proxy):
    python evaluate.py --checkpoint CKPT --dataset magicface_pairs/default --data-dir DIR --save-edits EDITS
    FaceLandmarkImg -fdir EDITS -aus -out_dir OPENFACE      # OpenFace 2.0, run by you
    python evaluate.py ... --openface OPENFACE

Each setting (every combination of --sampler, --steps, --guidance) edits each pair's identity image by
the pair's AU variation with its own background condition. The fewest steps at the quality of 50 UniPC
steps (the authors' sampler and steps):
    python evaluate.py ... --steps 10 15 20 25 --sampler unipc ddim dpm++ --reference unipc:50:3
See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from magicface_jax import cli
from magicface_jax.atomic import atomic_file, check_output
from magicface_jax.checkpoint import read_info
from magicface_jax.diffusion import SAMPLERS
from magicface_jax.errors import MagicFaceError


def parse_args(argv) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        prog="evaluate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="a MagicFace checkpoint directory")
    parser.add_argument("--dataset", required=True, help="e.g. synthetic_faces/64px, or a dataset folder")
    parser.add_argument("--data-dir", help="the tensorflow-datasets data dir holding --dataset")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num", type=int, default=None, help="pairs to evaluate (default: the whole split)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[50])
    parser.add_argument("--sampler", nargs="+", default=["unipc"], choices=SAMPLERS)
    parser.add_argument(
        "--reference",
        metavar="SAMPLER:STEPS:GUIDANCE",
        help="compare every setting with this one (evaluated too), e.g. unipc:50:3: each metric's "
        "difference with its paired bootstrap error, and the fewest steps of equal quality",
    )
    parser.add_argument("--estimator", help="synthetic datasets: the trained synthetic estimator's folder")
    parser.add_argument("--openface", help="photographs: a folder of OpenFace 2.0 CSVs, NAME.csv per edit")
    parser.add_argument("--save-edits", help="a new folder for every edit (NAME_SETTING.png)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the report to this file")
    return parser.parse_args(argv)


def check_json_path(path: str) -> None:
    if not Path(path).resolve().parent.is_dir():
        raise MagicFaceError(f"--json {path}: its folder does not exist")


def parse_reference(text: str):
    """SAMPLER:STEPS:GUIDANCE -> runner.Setting."""
    from magicface_jax.evaluation.runner import Setting

    parts = text.split(":")
    try:
        sampler, steps, guidance = parts[0], int(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        raise MagicFaceError(
            f"--reference {text}: expected SAMPLER:STEPS:GUIDANCE, e.g. unipc:50:3"
        ) from None
    if len(parts) != 3 or sampler not in SAMPLERS or steps < 1:
        raise MagicFaceError(
            f"--reference {text}: expected SAMPLER:STEPS:GUIDANCE with a sampler of {', '.join(SAMPLERS)} "
            "and steps ≥ 1, e.g. unipc:50:3"
        )
    return Setting(sampler, steps, guidance)


def main(argv=None) -> None:
    args = parse_args(argv)
    from magicface_jax.evaluation import photos, runner
    from magicface_jax.pipeline import MagicFacePipeline

    if args.num is not None and args.num < 1:
        raise MagicFaceError(f"--num must be ≥ 1, got {args.num}")
    reference = parse_reference(args.reference) if args.reference else None
    if args.json:
        check_json_path(args.json)
    if args.save_edits:
        check_output(args.save_edits, [args.checkpoint], folder=True)
    read_info(args.checkpoint)  # a missing or broken checkpoint fails before any data is read
    openface = photos.OpenFaceAUs(args.openface) if args.openface else None  # checks every CSV
    kind = runner.dataset_kind(args.dataset, args.split, args.data_dir)
    estimators, photo_faces = runner.estimators_for(kind, args.estimator, openface)
    pairs = runner.load_pairs(args.dataset, args.split, args.data_dir, args.num, photo_faces)
    pipe = MagicFacePipeline.from_pretrained(args.checkpoint)
    settings = [
        runner.Setting(sampler, steps, guidance)
        for sampler, steps, guidance in itertools.product(args.sampler, args.steps, args.guidance)
    ]
    if reference is not None and reference not in settings:
        settings.append(reference)
    print(f"{len(pairs)} pairs of {args.dataset} ({args.split}), {len(settings)} setting(s)")
    save_edits = Path(args.save_edits) if args.save_edits else None
    report = runner.evaluate(
        pipe, pairs, settings, estimators, args.seed, args.batch_size, save_edits, reference=reference
    )
    report |= {"checkpoint": str(args.checkpoint), "dataset": str(args.dataset), "split": args.split}
    if args.json:
        with atomic_file(args.json) as partial:
            partial.write_text(json.dumps(report, indent=2))
        print(f"report -> {args.json}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
