"""Edit the expression of a face by Action Units with a MagicFace checkpoint.

One edit:
    python sample.py --checkpoint CKPT --image face.png --background bg.png --au AU4=+4,AU1=+2
The authors' flags work too:
    python sample.py --checkpoint CKPT --img_path a.png --bg_path b.png --au_test AU4+AU1 --AU_variation 4+2
A grid of AU sweeps (one row per --sweep: the source, then one column per intensity):
    python sample.py --checkpoint CKPT --image face.png --background bg.png --sweep AU12=-6:6:7
Many edits from a JSON Lines file, in batches over every device:
    python sample.py --checkpoint CKPT --edits edits.jsonl
The demo (a MagicFace trained on synthetic faces and a portrait it never saw, both shipped; a grid of AU
sweeps):
    python sample.py --demo

Without --background the background condition is computed from the face (needs the faces extra).
See docs/sampling.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from magicface_jax import cache, checkpoint, cli, demo
from magicface_jax.diffusion import SAMPLERS
from magicface_jax.editing import commands
from magicface_jax.editing.inputs import EditSettings, resolve_edit
from magicface_jax.editing.sweep import Sweep
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces import emotions
from magicface_jax.pipeline import COMPUTE_DTYPES, DEFAULT_GUIDANCE, check_seed

DEFAULT_SEED = 424  # the authors' script's
DEFAULT_SAVED_PATH = "edited_images"  # the authors' script's output folder
# The authors' model flags: this tool reads one converted checkpoint instead.
AUTHORS_MODEL_FLAGS = ("--pretrained_model_name_or_path", "--denoising_unet_path", "--ID_unet_path")


def parse_args(argv) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        prog="sample.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--checkpoint", help="a checkpoint made by convert_weights.py")
    inputs.add_argument("--image", "--img_path", dest="image", help="the face crop (PNG, JPEG, ...)")
    inputs.add_argument(
        "--background", "--bg_path", dest="background", help="its background condition (default: computed)"
    )
    inputs.add_argument("--au", help="the AU variation, e.g. AU4=+4,AU1=+2 (positive = stronger)")
    inputs.add_argument(
        "--emotion",
        metavar="NAME[:INTENSITY]",
        help=f"an emotion preset, e.g. happiness:4 ({', '.join(emotions.EMOTIONS)}; default intensity "
        f"{emotions.DEFAULT_INTENSITY:g}); an AU also given by --au takes the --au value",
    )
    inputs.add_argument("--au_test", help="the authors' form: the AUs, e.g. AU4+AU1 (with --AU_variation)")
    inputs.add_argument("--AU_variation", help="the authors' form: their variations, e.g. 4+2")
    inputs.add_argument(
        "--sweep",
        action="append",
        metavar="AU=START:STOP:COUNT",
        help="write a grid sweeping one AU, e.g. AU12=-6:6:7 (repeat for more rows; an --au edit applies "
        "to every column)",
    )
    inputs.add_argument("--edits", metavar="FILE.jsonl", help="run every edit of a JSON Lines file")
    inputs.add_argument(
        "--demo",
        action="store_true",
        help="defaults for the demo: the shipped model trained on synthetic faces, a shipped portrait, and "
        f"the sweeps {' '.join(demo.DEMO_SWEEPS)}",
    )
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument(
        "--steps",
        "--inference_steps",
        dest="steps",
        type=int,
        help="sampling steps (default: the steps measured for the checkpoint, which it records; else the "
        f"authors' {checkpoint.AUTHORS_STEPS})",
    )
    sampling.add_argument(
        "--guidance",
        type=float,
        default=DEFAULT_GUIDANCE,
        help=f"AU guidance scale (default {DEFAULT_GUIDANCE}, the paper's best; the authors' script: 1.5)",
    )
    sampling.add_argument("--sampler", choices=SAMPLERS, default="unipc", help="default: unipc, the authors'")
    sampling.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"initial noise seed (default {DEFAULT_SEED})"
    )
    sampling.add_argument("--dtype", choices=COMPUTE_DTYPES, help="compute dtype override")
    sampling.add_argument(
        "--size",
        type=int,
        help="resize the face and background (square) to SIZE x SIZE first; a multiple of 64 for SD1.5",
    )
    sampling.add_argument(
        "--mask",
        choices=("person", "face"),
        default="person",
        help="what a computed background blacks out (default person, as the authors' examples)",
    )
    sampling.add_argument(
        "--batch-size",
        type=int,
        help="edits per batch with --edits or --sweep (default: one per device)",
    )
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--out", help="output image (default: SAVED_PATH/<image name>, or <stem>_sweep.png)")
    outputs.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output images that exist already (default: refuse them; --demo replaces its own "
        "default output)",
    )
    outputs.add_argument(
        "--saved_path",
        default=DEFAULT_SAVED_PATH,
        help=f"output folder without --out (default {DEFAULT_SAVED_PATH})",
    )
    outputs.add_argument(
        "--compilation-cache",
        metavar="DIR",
        help=cache.COMPILATION_CACHE_HELP,
    )
    for flag in AUTHORS_MODEL_FLAGS:
        parser.add_argument(flag, dest=f"authors{flag}", help=argparse.SUPPRESS)
    outputs.add_argument("--no-progress", action="store_true", help="no progress bar with --edits")
    return parser.parse_args(argv)


def _check_flags(args: argparse.Namespace) -> None:
    """Flags that do not go together, and the authors' model flags (which this tool does not read)."""
    for flag in AUTHORS_MODEL_FLAGS:
        if getattr(args, f"authors{flag}") is not None:
            raise MagicFaceError(
                f"{flag} is the authors' script's: this tool reads one converted checkpoint; make it with "
                "python convert_weights.py --sd SD15 --magicface RELEASE --out CKPT, then --checkpoint CKPT"
            )
    if args.edits is not None:
        per_edit = {
            "--image": args.image,
            "--background": args.background,
            "--au": args.au,
            "--emotion": args.emotion,
            "--au_test": args.au_test,
            "--AU_variation": args.AU_variation,
            "--sweep": args.sweep,
            "--out": args.out,
        }
        given = [flag for flag, value in per_edit.items() if value is not None]
        if given:
            raise MagicFaceError(f"--edits takes every edit from its file: drop {', '.join(given)}")
    elif args.batch_size is not None and not args.sweep:
        raise MagicFaceError("--batch-size goes with --edits FILE.jsonl or --sweep")


