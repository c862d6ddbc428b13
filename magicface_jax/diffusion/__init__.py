"""Noise schedule, training targets and samplers (UniPC, DDIM, DPM-Solver++, Euler) as pure functions."""

from magicface_jax.diffusion._common import check_steps
from magicface_jax.diffusion.ddim import DDIMSampler, DDIMState, ddim_sampler
from magicface_jax.diffusion.dpm_solver import DPMSolverSampler, DPMSolverState, dpm_solver_sampler
from magicface_jax.diffusion.euler import EulerSampler, EulerState, euler_sampler
from magicface_jax.diffusion.sampling import (
    SAMPLERS,
    Sampler,
    SamplerState,
    check_sampler,
    make_sampler,
    sample_loop,
)
from magicface_jax.diffusion.schedule import (
    SD15_SCHEDULER_CONFIG,
    NoiseSchedule,
    add_noise,
    snr,
    training_target,
)
from magicface_jax.diffusion.unipc import UniPCSampler, UniPCState, unipc_sampler

__all__ = [
    "SAMPLERS",
    "SD15_SCHEDULER_CONFIG",
    "DDIMSampler",
    "DDIMState",
    "DPMSolverSampler",
    "DPMSolverState",
    "EulerSampler",
    "EulerState",
    "NoiseSchedule",
    "Sampler",
    "SamplerState",
    "UniPCSampler",
    "UniPCState",
    "add_noise",
    "check_sampler",
    "check_steps",
    "ddim_sampler",
    "dpm_solver_sampler",
    "euler_sampler",
    "make_sampler",
    "sample_loop",
    "snr",
    "training_target",
    "unipc_sampler",
]
