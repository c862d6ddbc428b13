"""Trains one VAE of the synthetic setting's design study and measures whether expressions survive it.

    python benchmarks/synthetic_vae.py --resolution 64 --widths 32,64,64 --steps 1500 --out runs/vae64_f4

Trains `magicface_jax.training.autoencoder` on both images of `--pairs` synthetic_faces train pairs
(resuming from OUT/state), exports the frozen VAE to OUT/export, then on held-out test pairs reports the
reconstruction error in the face box and in the brows, eyes and mouth, and for AU12 (mouth), AU1 and AU4
(brows) and AU5 (eyes) the rendered change from intensity 0 to 4 against the VAE's error there
(`magicface_jax.evaluation.vae_study`), and with `--estimator DIR` (a synthetic estimator of the same
world) how much of that change the estimator still reads on the reconstructions. Writes OUT/result.json
and OUT/reconstruction.png (original, reconstruction and 4 × |difference| of each part for a few test
faces).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from magicface_jax import cli
from magicface_jax.atomic import atomic_file
from magicface_jax.config import VAEConfig
from magicface_jax.data.synthetic_faces import SyntheticFacesSpec
from magicface_jax.evaluation import vae_study
from magicface_jax.evaluation.regions import part_box
from magicface_jax.evaluation.synthetic import SyntheticEstimator
from magicface_jax.training import autoencoder

PROBED_AUS = ("AU12", "AU1", "AU4", "AU5")
PICTURE_PARTS = ("brows", "eyes", "mouth")


def _betas(text: str) -> tuple[float, float]:
    try:
        b1, b2 = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected two numbers B1,B2 such as 0.5,0.9, got {text!r}"
        ) from None
    return b1, b2


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="benchmarks/synthetic_vae.py", description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=64, choices=(64, 128))
    parser.add_argument("--widths", default="32,64,64", help="block widths; downsampling = 2^(count − 1)")
    parser.add_argument("--layers", type=int, default=1, help="resnets per encoder block")
    parser.add_argument("--latent-channels", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument(
        "--adam-betas",
        type=_betas,
        default=(0.9, 0.999),
        help="Adam's b1,b2 (default 0.9,0.999; the latent-diffusion autoencoders: 0.5,0.9)",
    )
    parser.add_argument("--face-weight", type=float, default=1.0)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument(
        "--face-scale",
        type=float,
        default=None,
        help="synthetic_faces' face size in the image (default 1; with --measure-only, the export's)",
    )
    parser.add_argument("--pairs", type=int, default=1000, help="train pairs rendered (two images each)")
    parser.add_argument("--test-pairs", type=int, default=64)
    parser.add_argument("--probe-people", type=int, default=16)
    parser.add_argument(
        "--estimator",
        default=None,
        help="a synthetic estimator of this world (train_estimator's --out): also measure the AU change it "
        "reads through the VAE",
    )
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--time-limit", type=float, default=None, help="seconds of training in this run")
    parser.add_argument("--measure-only", action="store_true", help="measure OUT/export without training")
    parser.add_argument("--out", required=True)
    return parser


def _config(args) -> autoencoder.AutoencoderTrainConfig:
    vae = VAEConfig(
        latent_channels=args.latent_channels,
        block_out_channels=tuple(int(w) for w in args.widths.split(",")),
        layers_per_block=args.layers,
        norm_num_groups=8,
        sample_size=args.resolution,
    )
    return autoencoder.AutoencoderTrainConfig(
        vae=vae,
        resolution=args.resolution,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        adam_betas=args.adam_betas,
        face_weight=args.face_weight,
        kl_weight=args.kl_weight,
        checkpoint_every=args.checkpoint_every,
    )


def world(resolution: int, face_scale: float) -> SyntheticFacesSpec:
    """The synthetic_faces spec whose images a VAE of the study trains and is measured on."""
    return SyntheticFacesSpec(resolution=resolution, seed=0, face_scale=face_scale)


def train_and_export(
    config: autoencoder.AutoencoderTrainConfig,
    out: Path,
    pairs: int,
    time_limit: float | None = None,
    face_scale: float = 1.0,
) -> float:
    """Trains (or resumes) the VAE on both images of `pairs` train pairs under OUT/state and exports it to
    OUT/export; returns the seconds of training in this call."""
    spec = world(config.resolution, face_scale)
    start = time.perf_counter()
    pool = autoencoder.synthetic_images(spec, "train", pairs)
    print(f"rendered {len(pool[0])} training images in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    state = autoencoder.train(config, pool, out, log_every=25, time_limit_s=time_limit)
    seconds = time.perf_counter() - start
    autoencoder.export_vae(
        out / "export",
        config,
        state.params,
        pool[0][:256],
        int(state.step),
        overwrite=True,
        face_scale=face_scale,
    )
    return seconds


def measure(
    export: Path,
    out: Path,
    test_pairs: int,
    probe_people: int,
    face_scale: float | None = None,
    extra: dict | None = None,
    read_aus: vae_study.ReadAUs | None = None,
) -> dict:
    """The exported VAE on `test_pairs` held-out pairs and the AU probes of faces at `face_scale` (default:
    the scale its export records, else 1), read by the AU estimator `read_aus` too, when given: the
    result with `extra` (also written to OUT/result.json) and OUT/reconstruction.png. Both belong to the
    run in OUT: a rerun, which resumes the run, replaces them."""
    from magicface_jax.data.synthetic_faces import synthetic_example

    vae_config, params, vae_steps, trained_scale = autoencoder.load_vae(export)
    if face_scale is None:
        face_scale = 1.0 if trained_scale is None else trained_scale
    resolution = vae_config.sample_size
    spec = world(resolution, face_scale)

    def reconstruct(images):
        return autoencoder.reconstruct(vae_config, params, images)

    test, _ = autoencoder.synthetic_images(spec, "test", test_pairs)
    landmarks = np.stack(
        [
            synthetic_example(spec, "test", i)[key]
            for i in range(test_pairs)
            for key in ("identity_landmarks", "target_landmarks")
        ]
    )
    recons = reconstruct(test)
    errors = {part: vae_study.part_error(test, recons, landmarks, part) for part in ("face", *PICTURE_PARTS)}
    aus = {
        au: vae_study.au_survival(
            vae_study.au_probe(au, resolution, probe_people, face_scale=face_scale), reconstruct, read_aus
        )
        for au in PROBED_AUS
    }
    result = {
        "steps_done": vae_steps,
        "face_scale": face_scale,
        "vae": {
            "widths": list(vae_config.block_out_channels),
            "downsample": vae_config.downsample_factor,
            "latent": f"{resolution // vae_config.downsample_factor}² × {vae_config.latent_channels}",
            "scaling_factor": vae_config.scaling_factor,
        },
        "face_box_rmse_01": vae_study.part_rmse(test, recons, landmarks, "face"),
        "mean_abs_error_255": errors,
        "au_change_vs_vae_error_255": aus,
        "posterior_by_channel": autoencoder.latent_channels(vae_config, params, test),
        **(extra or {}),
    }
    with atomic_file(out / "result.json", overwrite=True) as partial:
        partial.write_text(json.dumps(result, indent=2))
    _picture(test, recons, landmarks, out / "reconstruction.png")
    return result


def _picture(images, recons, landmarks, path: Path, faces: int = 3, height: int = 48) -> None:
    rows = []
    for image, recon, points in list(zip(images, recons, landmarks, strict=True))[:faces]:
        diff = np.clip(4 * np.abs(recon.astype(int) - image), 0, 255).astype(np.uint8)
        tiles = []
        for part in PICTURE_PARTS:
            top, bottom, left, right = part_box(points, part, image.shape[0])
            column = [Image.fromarray(x[top:bottom, left:right]) for x in (image, recon, diff)]
            scale = height / column[0].height
            size = (max(1, round(column[0].width * scale)), height)
            tiles.append(
                np.concatenate([np.asarray(c.resize(size, Image.Resampling.NEAREST)) for c in column])
            )
            tiles.append(np.full((3 * height, 4, 3), 255, np.uint8))
        rows.append(np.concatenate(tiles, axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate(
        [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    )
    with atomic_file(path, overwrite=True) as partial:
        Image.fromarray(grid).save(partial, format="PNG")


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    out = Path(args.out)
    read_aus = None if args.estimator is None else SyntheticEstimator.load(args.estimator).aus
    seconds = 0.0
    if not args.measure_only:
        face_scale = 1.0 if args.face_scale is None else args.face_scale
        seconds = train_and_export(_config(args), out, args.pairs, args.time_limit, face_scale)
    extra = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "train_seconds_this_run": seconds}
    result = measure(
        out / "export", out, args.test_pairs, args.probe_people, args.face_scale, extra, read_aus
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(cli.run(main))
