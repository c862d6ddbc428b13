"""Euler's method on the probability-flow ODE in σ-space (Karras et al. 2022), deterministic.

Matches diffusers' `EulerDiscreteScheduler` (no churn, linear σ interpolation). It works on x/sqrt(σ²+1)-
scaled latents: the initial noise has standard deviation `init_noise_sigma`, and the model input is
x/sqrt(σ_i² + 1) (`scale_model_input`). With "linspace" spacing the timesteps are fractional, and the model
is called at those fractional timesteps as in diffusers.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import numpy as np
from flax import struct

from magicface_jax.diffusion import _common as c
from magicface_jax.diffusion.schedule import NoiseSchedule


@struct.dataclass
class EulerState:
    latents: jax.Array


@struct.dataclass
class EulerSampler:
    """Per step i: x_{i+1} = a·x_i + b·model_output (a = 1, b = σ_{i+1} − σ_i for ε-prediction)."""

    timesteps: jax.Array  # (steps,) float32, fractional with "linspace" spacing
    input_scale: jax.Array  # (steps,): 1/sqrt(σ_i² + 1)
    update: jax.Array  # (steps, 2): row · (x_i, model output)
    init_noise_sigma: float = struct.field(pytree_node=False)

    name: ClassVar[str] = "euler"

    @property
    def num_inference_steps(self) -> int:
        return self.timesteps.shape[0]

    def init_state(self, noise: jax.Array, rng: jax.Array | None = None) -> EulerState:
        """The state before step 0: unit Gaussian `noise` scaled by `init_noise_sigma`. Draws no noise."""
        del rng
        return EulerState(latents=c.as_state_dtype(noise) * self.init_noise_sigma)

    def scale_model_input(self, x: jax.Array, i: jax.Array) -> jax.Array:
        return x * self.input_scale[i]

    def step(self, state: EulerState, model_output: jax.Array, i: jax.Array) -> EulerState:
        return EulerState(latents=c.lincomb(self.update[i], state.latents, c.as_state_dtype(model_output)))


def euler_sampler(
    schedule: NoiseSchedule, num_inference_steps: int, *, final_sigmas_type: str = "zero"
) -> EulerSampler:
    """Euler as diffusers' `EulerDiscreteScheduler` computes it with the same options."""
    n = c.check_steps(num_inference_steps, schedule.num_train_timesteps)
    spacing = c.spacing(schedule, "linspace")
    # diffusers holds these timesteps in float32 and interpolates σ at the rounded values.
    timesteps = c.single_timesteps(schedule, n, spacing).astype(np.float32).astype(np.float64)
    sig = c.sigmas_at(schedule, timesteps, final_sigmas_type)

    update = []
    for i in range(n):
        dt = sig[i + 1] - sig[i]
        if schedule.prediction_type == "epsilon":  # dx/dσ = ε
            update.append([1.0, dt])
        else:
            # x0 = x/(σ²+1) − σ·v/sqrt(σ²+1), so dx/dσ = (x − x0)/σ = σ·x/(σ²+1) + v/sqrt(σ²+1)
            s2 = sig[i] ** 2 + 1.0
            update.append([1.0 + dt * sig[i] / s2, dt / np.sqrt(s2)])

    # diffusers: the largest σ for "linspace" and "trailing" spacing, sqrt(σ² + 1) for "leading".
    init_sigma = sig.max() if spacing in ("linspace", "trailing") else np.sqrt(sig.max() ** 2 + 1.0)
    return EulerSampler(
        timesteps=c.table(timesteps),
        input_scale=c.table(1.0 / np.sqrt(sig[:-1] ** 2 + 1.0)),
        update=c.table(update),
        init_noise_sigma=float(np.float32(init_sigma)),
    )
