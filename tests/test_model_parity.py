"""The Flax networks against PyTorch references in float32: max |diff| <= 2e-4 per forward."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from magicface_jax.config import UNetConfig, tiny_magicface_config
from magicface_jax.convert.names import network_table
from magicface_jax.convert.sources import ArraySource
from magicface_jax.convert.tensors import to_flax_params
from magicface_jax.models.magicface import MagicFace
from magicface_jax.models.unet import UNet
from tests.fixtures import (
    WIDE_TIME_EMBEDDING,
    denoiser_predictions,
    nchw,
    nhwc,
    perturb,
    random,
    tiny_torch_magicface,
    wide_time_config,
)

TOLERANCE = 2e-4


def flax_params(module_state: dict, config) -> dict:
    return to_flax_params(ArraySource(module_state), network_table(config), "test network")


def assert_close(ours, reference, tolerance=TOLERANCE):
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape
    diff = np.abs(ours - reference).max()
    assert diff <= tolerance, (
        f"max |diff| {diff:.2e} > {tolerance:.0e} (reference scale {np.abs(reference).max():.2f})"
    )


SD2_LIKE = UNetConfig(
    block_out_channels=(32, 64, 64, 64),
    attention_heads=(2, 4, 4, 4),
    cross_attention_dim=24,
    norm_num_groups=8,
    use_linear_projection=True,
    upcast_attention=True,
)


@pytest.mark.parametrize(
    "config",
    [
        tiny_magicface_config().identity_encoder,
        SD2_LIKE,
        tiny_magicface_config().identity_encoder.replace(time_embedding_dim=WIDE_TIME_EMBEDDING),
    ],
    ids=["sd15", "sd2", "wide-time"],
)
@pytest.mark.parametrize("timestep", [0, 417.5])
def test_unet_matches_diffusers(config, timestep):
    torch.manual_seed(0)
    kwargs = {k: v for k, v in config.to_diffusers().items() if not k.startswith("_")}
    reference = perturb(UNet2DConditionModel(**kwargs), seed=1)
    assert reference.time_embedding.linear_2.out_features == config.time_embed_dim
    params = flax_params(reference.state_dict(), config)
    sample, context = random((2, 4, 16, 16), 2), random((2, 7, config.cross_attention_dim), 3)
    with torch.no_grad():
        expected = reference(torch.from_numpy(sample), timestep, torch.from_numpy(context)).sample.numpy()
    ours, features = jax.jit(UNet(config).apply)({"params": params}, nhwc(sample), timestep, context)
    assert_close(nchw(ours), expected)
    assert len(features) == config.num_transformer_blocks == 16


def test_vae_matches_diffusers(torch_model):
    config = tiny_magicface_config()
    model = MagicFace(config)
    params = flax_params(torch_model.vae.state_dict(), config.vae)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        posterior = torch_model.vae.encode(torch.from_numpy(images)).latent_dist
        decoded = torch_model.vae.decode(posterior.mean).sample.numpy()
    mean, logvar = model.vae_encode(params, nhwc(images))
    assert_close(nchw(mean), posterior.mean.numpy())
    assert_close(nchw(logvar), posterior.logvar.numpy())
    assert_close(nchw(model.vae_decode(params, nhwc(posterior.mean.numpy()))), decoded)


@pytest.fixture(scope="session")
def tiny_pair(torch_model):
    """Flax parameters of the reference identity encoder and denoiser."""
    config = tiny_magicface_config()
    return (
        flax_params(torch_model.identity_encoder.unet.state_dict(), config.identity_encoder),
        flax_params(torch_model.denoiser.magicface_state_dict(), config.denoiser),
    )


def test_identity_features_match_reference(torch_model, tiny_pair):
    config = tiny_magicface_config()
    latents, prompt = random((2, 4, 16, 16), 4), random((1, 77, 32), 5)
    with torch.no_grad():
        expected = torch_model.identity_encoder(
            torch.from_numpy(latents), torch.from_numpy(prompt).expand(2, -1, -1)
        )
    ours = MagicFace(config).identity_features(tiny_pair[0], nhwc(latents), prompt)
    assert len(ours) == len(expected) == config.identity_encoder.num_transformer_blocks
    for mine, theirs in zip(ours, expected, strict=True):
        assert_close(mine, theirs.numpy())


@pytest.mark.parametrize("timestep", [999, 10.0])
def test_denoiser_matches_reference(torch_model, tiny_pair, timestep):
    assert_denoiser_matches(torch_model, tiny_magicface_config(), tiny_pair, timestep)


def test_wide_time_embedding_denoiser_matches_reference():
    """time_embedding_dim != 4 x the first width: the AU linear, the time MLP and every resnet's time
    projection take the configured width, in both implementations."""
    config = wide_time_config()
    torch_model = tiny_torch_magicface(seed=4, config=config)
    assert torch_model.denoiser.au_aug_mlp.out_features == WIDE_TIME_EMBEDDING
    pair = (
        flax_params(torch_model.identity_encoder.unet.state_dict(), config.identity_encoder),
        flax_params(torch_model.denoiser.magicface_state_dict(), config.denoiser),
    )
    assert pair[1]["au_aug_mlp"]["kernel"].shape == (12, WIDE_TIME_EMBEDDING)
    assert_denoiser_matches(torch_model, config, pair, 321.0)


def assert_denoiser_matches(torch_model, config, pair, timestep):
    assert_close(*denoiser_predictions(torch_model, config, pair, timestep))


def _jitted_edit(model: MagicFace):
    """identity features -> identity keys/values -> noise prediction, as one compiled function."""

    def predict(encoder_params, denoiser_params, noisy, background, identity, au, t, prompt):
        kv = model.identity_kv(denoiser_params, model.identity_features(encoder_params, identity, prompt))
        return model.predict_noise(denoiser_params, noisy, background, au, t, kv, prompt)

    return jax.jit(predict)


def test_denoiser_depends_on_every_input(tiny_pair):
    """No input is silently ignored: changing any one changes the prediction."""
    predict = _jitted_edit(MagicFace(tiny_magicface_config()))
    prompt = random((1, 77, 32), 0)
    inputs = {"noisy": random((1, 16, 16, 4), 1), "background": random((1, 16, 16, 4), 2)}
    inputs |= {"identity": random((1, 16, 16, 4), 3), "au": np.eye(1, 12, 6, dtype=np.float32) * 3}
    inputs |= {"t": np.float32(500), "prompt": prompt}
    base = np.asarray(predict(*tiny_pair, **inputs))
    for name, value in inputs.items():
        changed = np.asarray(predict(*tiny_pair, **(inputs | {name: value + 1.0})))
        assert np.abs(changed - base).max() > 1e-3, name


def test_bfloat16_compute_stays_close_to_float32(tiny_pair):
    config = tiny_magicface_config()
    prompt, noisy = random((1, 77, 32), 0), random((2, 16, 16, 4), 1)
    au = np.zeros((2, 12), np.float32)
    outputs = {}
    for dtype in ("float32", "bfloat16"):
        predict = _jitted_edit(MagicFace(dataclasses.replace(config, dtype=dtype)))
        outputs[dtype] = predict(*tiny_pair, noisy, noisy, noisy, au, 500, prompt)
        assert outputs[dtype].dtype == jnp.float32
    scale = np.abs(np.asarray(outputs["float32"])).max()
    assert np.abs(np.asarray(outputs["bfloat16"]) - np.asarray(outputs["float32"])).max() < 0.1 * scale


def test_identity_encoder_drops_unused_work(tiny_pair):
    """Under jit, the identity features cost less than the full forward: XLA drops the output head."""
    model = MagicFace(tiny_magicface_config())
    latents, prompt = jnp.zeros((1, 16, 16, 4)), jnp.zeros((1, 77, 32))
    full = jax.jit(lambda p: model.identity_encoder.apply({"params": p}, latents, 0, prompt))
    features = jax.jit(lambda p: model.identity_features(p, latents, prompt))
    flops = [fn.lower(tiny_pair[0]).compile().cost_analysis()["flops"] for fn in (full, features)]
    assert flops[1] < flops[0]
