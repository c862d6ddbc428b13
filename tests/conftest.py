"""Test session setup, before JAX is imported: 8 virtual CPU devices for the sharding tests, and XLA's
cheaper CPU code generation (tests compile many small programs; compile time dominates their runtime)."""

import os
from pathlib import Path

FAST_COMPILE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
os.environ["XLA_FLAGS"] = (
    f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_COUNT_FLAG}=8 {FAST_COMPILE_XLA_FLAGS}".strip()
)
# Many tests compile the same programs (each builds its own pipeline): share compilations through JAX's
# persistent cache, across tests and across the xdist workers.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "xla")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def child_environment(devices: int | None = None) -> dict[str, str]:
    """The environment of a process a test starts: the suite's cheaper code generation (a child at XLA's
    defaults compiles several times longer) and `devices` CPU devices, or no device count for a child
    that sets its own (`jax_num_cpu_devices`)."""
    flags = [flag for flag in os.environ["XLA_FLAGS"].split() if not flag.startswith(DEVICE_COUNT_FLAG)]
    if devices is not None:
        flags.append(f"{DEVICE_COUNT_FLAG}={devices}")
    return {**os.environ, "XLA_FLAGS": " ".join(flags)}


from tests import fixtures  # noqa: E402


@pytest.fixture(scope="session")
def torch_model():
    """A tiny PyTorch MagicFace (reference classes) with every parameter perturbed."""
    return fixtures.tiny_torch_magicface()


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory, torch_model):
    """A tiny diffusers Stable Diffusion folder whose UNet and VAE are the reference model's."""
    return fixtures.write_sd_folder(tmp_path_factory.mktemp("sd") / "sd", torch_model)


@pytest.fixture(scope="session")
def release_folder(tmp_path_factory, torch_model):
    """The tiny reference model in the authors' release layout (ID_enc/, denoising_unet/)."""
    return fixtures.write_release_folder(tmp_path_factory.mktemp("release") / "magicface", torch_model)


@pytest.fixture(scope="session")
def converted(tmp_path_factory, sd_folder, release_folder):
    """The tiny release converted to an orbax checkpoint."""
    from magicface_jax.convert.convert import to_orbax

    out = tmp_path_factory.mktemp("ckpt") / "ckpt"
    to_orbax(sd_folder, out, magicface=release_folder, log=lambda _: None)
    return out
