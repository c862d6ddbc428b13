"""Turns a photo into the two images MagicFace needs: `face.png` (the crop) and `background.png`.

    python -m magicface_jax.preprocess --image photo.jpg --out DIR [--size 512] [--mask person|face]

The largest face is cropped the authors' way; the background condition blacks out the whole person
(`--mask person`, as in the authors' released examples) or only the face parts (`--mask face`, as their
published `retrieve_bg.py`), and adds the 17 jaw-line dots. Needs `pip install 'magicface-jax[faces]'`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from magicface_jax import atomic, cli
from magicface_jax.cli import run

FACE_FILE = "face.png"
BACKGROUND_FILE = "background.png"


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m magicface_jax.preprocess",
        description="Crop the largest face of a photo and build its background condition.",
    )
    parser.add_argument("--image", required=True, help="the photo (PNG, JPEG, ...)")
    parser.add_argument("--out", required=True, help="folder to write face.png and background.png into")
    parser.add_argument("--size", type=int, default=512, help="side of the square outputs (default 512)")
    parser.add_argument(
        "--mask",
        choices=("person", "face"),
        default="person",
        help="black out the whole person (default, as the authors' examples) or only the face parts",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace face.png and background.png if they exist"
    )
    return parser


def _check_outputs(out: Path, names: Sequence[str], inputs: Sequence[str], overwrite: bool) -> None:
    """Both images' paths, checked before any work (see `atomic.check_output`)."""
    for name in names:
        atomic.check_output(out / name, inputs, overwrite=overwrite)


def _write_pngs(
    out: Path, images: dict[str, np.ndarray], overwrite: bool = False, inputs: Sequence[str] = ()
) -> None:
    """Writes every image under a partial name in `out`, then renames them all: nothing half-written."""
    with contextlib.ExitStack() as stack:
        partials = {
            name: stack.enter_context(atomic.atomic_file(out / name, overwrite, inputs=inputs))
            for name in images
        }
        for name, pixels in images.items():
            Image.fromarray(pixels).save(partials[name], format="PNG")


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    # Imported here so that `--help` works without the optional face dependencies.
    from magicface_jax.faces.preprocess import preprocess_image
    from magicface_jax.images import load_image

    out = atomic.user_path(args.out)
    names, inputs = (FACE_FILE, BACKGROUND_FILE), (args.image,)
    photo = load_image(args.image)
    _check_outputs(out, names, inputs, args.overwrite)
    result = preprocess_image(photo, size=args.size, mask=args.mask)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    _write_pngs(out, dict(zip(names, (result.face, result.background), strict=True)), args.overwrite, inputs)
    print(f"wrote {out / FACE_FILE} and {out / BACKGROUND_FILE}")


if __name__ == "__main__":
    sys.exit(run(main))
