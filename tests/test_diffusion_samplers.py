"""Each sampler against diffusers' PyTorch scheduler, step by step, on a fixed sequence of model outputs.

The references run in float64 with diffusers' float32 tables (σ or ᾱ) promoted to float64: the same
values, so the comparison measures our float32 arithmetic, not diffusers' float32 coefficient rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from magicface_jax.diffusion import (
    SAMPLERS,
    SD15_SCHEDULER_CONFIG,
    DDIMSampler,
    NoiseSchedule,
    make_sampler,
    sample_loop,
)
from magicface_jax.errors import MagicFaceError

REFERENCES = {
    "unipc": UniPCMultistepScheduler,
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
}
STEPS = (1, 2, 8, 25, 50)
SHAPE = (2, 8, 8, 4)
RTOL = 1e-5
SD15 = NoiseSchedule.from_diffusers(SD15_SCHEDULER_CONFIG)
V_PRED = NoiseSchedule.from_diffusers({**SD15_SCHEDULER_CONFIG, "prediction_type": "v_prediction"})


def _schedule(**changes) -> NoiseSchedule:
    return NoiseSchedule.from_diffusers({**SD15_SCHEDULER_CONFIG, **changes})


def _reference(name, schedule, steps, options):
    """diffusers' scheduler with the same options; ours default UniPC to the 0.25.1 final noise level."""
    options = dict(options)
    eta = options.pop("eta", 0.0)
    if name == "unipc":
        options.setdefault("final_sigmas_type", "sigma_min")
    ref = REFERENCES[name].from_config(schedule.to_dict(), **options)
    ref.set_timesteps(steps)
    if name == "ddim":
        ref.alphas_cumprod = ref.alphas_cumprod.double()
        ref.final_alpha_cumprod = torch.as_tensor(ref.final_alpha_cumprod).double()
    else:
        ref.sigmas = ref.sigmas.double()
    return ref, eta


def _max_relative_error(name, schedule, steps, options=None, seed=0) -> float:
    """Run ours and diffusers on the same noise and model outputs; the worst relative error over steps."""
    options = options or {}
    sampler = make_sampler(name, schedule, steps, **options)
    ref, eta = _reference(name, schedule, steps, options)
    np.testing.assert_array_equal(sampler.timesteps, ref.timesteps.numpy().astype(np.float32))
    assert sampler.num_inference_steps == steps
    np.testing.assert_allclose(sampler.init_noise_sigma, float(ref.init_noise_sigma), rtol=1e-6)

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    state = sampler.init_state(jnp.asarray(noise), key)
    x_ref = torch.from_numpy(noise).double() * ref.init_noise_sigma

    def rel(ours, theirs):
        theirs = theirs.numpy()
        return float(np.abs(np.asarray(ours, np.float64) - theirs).max() / np.abs(theirs).max())

    worst = 0.0
    for i, t in enumerate(ref.timesteps):
        worst = max(worst, rel(sampler.scale_model_input(state.latents, i), ref.scale_model_input(x_ref, t)))
        out = rng.standard_normal(SHAPE).astype(np.float32)
        state = sampler.step(state, jnp.asarray(out), i)
        kwargs = {}
        if name == "ddim":
            kwargs["eta"] = eta
            if eta > 0:
                z = np.asarray(DDIMSampler.step_noise(key, i, SHAPE))
                kwargs["variance_noise"] = torch.from_numpy(z.copy()).double()
        x_ref = ref.step(torch.from_numpy(out).double(), t, x_ref, **kwargs).prev_sample
        assert state.latents.dtype == jnp.float32
        worst = max(worst, rel(state.latents, x_ref))
    return worst


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("unipc", {}),
        ("unipc", {"final_sigmas_type": "zero"}),
        ("ddim", {}),
        ("ddim", {"eta": 0.7}),
        ("dpm++", {}),
        ("dpm++", {"final_sigmas_type": "sigma_min"}),
        ("euler", {}),
    ],
)
def test_matches_diffusers_step_by_step(name, options, steps):
    assert _max_relative_error(name, SD15, steps, options) <= RTOL


