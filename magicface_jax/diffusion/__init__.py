"""Noise schedule, training targets and samplers (UniPC, DDIM, DPM-Solver++, Euler) as pure functions."""

from magicface_jax.diffusion.schedule import (
    SD15_SCHEDULER_CONFIG,
    NoiseSchedule,
    add_noise,
    snr,
    training_target,
)

__all__ = [
    "SD15_SCHEDULER_CONFIG",
    "NoiseSchedule",
    "add_noise",
    "snr",
    "training_target",
]
