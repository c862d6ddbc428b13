"""Serves the face-editing page.

    python -m magicface_jax.app [--checkpoint DIR] [--host 127.0.0.1] [--port 7860]

Without --checkpoint it serves the shipped demo model (MagicFace trained on synthetic faces, no download)
at the demo's size. It listens on 127.0.0.1 unless given another --host. See docs/app.md.
"""

from __future__ import annotations

import argparse
import sys
import time

from magicface_jax import cache, checkpoint, cli, demo
from magicface_jax.app import controls
from magicface_jax.app.server import DEFAULT_HOST, DEFAULT_PORT, launch
from magicface_jax.app.service import EditService, Limits
from magicface_jax.editing.inputs import EditSettings
from magicface_jax.errors import MagicFaceError

SIZE = 512  # MagicFace's training size


def parse_args(argv) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m magicface_jax.app", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--checkpoint", help="a checkpoint made by convert_weights.py (default: the demo's)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument(
        "--size", type=int, help=f"side of the face crops edited, a multiple of 64 (default {SIZE}; demo: "
        f"{demo.DEMO_SIZE})",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=int, help="default sampling steps (default: the steps measured for the checkpoint, "
        f"which it records; else the authors' {checkpoint.AUTHORS_STEPS})",
    )  # fmt: skip
    parser.add_argument("--devices", type=int, help="edit on the first N local devices (default: all)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype override")
    parser.add_argument(
        "--max-waiting", type=int, default=Limits.max_waiting,
        help="edits that may wait for a device; more are told the server is busy "
        f"(default {Limits.max_waiting})",
    )  # fmt: skip
    parser.add_argument(
        "--compilation-cache", metavar="DIR", help=f"JAX's persistent compilation cache, or '{cache.OFF}'"
    )
    return parser.parse_args(argv)


def _check(args: argparse.Namespace) -> None:
    if args.size is not None and (args.size < 64 or args.size % 64):
        raise MagicFaceError(f"--size {args.size} is not a multiple of 64 of at least 64 (MagicFace: 512)")
    if args.steps is not None and not 1 <= args.steps <= controls.MAX_STEPS:
        raise MagicFaceError(f"--steps {args.steps}: give 1 to {controls.MAX_STEPS}")
    if not 0 < args.port < 65536:
        raise MagicFaceError(f"--port {args.port} is not a port number (1..65535)")
    if args.max_waiting < 0:
        raise MagicFaceError(f"--max-waiting must be ≥ 0, got {args.max_waiting}")


def main(argv=None) -> None:
    args = parse_args(argv)
    _check(args)
    notice = None
    if args.checkpoint is None:
        notice = demo.describe()
        demo.prefer_fast_compilation()
        args.checkpoint = demo.DEMO_MODEL
        args.size = args.size or demo.DEMO_SIZE
        print(f"note: {notice}", file=sys.stderr)
    settings = None if args.steps is None else EditSettings(steps=args.steps)
    cache.enable_compilation_cache(args.compilation_cache)
    start = time.perf_counter()
    service = EditService.from_checkpoint(
        args.checkpoint, args.size or SIZE, settings, num_devices=args.devices, dtype=args.dtype,
        limits=Limits(max_waiting=args.max_waiting),
    )  # fmt: skip
    print(
        f"loaded {args.checkpoint} on {len(service.devices)} device(s) in {time.perf_counter() - start:.1f} s"
    )
    service.warm_up()
    size = f"{service.size}x{service.size}"
    print(f"serving http://{args.host}:{args.port}/ (compiling the {size} program meanwhile)")
    launch(service, args.host, args.port, notice)


if __name__ == "__main__":
    sys.exit(cli.run(main))
