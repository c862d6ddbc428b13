"""Turns a photo into the two images MagicFace needs: `face.png` (the crop) and `background.png`.

    python -m magicface_jax.preprocess --image photo.jpg --out DIR [--size 512] [--mask person|face]

The largest face is cropped the authors' way; the background condition blacks out the whole person
(`--mask person`, as in the authors' released examples) or only the face parts (`--mask face`, as their
published `retrieve_bg.py`), and adds the 17 jaw-line dots. Needs `pip install 'magicface-jax[faces]'`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from magicface_jax import cli
from magicface_jax.cli import run
from magicface_jax.errors import MagicFaceError

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
    return parser


def _write_pngs(out: Path, images: dict[str, np.ndarray]) -> None:
    """Writes every image to a temporary name in `out`, then renames them all: nothing half-written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MagicFaceError(f"cannot create output folder {out}: {err.strerror or err}") from None
    temporary: dict[str, str] = {}
    try:
        for name, pixels in images.items():
            handle, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
            os.close(handle)
            temporary[name] = path
            Image.fromarray(pixels).save(path, format="PNG")
        for name, path in temporary.items():
            os.replace(path, out / name)
    except OSError as err:
        raise MagicFaceError(f"cannot write into {out}: {err.strerror or err}") from None
    finally:
        for path in temporary.values():
            if os.path.exists(path):
                os.remove(path)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    # Imported here so that `--help` works without the optional face dependencies.
    from magicface_jax.faces.preprocess import preprocess_image
    from magicface_jax.images import load_image

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MagicFaceError(f"--out {out} is a file: give a folder")
    result = preprocess_image(load_image(args.image), size=args.size, mask=args.mask)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    _write_pngs(out, {FACE_FILE: result.face, BACKGROUND_FILE: result.background})
    print(f"wrote {out / FACE_FILE} and {out / BACKGROUND_FILE}")


if __name__ == "__main__":
    sys.exit(run(main))