def _apply_demo_defaults(args: argparse.Namespace) -> None:
    """--demo fills in what was not given: the shipped model, the portrait (with its background) and the
    AU sweeps."""
    if args.checkpoint is None:
        print(demo.describe())
        demo.prefer_fast_compilation()
        args.checkpoint = str(demo.DEMO_MODEL)
    if args.edits is not None:
        return
    if args.image is None:
        args.image = str(demo.DEMO_IMAGE)
        if args.background is None:
            args.background = str(demo.DEMO_BACKGROUND)
    edit_given = (args.au, args.au_test, args.AU_variation, args.emotion, args.sweep)
    if all(not given for given in edit_given):
        args.sweep = list(demo.DEMO_SWEEPS)
        args.batch_size = args.batch_size or demo.DEMO_BATCH
    if args.out is None:
        args.overwrite = True  # running the demo again replaces its own image, never a file the user named


def _steps(args: argparse.Namespace) -> int:
    """--steps, else the steps the checkpoint records as measured for it (the authors' 50 if none)."""
    if args.steps is not None:
        return args.steps
    if args.checkpoint is None:  # refused when the checkpoint is checked, with the message for that
        return checkpoint.AUTHORS_STEPS
    return checkpoint.read_info(args.checkpoint).default_steps


def _output(args: argparse.Namespace, suffix: str = "") -> str:
    if args.out is not None:
        return args.out
    name = Path(args.image)
    return str(Path(args.saved_path) / (f"{name.stem}{suffix}{name.suffix}" if suffix else name.name))


def main(argv=None) -> None:
    args = parse_args(argv)
    _check_flags(args)
    if args.demo:
        _apply_demo_defaults(args)
    settings = EditSettings(
        steps=_steps(args),
        guidance=args.guidance,
        sampler=args.sampler,
    )
    seed = check_seed(args.seed)
    edit = resolve_edit(args.au, args.au_test, args.AU_variation)
    if args.emotion is not None:
        edit = {**emotions.parse_emotion(args.emotion), **(edit or {})}
    sweeps = [Sweep.parse(spec) for spec in args.sweep or ()]
    if args.edits is None and args.image is None:
        raise MagicFaceError("give --image FACE (a face crop), --edits FILE.jsonl, or --demo")
    if args.edits is None and not sweeps and edit is None:
        raise MagicFaceError(
            "give the edit: --au AU4=+4,AU1=+2, --emotion happiness:4, "
            "or --au_test AU4+AU1 --AU_variation 4+2"
        )
    xla_cache = cache.enable_compilation_cache(args.compilation_cache)
    if xla_cache:
        print(f"compilation cache: {xla_cache}")
    options = {"dtype": args.dtype, "size": args.size, "mask": args.mask, "overwrite": args.overwrite}

    if args.edits is not None:
        commands.edit_file(
            args.checkpoint,
            args.edits,
            settings,
            seed,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            **options,
        )
    elif sweeps:
        commands.edit_sweep(
            args.checkpoint, args.image, args.background, sweeps, edit or {}, _output(args, "_sweep"),
            settings, seed, batch_size=args.batch_size, **options,
        )  # fmt: skip
    else:
        commands.edit_image(
            args.checkpoint, args.image, args.background, edit, _output(args), settings, seed, **options
        )


if __name__ == "__main__":
    sys.exit(cli.run(main))
