"""The training noise schedule and the training-time helpers built on it.

`NoiseSchedule` holds what a diffusers scheduler config says about the forward process (betas, number of
training steps, what the model predicts, timestep offsets). The noise levels are computed in float32 the
way diffusers computes them, so a model trained with diffusers sees the same levels here (to float32
rounding: torch's vectorised `linspace` may round a beta differently by one ulp).

The helpers `add_noise`, `training_target` and `snr` are pure functions of a schedule and arrays, usable
under `jax.jit` with traced timesteps; latents are NHWC, timesteps an int array of shape (B,) or ().
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from magicface_jax.errors import MagicFaceError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")

# Stable Diffusion 1.5's `scheduler/scheduler_config.json`, the schedule MagicFace was trained with.
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """A discrete variance-preserving noise schedule. Defaults are diffusers' scheduler defaults.

    `steps_offset` and `set_alpha_to_one` only matter to the samplers that read them (DDIM, and
    "leading" timestep spacing); `timestep_spacing=None` lets each sampler use its own default, as
    diffusers' `Scheduler.from_config` does when a config does not name one.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    steps_offset: int = 0
    set_alpha_to_one: bool = True
    timestep_spacing: str | None = None

    def __post_init__(self):
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 2:
            raise MagicFaceError(
                f"num_train_timesteps={self.num_train_timesteps!r}: expected an integer of at least 2"
            )
        if self.beta_schedule not in BETA_SCHEDULES:
            raise MagicFaceError(
                f"unknown beta_schedule {self.beta_schedule!r}: expected one of {', '.join(BETA_SCHEDULES)}"
            )
        if self.beta_schedule != "squaredcos_cap_v2" and not 0 < self.beta_start <= self.beta_end < 1:
            raise MagicFaceError(
                f"beta_start={self.beta_start!r}, beta_end={self.beta_end!r}: expected "
                "0 < beta_start <= beta_end < 1"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise MagicFaceError(
                f"unknown prediction_type {self.prediction_type!r}: expected one of "
                f"{', '.join(PREDICTION_TYPES)}"
            )
        if not isinstance(self.steps_offset, int) or self.steps_offset < 0:
            raise MagicFaceError(f"steps_offset={self.steps_offset!r}: expected a non-negative integer")
        if self.timestep_spacing is not None and self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise MagicFaceError(
                f"unknown timestep_spacing {self.timestep_spacing!r}: expected one of "
                f"{', '.join(TIMESTEP_SPACINGS)}"
            )

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any] | str | os.PathLike) -> NoiseSchedule:
        """Read a diffusers scheduler config: a dict, a `scheduler_config.json`, or a folder holding one.

        Keys this schedule does not describe (the class name, solver settings, `clip_sample`, ...) are
        ignored: samplers take their own options in `make_sampler`. Features we do not implement
        (`trained_betas`, `rescale_betas_zero_snr`) raise instead of being dropped silently.
        """
        if not isinstance(config, Mapping):
            config = _read_config_file(config)
        if config.get("trained_betas") is not None:
            raise MagicFaceError(
                "scheduler config sets trained_betas, which is not supported: give beta_start, beta_end "
                "and beta_schedule instead"
            )
        if config.get("rescale_betas_zero_snr"):
            raise MagicFaceError("scheduler config sets rescale_betas_zero_snr, which is not supported")
        defaults = cls()
        return cls(
            num_train_timesteps=int(config.get("num_train_timesteps", defaults.num_train_timesteps)),
            beta_start=float(config.get("beta_start", defaults.beta_start)),
            beta_end=float(config.get("beta_end", defaults.beta_end)),
            beta_schedule=config.get("beta_schedule", defaults.beta_schedule),
            prediction_type=config.get("prediction_type", defaults.prediction_type),
            steps_offset=int(config.get("steps_offset", defaults.steps_offset)),
            set_alpha_to_one=bool(config.get("set_alpha_to_one", defaults.set_alpha_to_one)),
            timestep_spacing=config.get("timestep_spacing", defaults.timestep_spacing),
        )

    def to_dict(self) -> dict[str, Any]:
        """A diffusers scheduler config: `<Scheduler>.from_config(d)` builds diffusers' counterpart of our
        sampler of that kind with its default options (except UniPC's `final_sigmas_type`, see `unipc`)."""
        out: dict[str, Any] = {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": self.beta_schedule,
            "trained_betas": None,
            "prediction_type": self.prediction_type,
            "steps_offset": self.steps_offset,
            "set_alpha_to_one": self.set_alpha_to_one,
            "clip_sample": False,  # no sampler here clips x0 (DDIM's diffusers default does)
        }
        if self.timestep_spacing is not None:
            out["timestep_spacing"] = self.timestep_spacing
        return out

    @property
    def betas(self) -> np.ndarray:
        """(num_train_timesteps,) float32, as diffusers computes them."""
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            return np.linspace(self.beta_start, self.beta_end, n).astype(np.float32)
        if self.beta_schedule == "scaled_linear":
            # Squared in float32, as diffusers does.
            return np.linspace(self.beta_start**0.5, self.beta_end**0.5, n).astype(np.float32) ** 2

        # "squaredcos_cap_v2": the cosine schedule of improved DDPM, each beta capped at 0.999.
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], np.float32
        )

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ_t, (num_train_timesteps,) float32. torch accumulates a float32 cumprod in float64; so do we."""
        alphas = (np.float32(1.0) - self.betas).astype(np.float64)
        return np.cumprod(alphas).astype(np.float32)

    @property
    def sigmas(self) -> np.ndarray:
        """σ_t = sqrt((1 − ᾱ_t) / ᾱ_t), the noise-to-signal ratio, (num_train_timesteps,) float32."""
        ac = self.alphas_cumprod
        return np.sqrt((np.float32(1.0) - ac) / ac)


def _read_config_file(path: str | os.PathLike) -> Mapping[str, Any]:
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "scheduler_config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except OSError as e:
        raise MagicFaceError(f"cannot read scheduler config {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise MagicFaceError(f"scheduler config {path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise MagicFaceError(f"scheduler config {path} must hold a JSON object")
    return config


def _per_example(values: jax.Array, like: jax.Array) -> jax.Array:
    """Reshape (B,) or () coefficients to broadcast against `like` (B, ...), in `like`'s dtype."""
    values = values.astype(like.dtype)
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def _alpha_sigma(schedule: NoiseSchedule, t: jax.Array, like: jax.Array) -> tuple[jax.Array, jax.Array]:
    ac = jnp.asarray(schedule.alphas_cumprod)[t]
    return _per_example(jnp.sqrt(ac), like), _per_example(jnp.sqrt(1.0 - ac), like)


def add_noise(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """q(x_t | x_0): sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·noise, with t an int array of shape (B,) or ()."""
    alpha, sigma = _alpha_sigma(schedule, t, x0)
    return alpha * x0 + sigma * noise


def training_target(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """What the model learns to predict at (x_t, t): the noise, or v = sqrt(ᾱ_t)·noise − sqrt(1 − ᾱ_t)·x0."""
    if schedule.prediction_type == "epsilon":
        return noise
    alpha, sigma = _alpha_sigma(schedule, t, x0)
    return alpha * noise - sigma * x0


def snr(schedule: NoiseSchedule, t: jax.Array) -> jax.Array:
    """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) at int timesteps t (for loss weighting such as min-SNR)."""
    ac = jnp.asarray(schedule.alphas_cumprod)[t]
    return ac / (1.0 - ac)
