"""Pieces shared by the samplers: step counts, timestep grids, noise levels, coefficient tables.

Every sampler here is linear in its state and the model output at each step, with coefficients that depend
only on the step. So each one computes its algorithm once, on the host in NumPy float64, as a per-step
coefficient table; its traced `step` gathers the table's row for the step and does a few multiply-adds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from magicface_jax.diffusion.schedule import TIMESTEP_SPACINGS, NoiseSchedule
from magicface_jax.errors import MagicFaceError

FINAL_SIGMAS_TYPES = ("sigma_min", "zero")
STATE_DTYPE = jnp.float32


def check_steps(num_inference_steps: object, num_train_timesteps: int | None = None) -> int:
    """The number of sampling steps as an int, or a clear error: the one check of a step count, at the edge
    (where the schedule may not be known yet) and again when a sampler is built."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int | np.integer):
        raise MagicFaceError(f"num_inference_steps={num_inference_steps!r}: expected an integer")
    n = int(num_inference_steps)
    if num_train_timesteps is None and n < 1:
        raise MagicFaceError(f"num_inference_steps={n}: expected at least 1")
    if num_train_timesteps is not None and not 1 <= n <= num_train_timesteps:
        raise MagicFaceError(
            f"num_inference_steps={n}: expected between 1 and the schedule's "
            f"num_train_timesteps ({num_train_timesteps})"
        )
    return n


def spacing(schedule: NoiseSchedule, default: str) -> str:
    """The schedule's timestep spacing, or the sampler's own default when the schedule names none."""
    return schedule.timestep_spacing if schedule.timestep_spacing is not None else default


def check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise MagicFaceError(f"unknown {name} {value!r}: expected one of {', '.join(map(repr, choices))}")


def grid_timesteps(schedule: NoiseSchedule, n: int, spacing_: str) -> np.ndarray:
    """Timesteps of the multistep solvers (UniPC, DPM-Solver++), int64, decreasing.

    These place n + 1 points on [0, T) and drop the last one ("linspace", "leading"), so the final step
    ends on the noise level of timestep 0 or zero, not on a sampled timestep.
    """
    check_choice("timestep_spacing", spacing_, TIMESTEP_SPACINGS)
    t_train = schedule.num_train_timesteps
    if spacing_ == "linspace":
        t = np.linspace(0, t_train - 1, n + 1).round()[::-1][:-1]
    elif spacing_ == "leading":
        t = (np.arange(n + 1) * (t_train // (n + 1)))[::-1][:-1] + schedule.steps_offset
    else:
        t = _trailing(t_train, n)
    return _in_range(schedule, t, spacing_).astype(np.int64)


def single_timesteps(schedule: NoiseSchedule, n: int, spacing_: str) -> np.ndarray:
    """Timesteps of the one-step samplers (DDIM, Euler), float64, decreasing, not rounded for "linspace"."""
    check_choice("timestep_spacing", spacing_, TIMESTEP_SPACINGS)
    t_train = schedule.num_train_timesteps
    if spacing_ == "linspace":
        t = np.linspace(0, t_train - 1, n)[::-1].copy()
    elif spacing_ == "leading":
        t = (np.arange(n) * (t_train // n))[::-1] + schedule.steps_offset
    else:
        t = _trailing(t_train, n)
    return _in_range(schedule, t, spacing_).astype(np.float64)


def _trailing(t_train: int, n: int) -> np.ndarray:
    # Equal to diffusers' `round(arange(T, 0, -T / n)) - 1`, without arange's float length rounding.
    return np.round(t_train - np.arange(n) * (t_train / n)) - 1


def _in_range(schedule: NoiseSchedule, timesteps: np.ndarray, spacing_: str) -> np.ndarray:
    # Only "leading" can overflow: its steps_offset shifts the grid up by a few timesteps.
    if timesteps.max() >= schedule.num_train_timesteps:
        raise MagicFaceError(
            f"{len(timesteps)} steps with {spacing_!r} spacing and steps_offset={schedule.steps_offset} "
            f"reach timestep {int(timesteps.max())}, past the last trained one "
            f"({schedule.num_train_timesteps - 1}); use fewer steps or another timestep_spacing"
        )
    return timesteps


def require_distinct(name: str, timesteps: np.ndarray, n: int, spacing_: str) -> None:
    """Multistep solvers divide by the log-SNR gap between steps: two equal timesteps would give NaN."""
    if np.any(np.diff(timesteps) >= 0):
        raise MagicFaceError(
            f"{name} with {n} steps and {spacing_!r} timestep spacing repeats a timestep; use fewer steps"
        )


def sigmas_at(schedule: NoiseSchedule, timesteps: np.ndarray, final: str) -> np.ndarray:
    """Noise-to-signal ratios σ at `timesteps` (interpolated between integers), then a final σ, float64.

    The values are rounded to float32 as diffusers stores them; `final` is "sigma_min" (σ of timestep 0)
    or "zero".
    """
    check_choice("final_sigmas_type", final, FINAL_SIGMAS_TYPES)
    table = schedule.sigmas
    sig = np.interp(timesteps, np.arange(len(table)), table)
    sig = np.concatenate([sig, [table[0] if final == "sigma_min" else 0.0]])
    return sig.astype(np.float32).astype(np.float64)


def vp_coefficients(sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(α_t, σ_t, λ_t) of x_t = α_t·x0 + σ_t·ε for noise-to-signal ratios σ; λ = log(α/σ) is inf at σ = 0."""
    alpha = 1.0 / np.sqrt(sigma**2 + 1.0)
    with np.errstate(divide="ignore"):
        lam = -np.log(sigma)
    return alpha, sigma * alpha, lam


def lincomb(coefficients: jax.Array, *terms: jax.Array) -> jax.Array:
    """Σ_k coefficients[k]·terms[k]: one step of a sampler, given its row of the coefficient table."""
    out = coefficients[0] * terms[0]
    for k in range(1, len(terms)):
        out = out + coefficients[k] * terms[k]
    return out


def as_state_dtype(x: jax.Array) -> jax.Array:
    """Samplers keep their state in float32, whatever the model computes in."""
    return jnp.asarray(x, STATE_DTYPE)


def table(rows: list[list[float]] | np.ndarray) -> jax.Array:
    """A per-step coefficient table (steps, terms) computed in float64 on the host, stored as float32."""
    return jnp.asarray(np.asarray(rows, np.float64), STATE_DTYPE)
