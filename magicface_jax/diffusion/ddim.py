"""DDIM (Song et al. 2021, arXiv 2010.02502), deterministic at eta = 0, stochastic with an explicit key.

Matches diffusers' `DDIMScheduler` built from the same schedule without sample clipping or thresholding
(Stable Diffusion's config sets `clip_sample: false`). As there, the step from timestep t goes to
t − T // steps whatever the spacing, and past timestep 0 it goes to ᾱ = 1 if `set_alpha_to_one`, else to
ᾱ_0; the default spacing is "leading" (which adds the schedule's `steps_offset`).
"""

from __future__ import annotations

from typing import ClassVar

import jax
import numpy as np
from flax import struct

from magicface_jax.diffusion import _common as c
from magicface_jax.diffusion.schedule import NoiseSchedule
from magicface_jax.errors import MagicFaceError


@struct.dataclass
class DDIMState:
    latents: jax.Array
    rng: jax.Array | None  # the key step i's noise is folded from; None when eta = 0


@struct.dataclass
class DDIMSampler:
    """Per step i: x_{i+1} = a·x_i + b·model_output + c·z_i, z_i = `step_noise(rng, i, shape)`."""

    timesteps: jax.Array  # (steps,) float32, integer-valued
    update: jax.Array  # (steps, 3): row · (x_i, model output, z_i)
    eta: float = struct.field(pytree_node=False)

    name: ClassVar[str] = "ddim"
    init_noise_sigma: ClassVar[float] = 1.0

    @property
    def num_inference_steps(self) -> int:
        return self.timesteps.shape[0]

    def init_state(self, noise: jax.Array, rng: jax.Array | None = None) -> DDIMState:
        """The state before step 0; `noise` is unit Gaussian noise; `rng` is required when eta > 0."""
        if self.eta > 0 and rng is None:
            raise MagicFaceError(
                f"ddim with eta={self.eta} draws noise at every step: pass a PRNG key as rng"
            )
        return DDIMState(
            latents=c.as_state_dtype(noise) * self.init_noise_sigma, rng=rng if self.eta > 0 else None
        )

    def scale_model_input(self, x: jax.Array, i: jax.Array) -> jax.Array:
        del i
        return x

    @staticmethod
    def step_noise(rng: jax.Array, i: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """The unit Gaussian noise of step i: independent of how the steps are run (scan or loop)."""
        return jax.random.normal(jax.random.fold_in(rng, i), shape, c.STATE_DTYPE)

    def step(self, state: DDIMState, model_output: jax.Array, i: jax.Array) -> DDIMState:
        x = state.latents
        terms = [x, c.as_state_dtype(model_output)]
        if self.eta > 0:
            terms.append(self.step_noise(state.rng, i, x.shape))
        return DDIMState(latents=c.lincomb(self.update[i], *terms), rng=state.rng)


def ddim_sampler(schedule: NoiseSchedule, num_inference_steps: int, *, eta: float = 0.0) -> DDIMSampler:
    """DDIM as diffusers' `DDIMScheduler.step(..., eta=eta)` computes it, without clipping."""
    n = c.check_steps(num_inference_steps, schedule.num_train_timesteps)
    if not 0.0 <= eta <= 1.0:
        raise MagicFaceError(f"eta={eta!r}: expected 0 (deterministic DDIM) to 1 (DDPM-like)")
    timesteps = c.single_timesteps(schedule, n, c.spacing(schedule, "leading")).round().astype(np.int64)
    ac = schedule.alphas_cumprod.astype(np.float64)
    final = 1.0 if schedule.set_alpha_to_one else ac[0]

    update = []
    for t in timesteps:
        prev = t - schedule.num_train_timesteps // n
        a_t, a_prev = ac[t], (ac[prev] if prev >= 0 else final)
        std = eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        direction = np.sqrt(max(1 - a_prev - std**2, 0.0))  # weight of the predicted noise
        if schedule.prediction_type == "epsilon":
            # x0 = (x − sqrt(1−ᾱ_t)·ε)/sqrt(ᾱ_t); x_prev = sqrt(ᾱ_prev)·x0 + direction·ε + std·z
            x_coef = np.sqrt(a_prev / a_t)
            out_coef = direction - np.sqrt(a_prev * (1 - a_t) / a_t)
        else:
            # v: x0 = sqrt(ᾱ_t)·x − sqrt(1−ᾱ_t)·v, ε = sqrt(ᾱ_t)·v + sqrt(1−ᾱ_t)·x
            x_coef = np.sqrt(a_prev * a_t) + direction * np.sqrt(1 - a_t)
            out_coef = direction * np.sqrt(a_t) - np.sqrt(a_prev * (1 - a_t))
        update.append([x_coef, out_coef, std])

    return DDIMSampler(timesteps=c.table(timesteps), update=c.table(update), eta=float(eta))
