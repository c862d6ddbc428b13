"""Convert MagicFace weights between PyTorch and orbax.

PyTorch -> orbax (the authors' release, or a new model initialised from Stable Diffusion for training):
    python convert_weights.py --sd SD_FOLDER_OR_FILE [--magicface RELEASE_DIR] --out CKPT_DIR
orbax -> PyTorch (the authors' layout: ID_enc/, denoising_unet/, vae/):
    python convert_weights.py --to-pytorch --checkpoint CKPT_DIR --out DIR
"""

from __future__ import annotations

import argparse
import sys

from magicface_jax import cli
from magicface_jax.config import AUTHORS_PROMPT
from magicface_jax.convert.convert import STORAGE_DTYPES, to_orbax, to_pytorch
from magicface_jax.errors import MagicFaceError


def parse_args(argv):
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sd", help="Stable Diffusion: a diffusers folder or a single .safetensors/.ckpt file"
    )
    parser.add_argument("--magicface", help="the authors' release folder (ID_enc/ and denoising_unet/)")
    parser.add_argument("--tokenizer", help="a CLIP tokenizer folder (single-file SD with a custom prompt)")
    parser.add_argument("--prompt", default=AUTHORS_PROMPT, help="prompt whose embedding is stored")
    parser.add_argument(
        "--dtype",
        choices=sorted(STORAGE_DTYPES),
        help="storage dtype (default: float32; with --to-pytorch: the checkpoint's)",
    )
    parser.add_argument(
        "--to-pytorch", action="store_true", help="orbax checkpoint -> authors' PyTorch layout"
    )
    parser.add_argument("--checkpoint", help="the orbax checkpoint to export (with --to-pytorch)")
    parser.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.to_pytorch:
        if not args.checkpoint:
            raise MagicFaceError(
                "--to-pytorch needs --checkpoint CKPT_DIR (an orbax checkpoint of this project)"
            )
        to_pytorch(args.checkpoint, args.out, dtype=args.dtype, overwrite=args.overwrite)
        return
    if not args.sd:
        raise MagicFaceError(
            "give --sd (a Stable Diffusion folder or file), or --to-pytorch --checkpoint DIR"
        )
    to_orbax(
        args.sd,
        args.out,
        magicface=args.magicface,
        tokenizer=args.tokenizer,
        prompt=args.prompt,
        dtype=args.dtype or "float32",
        overwrite=args.overwrite,
    )


if __name__ == "__main__":
    sys.exit(cli.run(main))
