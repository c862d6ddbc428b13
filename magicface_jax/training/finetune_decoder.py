"""Sharpens the decoder of a synthetic world's frozen VAE: the decoder alone trains, the encoder stays as it
is, so the latents, their scaling and a MagicFace trained on them stay valid (SD's ft-EMA and ft-MSE VAEs
were made so). Writes a copy of the checkpoint that differs only in the VAE's decoder.

    python -m magicface_jax.training.finetune_decoder --vae CKPT --out runs/decoder --steps 400

CKPT is a MagicFace checkpoint (its VAE is taken) or a VAE export (`autoencoder.export_vae`). The decoder
trains on both images of `--pairs` train pairs of the synthetic_faces world the VAE learnt (its resolution
and face scale), L1 as in `autoencoder`. OUT holds the training state (rerunning the command resumes it),
OUT/export the result (a checkpoint of CKPT's kind), OUT/result.json the held-out error before and after,
and OUT/reconstruction.png a few held-out faces: original, before, after.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from magicface_jax import atomic, checkpoint, cli
from magicface_jax.data.synthetic_faces import SyntheticFacesSpec
from magicface_jax.errors import MagicFaceError
from magicface_jax.training import autoencoder

EXPORT = "export"
RESULT = "result.json"
PICTURE = "reconstruction.png"
PICTURE_FACES = 4


def decoder_config(vae: autoencoder.ExportedVAE, **settings) -> autoencoder.AutoencoderTrainConfig:
    """The training config of a decoder-only run on `vae` (`settings`: steps, learning_rate, ...): it
    decodes posterior means, what a MagicFace trained on them produces."""
    return autoencoder.AutoencoderTrainConfig(
        vae=vae.config,
        resolution=vae.config.sample_size,
        train_encoder=False,
        sample_posterior=False,
        **settings,
    )


def held_out_error(images: np.ndarray, recons: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """Mean |reconstruction − original| (0–255) over whole images and over their faces."""
    error = np.abs(recons.astype(np.float64) - images).mean(-1)
    return {"image": float(error.mean()), "face": float(error[masks].mean())}


def with_decoder(vae_params: dict, trained: dict) -> dict:
    """`vae_params` with the decoder's parts taken from `trained` and the encoder's kept as they were."""
    kept = autoencoder.ENCODER_PARTS
    return {part: tree if part in kept else trained[part] for part, tree in vae_params.items()}


def write_checkpoint(source_dir: Path, vae_params: dict, out: Path, record: dict) -> None:
    """A copy of the MagicFace checkpoint `source_dir` whose VAE is `vae_params`, its provenance extended
    by `record` (under "vae_decoder")."""
    info = checkpoint.read_info(source_dir)
    with checkpoint.writing_checkpoint(out, overwrite=True, inputs=[source_dir]) as writer:
        writer.copy_from(source_dir, replaced={"vae": vae_params})
        writer.finish(dataclasses.replace(info, source={**info.source, "vae_decoder": record}))


def picture(images: np.ndarray, before: np.ndarray, after: np.ndarray, path: Path) -> None:
    """Rows of original | before | after, at twice the size, written atomically."""
    rows = [np.concatenate(faces, axis=1) for faces in zip(images, before, after, strict=True)]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid = grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST)
    with atomic.atomic_file(path, overwrite=True) as partial:
        grid.save(partial, format="PNG")


def finetune_decoder(
    vae_dir: str | Path,
    out: str | Path,
    pairs: int = 1000,
    test_pairs: int = 32,
    seed: int = 0,
    time_limit_s: float | None = None,
    log: Callable[[str], None] = print,
    **settings,
) -> dict:
    """Trains the decoder of the VAE in `vae_dir` (resuming under `out`), writes OUT/export, the result and
    the picture; returns the result."""
    vae_dir, out = Path(vae_dir), Path(out)
    vae = autoencoder.frozen_vae(vae_dir)
    is_checkpoint = not autoencoder.is_vae_export(vae_dir)
    # An earlier run's export, of the input's kind, is replaced; anything else there is refused.
    manifest = checkpoint.EARLIER_CHECKPOINT if is_checkpoint else autoencoder.EXPORT_MANIFEST
    if out.is_file():
        raise MagicFaceError(f"--out {out} is a file; give a folder (it is created, or resumed)")
    atomic.check_not_an_input(out, [vae_dir])
    export = atomic.check_output(out / EXPORT, [vae_dir], overwrite=True, folder=True, manifest=manifest)
    config = decoder_config(vae, seed=seed, **settings)
    face_scale = 1.0 if vae.face_scale is None else vae.face_scale
    spec = SyntheticFacesSpec(resolution=config.resolution, seed=seed, face_scale=face_scale)
    start = time.perf_counter()
    train_images = autoencoder.synthetic_images(spec, "train", pairs)
    test_images, test_masks = autoencoder.synthetic_images(spec, "test", test_pairs)
    seconds = time.perf_counter() - start
    log(f"rendered {len(train_images[0])} train and {len(test_images)} test images in {seconds:.0f} s")
    recons_before = autoencoder.reconstruct(vae.config, vae.params, test_images)
    before = held_out_error(test_images, recons_before, test_masks)
    state = autoencoder.train(config, train_images, out, log=log, time_limit_s=time_limit_s, start=vae.params)
    params = with_decoder(vae.params, jax.device_get(state.params))  # host arrays, as the others are
    recons_after = autoencoder.reconstruct(vae.config, params, test_images)
    after = held_out_error(test_images, recons_after, test_masks)
    record = {
        "steps": int(state.step),
        "of_steps": config.steps,
        "learning_rate": config.learning_rate,
        "train_pairs": pairs,
        "held_out_abs_error_255": {"before": before, "after": after, "test_pairs": test_pairs},
    }
    if is_checkpoint:
        write_checkpoint(vae_dir, params, export, record)
    else:
        steps_before = vae.steps or 0
        autoencoder.export_vae(
            export, config, params, train_images[0][:256], steps_before + int(state.step), True, face_scale
        )
    shown = slice(PICTURE_FACES)
    picture(test_images[shown], recons_before[shown], recons_after[shown], out / PICTURE)
    with atomic.atomic_file(out / RESULT, overwrite=True) as partial:
        partial.write_text(json.dumps(record, indent=2))
    return record


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m magicface_jax.training.finetune_decoder", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--vae", required=True, help="a MagicFace checkpoint or a VAE export")
    parser.add_argument("--out", required=True, help="the run's folder (a rerun resumes it)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--face-weight", type=float, default=2.0)
    parser.add_argument("--pairs", type=int, default=1000, help="train pairs rendered (two images each)")
    parser.add_argument("--test-pairs", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="the synthetic_faces seed and the training seed")
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--time-limit", type=float, default=None, help="seconds of training in this run")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if min(args.pairs, args.test_pairs) < 1:
        raise MagicFaceError("--pairs and --test-pairs must be at least 1")
    result = finetune_decoder(
        args.vae,
        args.out,
        pairs=args.pairs,
        test_pairs=args.test_pairs,
        seed=args.seed,
        time_limit_s=args.time_limit,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        face_weight=args.face_weight,
        checkpoint_every=args.checkpoint_every,
    )
    print(json.dumps(result["held_out_abs_error_255"], indent=2))
    print(f"decoder -> {Path(args.out) / EXPORT}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