@pytest.mark.parametrize(
    ("name", "schedule", "options"),
    [
        ("unipc", SD15, {"solver_order": 1}),
        ("unipc", SD15, {"solver_order": 3}),
        ("unipc", SD15, {"solver_type": "bh1"}),
        ("unipc", SD15, {"lower_order_final": False}),
        ("unipc", SD15, {"disable_corrector": (0, 3)}),
        ("unipc", _schedule(timestep_spacing="leading"), {}),
        ("unipc", _schedule(timestep_spacing="trailing"), {}),
        ("unipc", V_PRED, {}),
        ("ddim", _schedule(set_alpha_to_one=True), {}),
        ("ddim", _schedule(timestep_spacing="linspace"), {"eta": 1.0}),
        ("ddim", _schedule(timestep_spacing="trailing"), {}),
        ("ddim", V_PRED, {"eta": 0.3}),
        ("dpm++", SD15, {"solver_type": "heun"}),
        ("dpm++", SD15, {"solver_order": 1}),
        ("dpm++", SD15, {"euler_at_final": True, "final_sigmas_type": "sigma_min"}),
        ("dpm++", SD15, {"lower_order_final": False, "final_sigmas_type": "sigma_min"}),
        ("dpm++", _schedule(timestep_spacing="leading"), {}),
        ("dpm++", V_PRED, {}),
        ("euler", SD15, {"final_sigmas_type": "sigma_min"}),
        ("euler", _schedule(timestep_spacing="leading"), {}),
        ("euler", _schedule(timestep_spacing="trailing"), {}),
        ("euler", V_PRED, {}),
    ],
)
@pytest.mark.parametrize("steps", [3, 12, 20])
def test_options_match_diffusers(name, schedule, options, steps):
    assert _max_relative_error(name, schedule, steps, options) <= RTOL


def _denoise(x, t):
    """A stand-in model: nonlinear in x, depends on t, well conditioned."""
    return 0.8 * jnp.tanh(x) + 0.2 * jnp.sin(t / 100.0)


@pytest.mark.parametrize(("name", "options"), [(n, {}) for n in SAMPLERS] + [("ddim", {"eta": 0.5})])
def test_sample_loop_under_jit_equals_python_loop(name, options):
    sampler = make_sampler(name, SD15, 8, **options)
    noise = jax.random.normal(jax.random.key(3), SHAPE)
    key = jax.random.key(4)

    # The sampler is a pytree: it goes through jit as an argument, its options stay static.
    looped = jax.jit(lambda s, x, k: sample_loop(s, _denoise, x, k))(sampler, noise, key)

    state = sampler.init_state(noise, key)
    for i in range(sampler.num_inference_steps):
        out = _denoise(sampler.scale_model_input(state.latents, i), sampler.timesteps[i])
        state = sampler.step(state, out, i)
    np.testing.assert_allclose(looped, state.latents, rtol=1e-5, atol=1e-5)
    assert looped.shape == SHAPE and looped.dtype == jnp.float32


@pytest.mark.parametrize("name", SAMPLERS)
def test_state_stays_float32_with_a_bfloat16_model(name):
    sampler = make_sampler(name, SD15, 4)
    noise = jax.random.normal(jax.random.key(0), SHAPE, jnp.bfloat16)
    out = jax.jit(lambda x: sample_loop(sampler, lambda x, t: _denoise(x, t).astype(jnp.bfloat16), x))(noise)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize(
    ("name", "steps", "options", "schedule", "message"),
    [
        ("heun", 8, {}, SD15, "unknown sampler 'heun': expected one of unipc, ddim, dpm\\+\\+, euler"),
        ("unipc", 0, {}, SD15, "num_inference_steps=0: expected between 1 and"),
        ("ddim", 1001, {}, SD15, "num_inference_steps=1001: expected between 1 and .* \\(1000\\)"),
        ("euler", 2.5, {}, SD15, "num_inference_steps=2.5: expected an integer"),
        ("unipc", 8, {"order": 2}, SD15, "unknown option\\(s\\) order for sampler 'unipc'"),
        ("euler", 8, {"eta": 0.5}, SD15, "unknown option\\(s\\) eta for sampler 'euler'"),
        ("unipc", 8, {"solver_order": 4}, SD15, "solver_order=4"),
        ("dpm++", 8, {"solver_order": 3}, SD15, "solver_order=3"),
        ("unipc", 8, {"solver_type": "midpoint"}, SD15, "unknown solver_type 'midpoint'"),
        ("euler", 8, {"final_sigmas_type": "min"}, SD15, "unknown final_sigmas_type 'min'"),
        ("ddim", 8, {"eta": -0.1}, SD15, "eta=-0.1"),
        ("unipc", 8, {"final_sigmas_type": "zero", "lower_order_final": False}, SD15, "lower_order_final"),
        ("unipc", 1000, {}, SD15, "repeats a timestep; use fewer steps"),
        ("ddim", 1000, {}, SD15, "reach timestep 1000, past the last trained one"),
    ],
)
def test_bad_options_raise(name, steps, options, schedule, message):
    with pytest.raises(MagicFaceError, match=message):
        make_sampler(name, schedule, steps, **options)


def test_stochastic_ddim_needs_a_key():
    sampler = make_sampler("ddim", SD15, 4, eta=0.5)
    with pytest.raises(MagicFaceError, match="pass a PRNG key as rng"):
        sampler.init_state(jnp.zeros(SHAPE))
    # Different keys, different samples; the same key, the same sample.
    run = jax.jit(lambda key: sample_loop(sampler, _denoise, jnp.zeros(SHAPE), key))
    a, b, c = (run(jax.random.key(k)) for k in (0, 1, 0))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, c)
