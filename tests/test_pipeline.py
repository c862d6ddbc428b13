"""MagicFacePipeline: the public model API, the sampling loop against the authors' loop in PyTorch, sharding
over devices, and bad input."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest
import torch

from magicface_jax.convert.convert import to_pytorch
from magicface_jax.errors import MagicFaceError
from magicface_jax.parallel.mesh import data_mesh
from magicface_jax.pipeline import MagicFacePipeline
from tests.conftest import child_environment
from tests.fixtures import nchw, nhwc
from tests.torch_reference import TorchMagicFace, authors_edit, authors_unipc

SIZE = 64  # pixels; latents are 8x8


def images(count: int, seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


AU = np.array([[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 3, 0, -4, 0, 0, 0, 1, 0]], np.float32)


@pytest.fixture(scope="session")
def pipe(converted):
    return MagicFacePipeline.from_pretrained(converted, mesh=data_mesh(jax.devices()[:1]))


@pytest.fixture(scope="session")
def torch_pipe(converted, tmp_path_factory):
    """The PyTorch reference, loaded from the weights that `--to-pytorch` exports."""
    out = tmp_path_factory.mktemp("exported") / "pytorch"
    to_pytorch(converted, out, log=lambda _: None)
    return TorchMagicFace.from_pretrained(out), torch.from_numpy(pipe_prompt(converted))


def pipe_prompt(converted) -> np.ndarray:
    from magicface_jax.checkpoint import read_prompt_embeds

    return read_prompt_embeds(converted)


def test_public_api(pipe):
    sources = images(2, 0).astype(np.float32) / 127.5 - 1
    latents = pipe.vae_encode(sources)
    assert latents.shape == (2, 8, 8, 4)
    assert pipe.vae_decode(latents).shape == (2, SIZE, SIZE, 3)
    features = pipe.identity_features(latents)
    assert len(features) == 16 and features[0].shape == (2, 64, 32)
    noise = pipe.predict_noise(latents, latents, AU, 500, features)
    assert noise.shape == (2, 8, 8, 4)
    np.testing.assert_allclose(
        pipe.predict_noise(latents, latents, AU, np.array([500, 500]), features), noise
    )
    assert pipe.prompt_embeds.shape == (1, 77, 32)


def test_building_blocks_refuse_latents_the_unet_cannot_halve(pipe):
    """9 x 9 latents (a 72 x 72 image) would break the UNet's skips: refused by the image-size rule."""
    odd = np.zeros((1, 9, 9, 4), np.float32)
    with pytest.raises(MagicFaceError, match=r"source latents is 9x9; .* multiples of 8"):
        pipe.identity_features(odd)
    features = pipe.identity_features(np.zeros((1, 8, 8, 4), np.float32))
    with pytest.raises(MagicFaceError, match="noisy latents is 9x9"):
        pipe.predict_noise(odd, odd, AU[:1], 500, features)


@pytest.mark.parametrize("guidance", [1.5, 3.0, 1.0])
def test_sampling_matches_the_authors_loop(pipe, torch_pipe, converted, guidance):
    """Eight UniPC steps with AU guidance give the authors' final latents (max |diff| <= 1e-3)."""
    from magicface_jax.checkpoint import read_info

    model, prompt = torch_pipe
    sources, backgrounds = images(2, 1), images(2, 2)
    noise = np.random.default_rng(3).standard_normal((2, 8, 8, 4)).astype(np.float32)
    ours = pipe(sources, backgrounds, AU, 8, guidance, latents=noise, output_type="latent")
    expected = authors_edit(
        model,
        torch.from_numpy(nchw(sources.astype(np.float32) / 127.5 - 1)),
        torch.from_numpy(nchw(backgrounds.astype(np.float32) / 127.5 - 1)),
        torch.from_numpy(AU),
        prompt,
        authors_unipc(read_info(converted).scheduler),
        8,
        guidance,
        torch.from_numpy(nchw(noise)),
        decode=False,
    ).numpy()
    assert np.abs(ours - nhwc(expected)).max() <= 1e-3


def test_images_decode_like_the_authors(pipe, torch_pipe, converted):
    from magicface_jax.checkpoint import read_info

    model, prompt = torch_pipe
    source = images(1, 4)
    noise = np.random.default_rng(5).standard_normal((1, 8, 8, 4)).astype(np.float32)
    ours = pipe(source, source, AU[:1], 2, 1.5, latents=noise, output_type="np")
    as_input = torch.from_numpy(nchw(source.astype(np.float32) / 127.5 - 1))
    scheduler = authors_unipc(read_info(converted).scheduler)
    expected = authors_edit(
        model,
        as_input,
        as_input,
        torch.from_numpy(AU[:1]),
        prompt,
        scheduler,
        2,
        1.5,
        torch.from_numpy(nchw(noise)),
    )
    assert ours.shape == (1, SIZE, SIZE, 3) and ours.min() >= 0 and ours.max() <= 1
    assert np.abs(ours - nhwc(expected.numpy())).max() <= 1e-3
    pil = pipe(source, source, AU[:1], 2, 1.5, latents=noise)
    assert pil[0].size == (SIZE, SIZE) and pil[0].mode == "RGB"


def test_batch_sharded_over_8_devices_equals_one_device(converted, pipe):
    assert len(jax.devices()) == 8
    sharded = MagicFacePipeline.from_pretrained(converted)
    assert sharded.num_devices == 8
    sources, backgrounds = images(5, 6), images(5, 7)
    au = np.tile(AU, (3, 1))[:5]
    ours = sharded(sources, backgrounds, au, 3, 3.0, seed=11, output_type="np")
    single = pipe(sources, backgrounds, au, 3, 3.0, seed=11, output_type="np")
    assert ours.shape == (5, SIZE, SIZE, 3)
    np.testing.assert_allclose(ours, single, atol=1e-5)


