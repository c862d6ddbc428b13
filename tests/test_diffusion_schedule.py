"""NoiseSchedule and the training helpers against diffusers' DDPMScheduler."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from magicface_jax.diffusion import SD15_SCHEDULER_CONFIG, NoiseSchedule, add_noise, snr, training_target
from magicface_jax.errors import MagicFaceError

SCHEDULES = [
    SD15_SCHEDULER_CONFIG,
    {"beta_schedule": "linear", "num_train_timesteps": 1000},
    {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 500},
    {"beta_schedule": "scaled_linear", "beta_start": 0.001, "beta_end": 0.02, "num_train_timesteps": 37},
]


def test_reads_sd15_config():
    schedule = NoiseSchedule.from_diffusers(SD15_SCHEDULER_CONFIG)
    assert schedule == NoiseSchedule(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        steps_offset=1,
        set_alpha_to_one=False,
        timestep_spacing=None,
    )
    assert NoiseSchedule.from_diffusers(schedule.to_dict()) == schedule
    v = NoiseSchedule(prediction_type="v_prediction", timestep_spacing="trailing")
    assert NoiseSchedule.from_diffusers(v.to_dict()) == v


def test_reads_config_file_and_folder(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_CONFIG))
    expected = NoiseSchedule.from_diffusers(SD15_SCHEDULER_CONFIG)
    assert NoiseSchedule.from_diffusers(tmp_path) == expected
    assert NoiseSchedule.from_diffusers(str(tmp_path / "scheduler_config.json")) == expected
    with pytest.raises(MagicFaceError, match="cannot read scheduler config"):
        NoiseSchedule.from_diffusers(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MagicFaceError, match="not valid JSON"):
        NoiseSchedule.from_diffusers(tmp_path / "bad.json")


@pytest.mark.parametrize("config", SCHEDULES)
def test_noise_levels_match_diffusers(config):
    schedule = NoiseSchedule.from_diffusers(config)
    ref = DDPMScheduler.from_config(schedule.to_dict())
    np.testing.assert_allclose(schedule.betas, ref.betas.numpy(), rtol=1e-6)
    # torch's vectorised float32 linspace may round a beta by one ulp; the products stay within 1e-6.
    np.testing.assert_allclose(schedule.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-6)


@pytest.mark.parametrize("config", SCHEDULES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_helpers_match_diffusers(config, prediction_type):
    schedule = NoiseSchedule.from_diffusers({**config, "prediction_type": prediction_type})
    ref = DDPMScheduler.from_config(schedule.to_dict())
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((4, 8, 8, 4)).astype(np.float32)
    noise = rng.standard_normal((4, 8, 8, 4)).astype(np.float32)
    t = np.array([0, 1, schedule.num_train_timesteps // 2, schedule.num_train_timesteps - 1])

    noisy, target, ratio = jax.jit(
        lambda x0, noise, t: (
            add_noise(schedule, x0, noise, t),
            training_target(schedule, x0, noise, t),
            snr(schedule, t),
        )
    )(x0, noise, t)

    x0_t, noise_t, t_t = torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)
    np.testing.assert_allclose(noisy, ref.add_noise(x0_t, noise_t, t_t).numpy(), rtol=1e-5, atol=1e-6)
    ref_target = noise if prediction_type == "epsilon" else ref.get_velocity(x0_t, noise_t, t_t).numpy()
    np.testing.assert_allclose(target, ref_target, rtol=1e-5, atol=1e-6)
    ac = ref.alphas_cumprod.numpy()[t].astype(np.float64)
    np.testing.assert_allclose(ratio, ac / (1 - ac), rtol=1e-4)


def test_helpers_take_scalar_timestep_and_keep_dtype():
    schedule = NoiseSchedule.from_diffusers(SD15_SCHEDULER_CONFIG)
    x0 = jnp.ones((2, 4, 4, 4), jnp.bfloat16)
    noisy = add_noise(schedule, x0, jnp.zeros_like(x0), jnp.asarray(999))
    assert noisy.dtype == jnp.bfloat16 and noisy.shape == x0.shape
    np.testing.assert_allclose(
        np.asarray(noisy, np.float32), np.sqrt(schedule.alphas_cumprod[999]), rtol=1e-2
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"beta_schedule": "cosine"}, "unknown beta_schedule 'cosine'"),
        ({"prediction_type": "sample"}, "unknown prediction_type 'sample'"),
        ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
        ({"timestep_spacing": "uniform"}, "unknown timestep_spacing 'uniform'"),
        ({"num_train_timesteps": 1}, "num_train_timesteps=1"),
        ({"beta_start": 0.02, "beta_end": 0.01}, "beta_start=0.02"),
        ({"steps_offset": -1}, "steps_offset=-1"),
    ],
)
def test_bad_schedule_configs_raise(config, message):
    with pytest.raises(MagicFaceError, match=message):
        NoiseSchedule.from_diffusers(config)
