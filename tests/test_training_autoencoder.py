"""The synthetic world's VAE training: it learns, resumes exactly, and exports a frozen VAE."""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
import pytest

from magicface_jax.config import VAEConfig
from magicface_jax.errors import MagicFaceError
from magicface_jax.training import autoencoder

VAE = VAEConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=16)
CONFIG = autoencoder.AutoencoderTrainConfig(
    vae=VAE, resolution=16, steps=6, batch_size=4, learning_rate=5e-3, warmup_steps=1, checkpoint_every=2
)


def _data(count: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Smooth two-colour images with a square "face" whose colour varies."""
    rng = np.random.default_rng(0)
    images = np.empty((count, 16, 16, 3), np.uint8)
    images[:] = rng.integers(40, 200, (count, 1, 1, 3))
    masks = np.zeros((count, 16, 16), bool)
    masks[:, 4:12, 4:12] = True
    images[masks] = np.repeat(rng.integers(0, 255, (count, 3)), 64, axis=0)
    return images, masks


def _silent(_):
    pass


@pytest.mark.slow
def test_training_lowers_the_reconstruction_error(tmp_path):
    config = autoencoder.AutoencoderTrainConfig(
        vae=VAE,
        resolution=16,
        steps=40,
        batch_size=8,
        learning_rate=5e-3,
        warmup_steps=2,
        checkpoint_every=40,
    )
    losses = []
    autoencoder.train(config, _data(), tmp_path / "run", log=losses.append, log_every=10)
    l1 = [float(line.split("l1 ")[1].split(",")[0]) for line in losses if line.startswith("step")]
    assert len(l1) == 4 and l1[-1] < 0.8 * l1[0]


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_parameters(tmp_path):
    data = _data()
    whole = autoencoder.train(CONFIG, data, tmp_path / "whole", log=_silent)
    log = []
    cut = autoencoder.train(CONFIG, data, tmp_path / "cut", log=log.append, time_limit_s=0)
    assert int(cut.step) == 1 and "stopped at step 1" in log[-1]
    resumed = autoencoder.train(CONFIG, data, tmp_path / "cut", log=log.append)
    assert "resumed from step 1" in log and int(resumed.step) == CONFIG.steps
    for a, b in zip(
        autoencoder.jax.tree.leaves(whole.params), autoencoder.jax.tree.leaves(resumed.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_step_with_an_exploding_gradient_leaves_the_weights_and_moments():
    images, masks = _data()
    batch = (autoencoder.to_model_input(images[:4]), np.ones(masks[:4].shape, np.float32))

    def one_step(config, images):
        config = dataclasses.replace(config, warmup_steps=0)  # a first step at the full learning rate
        state = autoencoder.init_state(config)
        before = jax.tree.map(np.asarray, (state.params, state.opt_state))
        new, metrics = autoencoder.make_train_step(config)(state, images, batch[1])
        return before, jax.tree.map(np.asarray, (new.params, new.opt_state)), metrics

    def leaves_equal(a, b):
        return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))

    # Every real gradient is above a threshold of 1e-6: the step is skipped; without a threshold it is not.
    before, after, metrics = one_step(dataclasses.replace(CONFIG, skip_grad_norm=1e-6), batch[0])
    assert int(metrics["skipped"]) == 1 and float(metrics["grad_norm"]) > 1e-6
    assert leaves_equal(before, after)
    before, after, metrics = one_step(dataclasses.replace(CONFIG, skip_grad_norm=0.0), batch[0])
    assert int(metrics["skipped"]) == 0 and not leaves_equal(before[0], after[0])
    # A batch that makes the loss not finite is skipped at the default threshold.
    before, after, metrics = one_step(CONFIG, np.full_like(batch[0], np.nan))
    assert int(metrics["skipped"]) == 1 and leaves_equal(before, after)


@pytest.mark.slow
def test_a_run_whose_steps_are_all_skipped_stops_and_keeps_its_last_checkpoint(tmp_path):
    data = _data()
    autoencoder.train(dataclasses.replace(CONFIG, steps=2), data, tmp_path / "run", log=_silent)
    # Every gradient is above a threshold of 1e-6: the weights have "diverged" from step 3 on.
    diverging = dataclasses.replace(CONFIG, steps=20, checkpoint_every=4, skip_grad_norm=1e-6)
    log = []
    with pytest.raises(MagicFaceError, match=r"diverged: steps 3-12 .* last checkpoint \(step 2\) is kept"):
        autoencoder.train(diverging, data, tmp_path / "run", log=log.append)
    assert "step 3: skipped" in log[1]
    assert sorted(p.name for p in (tmp_path / "run" / autoencoder.STATE_DIR).iterdir()) == ["2"]
    with pytest.raises(MagicFaceError, match=r"diverged: steps 1-10 .* it wrote no checkpoint: train again"):
        autoencoder.train(diverging, data, tmp_path / "fresh", log=_silent)


def test_latent_channels_find_a_channel_collapsed_to_the_prior():
    images, _ = _data()
    params = jax.tree.map(np.array, autoencoder.init_state(CONFIG).params)
    kernel, bias = params["quant_conv"]["kernel"], params["quant_conv"]["bias"]
    channels = VAE.latent_channels
    kernel[..., [0, channels]] = 0.0  # channel 0: mean 0 and log-variance 0 for every image, the prior
    bias[[0, channels]] = 0.0
    kernel[..., channels + 1] = 0.0  # channel 1: a posterior variance of e^-20
    bias[channels + 1] = -20.0
    found = autoencoder.latent_channels(VAE, params, images)
    scale = VAE.scaling_factor
    assert len(found) == channels
    assert found[0]["signal"] == 0.0 and found[0]["collapsed"]
    assert found[0]["noise"] == pytest.approx(scale**2, rel=1e-6)
    assert found[1]["noise"] == pytest.approx(scale**2 * np.exp(-20.0), rel=1e-4)
    assert found[1]["signal"] > 0.0 and not found[1]["collapsed"]


def test_export_sets_the_scaling_factor_and_loads_back(tmp_path):
    images, _ = _data()
    state = autoencoder.init_state(CONFIG)
    exported = autoencoder.export_vae(tmp_path / "vae", CONFIG, state.params, images, steps=0)
    latents = autoencoder.encode(VAE, state.params, images)
    assert latents.shape == (8, 8, 8, 4)  # downsampling 2, 4 latent channels
    assert exported.scaling_factor == pytest.approx(1 / latents.std(), rel=1e-5)
    loaded = autoencoder.load_vae(tmp_path / "vae")
    assert loaded.config == exported and loaded.steps == 0
    np.testing.assert_array_equal(
        autoencoder.reconstruct(VAE, loaded.params, images[:3]).shape, (3, 16, 16, 3)
    )
    with pytest.raises(MagicFaceError, match="already exists"):
        autoencoder.export_vae(tmp_path / "vae", CONFIG, state.params, images, steps=0)
    with pytest.raises(MagicFaceError, match="no exported VAE"):
        autoencoder.load_vae(tmp_path)
    assert loaded.face_scale == 1.0  # the default world's faces
    round_trip = autoencoder.round_trip(tmp_path / "vae", resolution=16, face_scale=1.0)
    np.testing.assert_array_equal(round_trip(images), autoencoder.reconstruct(VAE, loaded.params, images))
    with pytest.raises(MagicFaceError, match="trained on 16² images, not 64²"):
        autoencoder.round_trip(tmp_path / "vae", resolution=64)
    autoencoder.export_vae(tmp_path / "vae14", CONFIG, state.params, images, steps=0, face_scale=1.4)
    assert autoencoder.load_vae(tmp_path / "vae14").face_scale == 1.4
    with pytest.raises(MagicFaceError, match=r"faces at scale 1\.4, not 1: pass --face-scale 1\.4"):
        autoencoder.round_trip(tmp_path / "vae14", face_scale=1.0)


def test_a_decoder_only_run_keeps_the_encoder_and_its_scaling(tmp_path):
    data = _data()
    start = autoencoder.init_state(CONFIG).params
    config = dataclasses.replace(
        CONFIG, train_encoder=False, vae=dataclasses.replace(VAE, scaling_factor=0.5), steps=2
    )
    with pytest.raises(MagicFaceError, match="must start from a trained VAE"):
        autoencoder.train(config, data, tmp_path / "random", log=_silent)
    trained = autoencoder.train(config, data, tmp_path / "decoder", log=_silent, start=start).params
    for part in start:
        pairs = zip(jax.tree.leaves(start[part]), jax.tree.leaves(trained[part]), strict=True)
        unchanged = all(np.array_equal(a, b) for a, b in pairs)
        assert unchanged == (part in autoencoder.ENCODER_PARTS), part  # no step, no weight decay
    np.testing.assert_array_equal(
        autoencoder.encode(VAE, trained, data[0]), autoencoder.encode(VAE, start, data[0])
    )
    exported = autoencoder.export_vae(tmp_path / "vae", config, trained, data[0], steps=2)
    assert exported.scaling_factor == 0.5  # the latents are the start's: so is their scaling


def test_a_damaged_export_is_refused_in_one_line(tmp_path):
    import shutil

    images, _ = _data()
    params = autoencoder.init_state(CONFIG).params
    for damage, message in (
        (lambda d: (d / autoencoder.EXPORT_CONFIG).write_text("{not json"), "is damaged"),
        (lambda d: shutil.rmtree(d / autoencoder.EXPORT_PARAMS), "cannot read the VAE's parameters"),
        (
            lambda d: (d / autoencoder.EXPORT_CONFIG).write_text(
                (d / autoencoder.EXPORT_CONFIG)
                .read_text()
                .replace('"latent_channels": 4', '"latent_channels": 8')
            ),
            "do not have the layout",
        ),
    ):
        directory = tmp_path / f"vae{len(list(tmp_path.iterdir()))}"
        autoencoder.export_vae(directory, CONFIG, params, images, steps=0)
        damage(directory)
        with pytest.raises(MagicFaceError, match=message):
            autoencoder.load_vae(directory)


def test_bad_settings_are_refused():
    with pytest.raises(MagicFaceError, match="multiple"):
        autoencoder.AutoencoderTrainConfig(vae=VAE, resolution=17)
    with pytest.raises(MagicFaceError, match="≥ 1"):
        autoencoder.AutoencoderTrainConfig(vae=VAE, resolution=16, steps=0)
    with pytest.raises(MagicFaceError, match="grad_clip_norm and skip_grad_norm must be ≥ 0"):
        autoencoder.AutoencoderTrainConfig(vae=VAE, resolution=16, grad_clip_norm=-1.0)
    with pytest.raises(MagicFaceError, match="grad_clip_norm and skip_grad_norm must be ≥ 0"):
        autoencoder.AutoencoderTrainConfig(vae=VAE, resolution=16, skip_grad_norm=-1.0)
    with pytest.raises(MagicFaceError, match=r"adam_betas must be two numbers in \[0, 1\)"):
        autoencoder.AutoencoderTrainConfig(vae=VAE, resolution=16, adam_betas=(0.5, 1.0))
    with pytest.raises(MagicFaceError, match="trains at 32"):
        autoencoder.train(autoencoder.AutoencoderTrainConfig(vae=VAE, resolution=32), _data(), "unused")


def test_the_learning_rate_warms_up_then_decays_to_a_tenth():
    config = dataclasses.replace(CONFIG, steps=100, warmup_steps=10, learning_rate=2e-3)
    rates = np.array([float(autoencoder.learning_rate_schedule(config)(s)) for s in range(101)])
    assert rates[0] == 0.0 and rates[10] == pytest.approx(2e-3)
    assert rates.max() <= 2e-3 * (1 + 1e-6)  # never above the peak
    assert np.all(np.diff(rates[10:]) <= 1e-12)
    assert rates[100] == pytest.approx(2e-4)


def test_adams_moment_decays_are_the_configs():
    """A gradient g, then −g: by hand, Adam's second step is lr · sign(g) / 19 with betas (0.9, 0.999) and
    lr · sign(g) / 3 with (0.5, 0.9) (the bias-corrected second moment is g² in both)."""
    import jax.numpy as jnp

    params, grads = {"w": jnp.zeros(3)}, {"w": jnp.array([0.5, -2.0, 1e-3])}
    base = autoencoder.AutoencoderTrainConfig(
        vae=VAE, resolution=16, warmup_steps=0, weight_decay=0.0, grad_clip_norm=0.0
    )
    for betas, fraction in (((0.9, 0.999), 1 / 19), ((0.5, 0.9), 1 / 3)):
        tx = autoencoder.optimizer(dataclasses.replace(base, adam_betas=betas))
        _, state = tx.update(grads, tx.init(params), params)
        second, _ = tx.update({"w": -grads["w"]}, state, params)
        expected = base.learning_rate * fraction * np.sign(np.asarray(grads["w"]))
        np.testing.assert_allclose(np.asarray(second["w"]), expected, rtol=1e-4)


def test_gradients_are_clipped_to_the_global_norm_before_adamw():
    """AdamW then sees a spike (norm 1e6) as a gradient of norm 1; an ordinary gradient passes unchanged."""
    import jax.numpy as jnp
    import optax

    params = {"w": jnp.zeros(4), "b": jnp.zeros(2)}
    spike = {"w": jnp.full(4, 4e5), "b": jnp.full(2, -3e5 * 2**0.5)}
    ordinary = {"w": jnp.full(4, 0.1), "b": jnp.full(2, -0.2)}
    config = autoencoder.AutoencoderTrainConfig(vae=VAE, resolution=16, grad_clip_norm=1.0)
    unclipped = autoencoder.optimizer(dataclasses.replace(config, grad_clip_norm=0.0))
    clipped = autoencoder.optimizer(config)
    states = clipped.init(params), unclipped.init(params)
    norm = float(optax.tree.norm(spike))
    for given, seen in ((spike, jax.tree.map(lambda g: g / norm, spike)), (ordinary, ordinary)):
        got, clipped_state = clipped.update(given, states[0], params)
        want, unclipped_state = unclipped.update(seen, states[1], params)
        states = clipped_state, unclipped_state
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.slow
def test_the_vae_study_cli_trains_measures_and_resumes_in_its_folder(tmp_path, capsys):
    import json

    from benchmarks import synthetic_vae
    from magicface_jax.cli import run
    from magicface_jax.data.synthetic_faces import SyntheticFacesSpec
    from magicface_jax.evaluation import synthetic

    spec = SyntheticFacesSpec(
        resolution=64, train_pairs=2, test_pairs=1, pairs_per_identity=1, face_scale=1.4
    )
    images = synthetic.labelled_images(synthetic.rendered_records(spec, "train", 2))
    tiny = synthetic.RegressorConfig(input_size=32, widths=(8,), hidden=8, batch_size=2)
    synthetic.train_estimator(tiny, images, images, steps=1, log=lambda _: None).save(tmp_path / "est")

    out = tmp_path / "vae"
    argv = ["--widths", "8,8", "--steps", "2", "--batch-size", "2", "--pairs", "2", "--test-pairs", "1"]
    argv += ["--probe-people", "1", "--checkpoint-every", "1", "--face-scale", "1.4", "--out", str(out)]
    assert run(synthetic_vae.main, [*argv, "--estimator", str(tmp_path / "none")]) == 2
    assert "no synthetic estimator" in capsys.readouterr().err and not out.exists()  # refused before training
    assert run(synthetic_vae.main, [*argv, "--estimator", str(tmp_path / "est")]) == 0
    first = json.loads((out / "result.json").read_text())
    assert first["steps_done"] == 2 and first["config"]["face_scale"] == 1.4
    assert set(first["au_change_vs_vae_error_255"]) == set(synthetic_vae.PROBED_AUS)
    assert all(np.isfinite(r["estimated_kept"]) for r in first["au_change_vs_vae_error_255"].values())
    assert (out / "reconstruction.png").is_file()
    assert run(synthetic_vae.main, [*argv[:3], "4", *argv[4:]]) == 0  # more steps: resumes, measures again
    assert "resumed from step 2" in capsys.readouterr().out
    assert json.loads((out / "result.json").read_text())["steps_done"] == 4
    # measured again alone: the faces' scale is the export's, not the default world's
    assert (
        run(
            synthetic_vae.main,
            ["--measure-only", "--test-pairs", "1", "--probe-people", "1", "--out", str(out)],
        )
        == 0
    )
    assert json.loads((out / "result.json").read_text())["face_scale"] == 1.4


def test_a_magicface_checkpoint_lends_its_vae(tmp_path):
    from magicface_jax import checkpoint, demo

    images = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), np.uint8)
    info = checkpoint.read_info(demo.DEMO_MODEL)
    expected = autoencoder.reconstruct(
        info.config.vae, checkpoint.read_params(demo.DEMO_MODEL, "vae"), images
    )
    round_trip = autoencoder.round_trip(demo.DEMO_MODEL, resolution=64, face_scale=demo.face_scale())
    np.testing.assert_array_equal(round_trip(images), expected)
    scale = demo.face_scale()
    other = 1.0 if scale != 1.0 else 1.4
    refusal = f"faces at scale {scale:g}, not {other:g}: pass --face-scale {scale:g}"
    with pytest.raises(MagicFaceError, match=re.escape(refusal)):
        autoencoder.round_trip(demo.DEMO_MODEL, face_scale=other)
    with pytest.raises(MagicFaceError, match="holds no VAE: give a VAE export"):
        autoencoder.frozen_vae(tmp_path)