def test_pmap_variant_equals_shard_map(converted, pipe):
    sources = images(3, 9)
    sharded = MagicFacePipeline.from_pretrained(converted)
    ours = sharded(sources, sources, AU[:1], 2, 3.0, seed=4, output_type="np", parallelism="pmap")
    np.testing.assert_allclose(
        ours, pipe(sources, sources, AU[:1], 2, 3.0, seed=4, output_type="np"), atol=1e-5
    )


def test_seed_and_broadcast(pipe):
    source = images(1, 8)
    first = pipe(source, source, AU, 2, 3.0, seed=1, output_type="latent")
    assert first.shape == (2, 8, 8, 4)
    np.testing.assert_array_equal(first, pipe(source, source, AU, 2, 3.0, seed=1, output_type="latent"))
    assert np.abs(first - pipe(source, source, AU, 2, 3.0, seed=2, output_type="latent")).max() > 1e-3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_inference_steps": 0}, "num_inference_steps=0: expected between 1 and"),
        ({"num_inference_steps": "10"}, "num_inference_steps='10': expected an integer"),
        ({"guidance_scale": -1.0}, "≥ 0"),
        ({"guidance_scale": "3"}, "guidance scale must be a number, got '3'"),
        ({"guidance_scale": float("nan")}, "guidance scale must be ≥ 0, got nan"),
        ({"seed": "1"}, "seed must be a whole number"),
        ({"seed": 1.5}, "seed must be a whole number"),
        ({"seed": -1}, "seed must be a whole number in 0.."),
        ({"au": "AU3=+1"}, "unknown action unit 'AU3'"),
        ({"au": "AU4=lots"}, "'lots' is not a number"),
        ({"au": np.full(12, np.nan)}, "NaN or infinite values"),
        ({"au": [["x"] * 12]}, "is not numbers"),
        ({"scheduler": "heun"}, "unknown sampler"),
        ({"output_type": "tensor"}, "output_type"),
        ({"au": {"AU3": 1}}, "unknown action unit"),
        ({"au": np.zeros((2, 11))}, "shape"),
        ({"background": images(1, 0)[:, :32]}, "same size"),
        # 72 is a multiple of the VAE's 8 but not of the 64 the UNet needs: refused before it can crash there
        (
            {"source": images(2, 0, 72), "background": images(2, 0, 72)},
            "72x72; this model needs both sides to be multiples of 64",
        ),
        ({"source": images(3, 0), "background": images(2, 0)}, "give 1 or 3"),
        ({"latents": np.zeros((1, 4, 4, 4))}, "latents have shape"),
        ({"parallelism": "vmap"}, "parallelism"),
    ],
)
def test_bad_input(pipe, change, message):
    arguments = {"source": images(1, 0), "background": images(1, 0), "au": AU[:1]} | change
    with pytest.raises(MagicFaceError, match=message):
        pipe(**arguments)


def test_au_as_a_string_is_the_cli_form(pipe):
    source = images(1, 0)
    request = pipe.prepare(source, source, "AU4=+2,AU1=-1")
    expected = np.zeros((1, 12), np.float32)
    expected[0, [2, 0]] = [2, -1]
    np.testing.assert_array_equal(request.au, expected)
    both = pipe.prepare(source, source, ["AU4=+2,AU1=-1", {"AU12": 3}])
    assert both.au.shape == (2, 12) and both.au[1, 6] == 3


def test_non_finite_au_names_the_unit(pipe):
    au = np.zeros((2, 12), np.float32)
    au[1, 6] = np.inf
    with pytest.raises(MagicFaceError, match=r"\(in AU12\)"):
        pipe.prepare(images(1, 0), images(1, 0), au)


def test_from_pretrained_refuses_an_unknown_dtype_and_expands_tilde(converted, tmp_path, monkeypatch):
    with pytest.raises(MagicFaceError, match=r"unknown compute dtype 'float16'.*float32, bfloat16"):
        MagicFacePipeline.from_pretrained(converted, dtype="float16")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ckpt").symlink_to(converted)
    pipe = MagicFacePipeline.from_pretrained("~/ckpt", mesh=data_mesh(jax.devices()[:1]))
    assert pipe.config.vae.latent_channels == 4


def test_out_of_range_variation_warns(pipe):
    source = images(1, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.prepare(source, source, {"AU12": 14})
    assert any("AU12" in str(w.message) and "[-10, 10]" in str(w.message) for w in caught)


# The edit both processes of the two-process test run: sources, backgrounds, AU, steps, guidance, seed.
MULTIHOST_EDIT = (images(3, 6), images(3, 7), np.tile(AU, (2, 1))[:3], 2, 3.0, 11)


def test_two_processes_share_one_mesh(converted, pipe, tmp_path):
    """Two processes (4 CPU devices each, jax.distributed on loopback) shard one batch over 8 devices and
    both get the whole result, equal to one device's."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = child_environment()  # each process sets its 4 devices
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "result"
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.multihost_edit", str(i), str(port), str(converted), str(out)],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        logs = [worker.communicate(timeout=420)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert all(worker.returncode == 0 for worker in workers), "\n".join(logs)[-3000:]
    sources, backgrounds, au, steps, guidance, seed = MULTIHOST_EDIT
    single = pipe(sources, backgrounds, au, steps, guidance, seed=seed, output_type="latent")
    for i in range(2):
        # Other per-device batch sizes take other CPU kernels: equal up to float32 rounding.
        assert np.abs(np.load(f"{out}.{i}.npy") - single).max() <= 1e-5 * np.abs(single).max()
