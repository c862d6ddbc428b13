"""Sharpening a checkpoint's VAE decoder: the copy differs from its input only in the decoder, the run
resumes, and bad arguments are refused in one line before any work."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from magicface_jax import checkpoint, demo
from magicface_jax.cli import run
from magicface_jax.models.magicface import COMPONENTS
from magicface_jax.training import autoencoder, finetune_decoder

TINY_RUN = ["--pairs", "2", "--test-pairs", "1", "--batch-size", "2", "--checkpoint-every", "1"]


def _same(a, b) -> bool:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(x, y) for x, y in leaves)


@pytest.mark.slow
def test_the_copy_differs_only_in_the_decoder_and_a_rerun_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--vae", str(demo.DEMO_MODEL), "--out", str(out), *TINY_RUN]
    assert run(finetune_decoder.main, [*argv, "--steps", "2"]) == 0
    export = out / finetune_decoder.EXPORT
    before, after = checkpoint.read_info(demo.DEMO_MODEL), checkpoint.read_info(export)
    assert after.config == before.config and after.sampling == before.sampling
    for name in COMPONENTS:
        if name != "vae":
            assert _same(checkpoint.read_params(export, name), checkpoint.read_params(demo.DEMO_MODEL, name))
    old, new = checkpoint.read_params(demo.DEMO_MODEL, "vae"), checkpoint.read_params(export, "vae")
    for part in old:
        assert _same(old[part], new[part]) == (part in autoencoder.ENCODER_PARTS), part
    record = after.source["vae_decoder"]
    assert record["steps"] == 2 and set(record["held_out_abs_error_255"]["after"]) == {"image", "face"}
    assert json.loads((out / finetune_decoder.RESULT).read_text()) == record
    assert (out / finetune_decoder.PICTURE).is_file()
    assert run(finetune_decoder.main, [*argv, "--steps", "3"]) == 0
    assert "resumed from step 2" in capsys.readouterr().out
    assert checkpoint.read_info(export).source["vae_decoder"]["steps"] == 3


def test_a_vae_export_gives_a_vae_export_with_its_scaling_and_steps(tmp_path):
    from magicface_jax.config import VAEConfig

    vae = VAEConfig(block_out_channels=(8, 16), norm_num_groups=4, sample_size=64)
    config = autoencoder.AutoencoderTrainConfig(vae=vae, resolution=64)
    images = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), np.uint8)
    start = autoencoder.init_state(config).params
    made = autoencoder.export_vae(tmp_path / "vae", config, start, images, steps=7, face_scale=1.4)
    out = tmp_path / "run"
    assert (
        run(
            finetune_decoder.main,
            [
                "--vae",
                str(tmp_path / "vae"),
                "--out",
                str(out),
                "--steps",
                "1",
                "--warmup-steps",
                "0",
                *TINY_RUN,
            ],
        )
        == 0
    )
    got = autoencoder.load_vae(out / finetune_decoder.EXPORT)
    assert got.config == made and got.steps == 8 and got.face_scale == 1.4
    for part in start:
        assert _same(start[part], got.params[part]) == (part in autoencoder.ENCODER_PARTS), part


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda tmp: ["--vae", str(tmp / "missing")], "holds no VAE"),
        (lambda tmp: ["--out", str(demo.DEMO_MODEL / "run")], "could destroy the input"),
        (lambda tmp: ["--out", str(tmp / "file")], "is a file"),
        (lambda tmp: ["--steps", "0"], "steps, batch_size and checkpoint_every must be ≥ 1"),
        (lambda tmp: ["--pairs", "0"], "--pairs and --test-pairs must be at least 1"),
    ],
)
def test_bad_arguments_are_refused_in_one_line_before_any_work(tmp_path, capsys, change, message):
    (tmp_path / "file").write_text("not a folder")
    argv = ["--vae", str(demo.DEMO_MODEL), "--out", str(tmp_path / "run"), *TINY_RUN, *change(tmp_path)]
    assert run(finetune_decoder.main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (demo.DEMO_MODEL / "run").exists()
