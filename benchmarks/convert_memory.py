"""Peak memory and time of `convert_weights.py` on a full-size Stable Diffusion 1.5 (random weights).

    python benchmarks/convert_memory.py [--dtype float16|float32] [--workdir DIR] [--json OUT]

Writes a diffusers SD1.5 folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/: full-size UNet, VAE and
CLIP-L text encoder with random weights, the tests' small byte-level tokenizer) into a temporary folder,
then runs, each in its own process,

    convert_weights.py --sd SD --out CKPT                      (SD -> orbax, MagicFace initialised from SD)
    convert_weights.py --to-pytorch --checkpoint CKPT --out PT (orbax -> the authors' PyTorch layout)

and reports each process's peak RSS against the float32 size of the largest network converted (the
denoiser UNet, ~3.44 GB); the goal is under 2.5x.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common
from magicface_jax.cli import ArgumentParser, run
from magicface_jax.errors import MagicFaceError

REPO = Path(__file__).resolve().parent.parent
GOAL_RATIO = 2.5
# CLIP ViT-L/14's text encoder, as in SD1.5's text_encoder/config.json.
CLIP_L = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dtype", default="float32", help="dtype of the SD folder's weights: float32 (default) or float16"
    )
    parser.add_argument("--workdir", help="folder for the SD folder and the outputs (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the files written")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.dtype not in ("float32", "float16"):
        raise MagicFaceError(f"--dtype {args.dtype!r}: use float32 or float16")
    if args.workdir and not Path(args.workdir).is_dir():
        raise MagicFaceError(f"--workdir {args.workdir}: not an existing folder")
    common.check_json_path(args.json)
    return args


def write_sd_folder(directory: Path, dtype_name: str) -> None:
    """A full-size SD1.5 diffusers folder with random weights, one network in memory at a time."""
    import gc

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from magicface_jax.config import UNetConfig, VAEConfig
    from magicface_jax.diffusion import SD15_SCHEDULER_CONFIG
    from tests.fixtures import tiny_tokenizer

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)

    def diffusers_kwargs(config) -> dict:
        return {k: v for k, v in config.to_diffusers().items() if not k.startswith("_")}

    for sub, build in (
        ("unet", lambda: UNet2DConditionModel(**diffusers_kwargs(UNetConfig()))),
        ("vae", lambda: AutoencoderKL(**diffusers_kwargs(VAEConfig()))),
        ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L))),
    ):
        model = build().to(dtype)
        model.save_pretrained(directory / sub)
        del model
        gc.collect()
    tiny_tokenizer(directory / "tokenizer")
    (directory / "scheduler").mkdir()
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_CONFIG))


def largest_network_bytes() -> tuple[str, int]:
    """Name and float32 size of the largest network of SD1.5 MagicFace (from the name table)."""
    import math

    from magicface_jax.config import sd15_magicface_config
    from magicface_jax.convert.names import network_table

    config = sd15_magicface_config()
    sizes = {
        name: 4 * sum(math.prod(row.flax_shape) for row in network_table(getattr(config, name)))
        for name in ("identity_encoder", "denoiser", "vae")
    }
    name = max(sizes, key=sizes.get)
    return name, sizes[name]


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def convert(arguments: list[str]) -> common.ChildRun:
    run = common.run_child([sys.executable, str(REPO / "convert_weights.py"), *arguments])
    if run.returncode != 0:
        raise RuntimeError(f"convert_weights.py {' '.join(arguments)} failed:\n{run.output}")
    return run


def measure(workdir: Path, dtype: str) -> dict[str, Any]:
    sd, ckpt, exported = workdir / "sd15", workdir / "ckpt", workdir / "pytorch"
    print(f"writing a random full-size SD1.5 ({dtype}) to {sd} ...", flush=True)
    writer = multiprocessing.get_context("spawn").Process(target=write_sd_folder, args=(sd, dtype))
    writer.start()
    writer.join()
    if writer.exitcode != 0:
        raise RuntimeError("writing the SD folder failed")
    name, reference = largest_network_bytes()
    print(
        f"SD folder {common.gib(folder_bytes(sd))} on disk; largest network ({name}) in float32: "
        f"{reference / 1e9:.2f} GB ({common.gib(reference)})",
        flush=True,
    )
    results: dict[str, Any] = {
        "source_dtype": dtype,
        "sd_folder_bytes": folder_bytes(sd),
        "largest_network": name,
        "largest_network_fp32_bytes": reference,
    }
    steps = {
        "to_orbax": ["--sd", str(sd), "--out", str(ckpt)],
        "to_pytorch": ["--to-pytorch", "--checkpoint", str(ckpt), "--out", str(exported)],
    }
    for step, arguments in steps.items():
        run = convert(arguments)
        ratio = run.peak_rss_bytes / reference
        results[step] = {
            "command": " ".join(["python convert_weights.py", *arguments]),
            "seconds": run.seconds,
            "peak_rss_bytes": run.peak_rss_bytes,
            "ratio_to_largest_network": ratio,
            "output_bytes": folder_bytes(ckpt if step == "to_orbax" else exported),
        }
        verdict = "under" if ratio < GOAL_RATIO else "OVER"
        print(
            f"{step}: {run.seconds:.1f} s, peak RSS {common.gib(run.peak_rss_bytes)} = {ratio:.2f}x the "
            f"largest network ({verdict} the {GOAL_RATIO}x goal)",
            flush=True,
        )
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info = common.machine()
    print(f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, load {info['load_average']}")
    workdir = Path(tempfile.mkdtemp(prefix="convert-memory-", dir=args.workdir))
    try:
        results = measure(workdir, args.dtype)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        report = {"command": " ".join(["python", *sys.argv]), "machine": info, **results}
        common.write_json(args.json, report)


if __name__ == "__main__":
    sys.exit(run(main))
