"""DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095), multistep, order 2 by default ("DPM++ 2M").

Matches diffusers' `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`. Defaults are that
class's defaults in current diffusers, including `final_sigmas_type="zero"` (the last step returns the x0
prediction); diffusers 0.25.1 ended on the noise level of timestep 0 instead, available as "sigma_min".
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from magicface_jax.diffusion import _common as c
from magicface_jax.diffusion.schedule import NoiseSchedule
from magicface_jax.errors import MagicFaceError

SOLVER_TYPES = ("midpoint", "heun")


@struct.dataclass
class DPMSolverState:
    latents: jax.Array
    outputs: tuple[jax.Array, ...]  # x0 prediction of the previous step (none at order 1)


@struct.dataclass
class DPMSolverSampler:
    """Per step i: m = x0 predicted from (x_i, model output); x_{i+1} = a·x_i + b·m + c·m_{i−1}."""

    timesteps: jax.Array  # (steps,) float32, integer-valued
    convert: jax.Array  # (steps, 2): m = row · (x_i, model output)
    update: jax.Array  # (steps, 1 + order): row · (x_i, m, m_{i-1})
    solver_order: int = struct.field(pytree_node=False)

    name: ClassVar[str] = "dpm++"
    init_noise_sigma: ClassVar[float] = 1.0

    @property
    def num_inference_steps(self) -> int:
        return self.timesteps.shape[0]

    def init_state(self, noise: jax.Array, rng: jax.Array | None = None) -> DPMSolverState:
        """The state before step 0; `noise` is unit Gaussian noise. This solver draws no noise."""
        del rng
        x = c.as_state_dtype(noise) * self.init_noise_sigma
        return DPMSolverState(latents=x, outputs=(jnp.zeros_like(x),) * (self.solver_order - 1))

    def scale_model_input(self, x: jax.Array, i: jax.Array) -> jax.Array:
        del i
        return x

    def step(self, state: DPMSolverState, model_output: jax.Array, i: jax.Array) -> DPMSolverState:
        x = state.latents
        m = c.lincomb(self.convert[i], x, c.as_state_dtype(model_output))
        x_next = c.lincomb(self.update[i], x, m, *state.outputs)
        return DPMSolverState(latents=x_next, outputs=(m, *state.outputs)[: self.solver_order - 1])


def dpm_solver_sampler(
    schedule: NoiseSchedule,
    num_inference_steps: int,
    *,
    solver_order: int = 2,
    solver_type: str = "midpoint",
    lower_order_final: bool = True,
    euler_at_final: bool = False,
    final_sigmas_type: str = "zero",
) -> DPMSolverSampler:
    """DPM-Solver++ as diffusers computes it with the same options (orders 1 and 2)."""
    n = c.check_steps(num_inference_steps, schedule.num_train_timesteps)
    if isinstance(solver_order, bool) or solver_order not in (1, 2):
        raise MagicFaceError(f"solver_order={solver_order!r}: DPM-Solver++ supports orders 1 and 2 here")
    c.check_choice("solver_type", solver_type, SOLVER_TYPES)
    c.check_choice("final_sigmas_type", final_sigmas_type, c.FINAL_SIGMAS_TYPES)
    spacing = c.spacing(schedule, "linspace")
    timesteps = c.grid_timesteps(schedule, n, spacing)
    c.require_distinct("dpm++", timesteps, n, spacing)
    sig = c.sigmas_at(schedule, timesteps, final_sigmas_type)
    alpha, sigma, lam = c.vp_coefficients(sig)

    convert, update = [], []
    for i in range(n):
        if schedule.prediction_type == "epsilon":
            convert.append([1.0 / alpha[i], -sigma[i] / alpha[i]])
        else:
            convert.append([alpha[i], -sigma[i]])
        # First order at the start, and on the last step when asked to or when it ends at σ = 0 (where the
        # second-order term would divide by an infinite step).
        last = i == n - 1 and (
            euler_at_final or (lower_order_final and n < 15) or final_sigmas_type == "zero"
        )
        h = lam[i + 1] - lam[i]
        phi = math.expm1(-h)  # e^{−h} − 1
        row = [sigma[i + 1] / sigma[i], -alpha[i + 1] * phi] + [0.0] * (solver_order - 1)
        if solver_order == 2 and i > 0 and not last:
            # D1 = (m0 − m1)/r0, r0 = h_{i−1}/h; midpoint weighs it by −α·φ/2, heun by α·(φ/h + 1).
            r0 = (lam[i] - lam[i - 1]) / h
            weight = (
                -0.5 * alpha[i + 1] * phi if solver_type == "midpoint" else alpha[i + 1] * (phi / h + 1.0)
            )
            row[1] += weight / r0
            row[2] -= weight / r0
        update.append(row)

    return DPMSolverSampler(
        timesteps=c.table(timesteps),
        convert=c.table(convert),
        update=c.table(update),
        solver_order=solver_order,
    )
