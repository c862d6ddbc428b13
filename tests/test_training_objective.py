"""`train.objective` unet: the identity encoder trained alone as a plain text-to-image UNet (the synthetic
world's SD1.5), whose export starts a MagicFace as SD's UNet does."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magicface_jax.diffusion.schedule import add_noise
from magicface_jax.errors import MagicFaceError
from magicface_jax.parallel.mesh import training_mesh
from magicface_jax.training.config import load_config
from magicface_jax.training.init import denoiser_from_unet, load_start
from magicface_jax.training.step import draw, example_losses
from magicface_jax.training.trainer import make_trainer
from tests.training_fixtures import nano_run, synthetic_pairs


def _latent_batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = ("identity_latents", "background_latents", "target_mean", "target_logvar")
    batch = {key: rng.standard_normal((2, 16, 16, 4)).astype(np.float32) for key in keys}
    return batch | {"au_variation": rng.standard_normal((2, 12)).astype(np.float32)}


def test_the_unet_objective_is_the_plain_unets_noise_error_and_trains_only_it():
    mesh = training_mesh(1, 1, 1, devices=jax.devices()[:1])
    run = nano_run("unused", train__batch_size=2, train__objective="unet", train__sample_posterior=False)
    trainer = make_trainer(run, mesh, load_start(run, mesh))
    assert trainer.names == ("identity_encoder",)
    objective, networks, prompt = trainer.objective, trainer.start.networks, trainer.prompt_embeds
    draws = draw(objective, jax.random.key(0), 2, (16, 16, 4))
    batch = _latent_batch(0)
    losses = np.asarray(example_losses(objective, networks, batch, draws, prompt))

    x0 = batch["target_mean"] * trainer.model.config.vae.scaling_factor
    noisy = add_noise(objective.schedule, jnp.asarray(x0), draws["noise"], draws["timesteps"])
    context = jnp.broadcast_to(prompt, (2, *prompt.shape[1:]))
    unet = trainer.model.identity_encoder.apply(
        {"params": networks["identity_encoder"]}, noisy, draws["timesteps"], context
    )[0]
    expected = np.mean(np.square(np.asarray(unet) - np.asarray(draws["noise"])), axis=(1, 2, 3))
    np.testing.assert_allclose(losses, expected, rtol=1e-5)

    # The conditions MagicFace adds play no part: other identity, background and AUs, the same loss.
    other = _latent_batch(1)
    conditions = {k: other[k] for k in ("identity_latents", "background_latents", "au_variation")}
    moved = np.asarray(example_losses(objective, networks, {**batch, **conditions}, draws, prompt))
    np.testing.assert_array_equal(moved, losses)
    magicface = dataclasses.replace(objective, settings=dataclasses.replace(run.train, objective="magicface"))
    assert not np.allclose(example_losses(magicface, networks, batch, draws, prompt), losses)


@pytest.fixture(scope="session")
def faces(tmp_path_factory):
    return synthetic_pairs(str(tmp_path_factory.mktemp("faces")), train_pairs=8, seed=7)


def test_its_export_starts_a_magicface_as_an_sd_checkpoint_does(tmp_path, faces):
    from magicface_jax import checkpoint
    from magicface_jax.training.loop import train

    run = nano_run(
        str(faces),
        output_dir=str(tmp_path / "pretrain"),
        train__steps=2,
        train__batch_size=8,
        train__objective="unet",
        checkpoint__export_weights="raw",
        checkpoint__async_save=False,
    )
    start = load_start(run, training_mesh(1, 1, 1, devices=jax.devices()[:1]))
    export = train(run, log=lambda _: None).export_dir
    info = checkpoint.read_info(export)
    assert info.source["objective"] == "unet" and info.source["trained_steps"] == 2
    encoder = checkpoint.read_params(export, "identity_encoder")
    denoiser = checkpoint.read_params(export, "denoiser")
    trained = jax.tree.leaves(encoder)
    initial = jax.tree.leaves(start.networks["identity_encoder"])
    assert any(not np.array_equal(a, b) for a, b in zip(trained, initial, strict=True))
    # The denoiser is the trained UNet, zero-extended, as `init.random_unets` makes it from a random one.
    expected = jax.device_get(denoiser_from_unet(encoder, info.config))
    for (path, want), got in zip(
        jax.tree_util.tree_flatten_with_path(expected)[0], jax.tree.leaves(denoiser), strict=True
    ):
        np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))

    follow = nano_run(str(faces), output_dir=str(tmp_path / "magicface"), init_checkpoint=str(export))
    started = load_start(follow, training_mesh(1, 1, 1, devices=jax.devices()[:1]))
    assert started.source["init_checkpoint"] == str(export.resolve())
    np.testing.assert_array_equal(
        jax.device_get(started.networks["denoiser"]["conv_in"]["kernel"]), denoiser["conv_in"]["kernel"]
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.objective=sd"], "train.objective='sd': expected one of magicface, unet"),
        (
            ["train.objective=unet", "model.train_identity_encoder=false"],
            "train.objective=unet trains the identity encoder as a plain UNet: set "
            "model.train_identity_encoder=true",
        ),
    ],
)
def test_a_bad_objective_is_refused_naming_the_key(tmp_path, overrides, message):
    path = tmp_path / "run.yaml"
    path.write_text("output_dir: out\ndataset: data\n")
    with pytest.raises(MagicFaceError, match=message.replace("(", r"\(")):
        load_config(path, overrides)
