"""The common sampler interface, `make_sampler`, and `sample_loop`, the whole loop as one `lax.scan`.

A sampler is an immutable pytree built on the host: its `timesteps` and per-step coefficient tables are
arrays, its options static. Its state (latents plus the solver's history) is a pytree of float32 arrays
with static shapes, carried by `lax.scan`; `step` takes the step index `i` as a traced int.

    sampler = make_sampler("unipc", schedule, 50)
    latents = sample_loop(sampler, denoise_fn, noise)  # denoise_fn(latents_in, timestep) -> model output

Guidance belongs in `denoise_fn`: it returns the guided model output for the batch of latents it gets.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp

from magicface_jax.diffusion.ddim import ddim_sampler
from magicface_jax.diffusion.dpm_solver import dpm_solver_sampler
from magicface_jax.diffusion.euler import euler_sampler
from magicface_jax.diffusion.schedule import NoiseSchedule
from magicface_jax.diffusion.unipc import unipc_sampler
from magicface_jax.errors import MagicFaceError

_BUILDERS: dict[str, Callable[..., Any]] = {
    "unipc": unipc_sampler,
    "ddim": ddim_sampler,
    "dpm++": dpm_solver_sampler,
    "euler": euler_sampler,
}
SAMPLERS = tuple(_BUILDERS)


class SamplerState(Protocol):
    latents: jax.Array  # (B, h, w, C) float32: the current sample


class Sampler(Protocol):
    """What every sampler offers. `i` is the step index, 0 .. num_inference_steps − 1, traced or not."""

    name: ClassVar[str]
    timesteps: jax.Array  # (steps,) float32: the timestep to give the model at step i
    init_noise_sigma: float  # standard deviation of the initial noise the sampler expects

    @property
    def num_inference_steps(self) -> int: ...

    def init_state(self, noise: jax.Array, rng: jax.Array | None = None) -> SamplerState:
        """The state before step 0 from unit Gaussian noise (scaled here by `init_noise_sigma`)."""
        ...

    def scale_model_input(self, x: jax.Array, i: jax.Array) -> jax.Array:
        """The model's input at step i for latents x (identity except for Euler)."""
        ...

    def step(self, state: SamplerState, model_output: jax.Array, i: jax.Array) -> SamplerState:
        """Advance from step i to i + 1 given the model output for `scale_model_input(state.latents, i)`."""
        ...


def check_sampler(name: object) -> str:
    """A sampler's name, or a clear error: the one check of it, at the edge and when a sampler is built."""
    if not isinstance(name, str) or name not in _BUILDERS:
        raise MagicFaceError(f"unknown sampler {name!r}: expected one of {', '.join(SAMPLERS)}")
    return name


def make_sampler(name: str, schedule: NoiseSchedule, num_inference_steps: int, **options: Any) -> Sampler:
    """Build sampler `name` ("unipc", "ddim", "dpm++", "euler") for `num_inference_steps` steps.

    `options` are the sampler's own (see `unipc_sampler`, `ddim_sampler`, `dpm_solver_sampler`,
    `euler_sampler`); the defaults reproduce diffusers' `<Scheduler>.from_config(schedule.to_dict())`,
    except UniPC's final noise level, which follows the diffusers version MagicFace was released with.
    """
    builder = _BUILDERS[check_sampler(name)]
    allowed = [p.name for p in inspect.signature(builder).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise MagicFaceError(
            f"unknown option(s) {', '.join(unknown)} for sampler {name!r}: "
            f"expected {', '.join(allowed) if allowed else 'none'}"
        )
    return builder(schedule, num_inference_steps, **options)


def sample_loop(
    sampler: Sampler,
    denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
    noise: jax.Array,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Run every step in one `lax.scan` and return the final latents (float32).

    `noise`: unit Gaussian noise (B, h, w, C); `denoise_fn(latents_in, timestep)` gets the scaled latents
    and a scalar float32 timestep and returns the model output (guided, if guidance is wanted) for them;
    `rng`: the key of a stochastic sampler (DDIM with eta > 0). Call it under `jax.jit`.
    """

    def body(state, i):
        latents_in = sampler.scale_model_input(state.latents, i)
        return sampler.step(state, denoise_fn(latents_in, sampler.timesteps[i]), i), None

    steps = jnp.arange(sampler.num_inference_steps)
    state, _ = jax.lax.scan(body, sampler.init_state(noise, rng), steps)
    return state.latents
