"""MagicFace in JAX/Flax: expression editing by Action Units on Stable Diffusion 1.5.

`from magicface_jax import MagicFacePipeline` is the entry point; it is imported on first use, so that
light submodules (AU parsing, preprocessing) do not pull in JAX.
"""

__all__ = ["MagicFaceError", "MagicFacePipeline"]

from magicface_jax.errors import MagicFaceError


def __getattr__(name: str):
    if name == "MagicFacePipeline":
        from magicface_jax.pipeline import MagicFacePipeline

        return MagicFacePipeline
    raise AttributeError(f"module 'magicface_jax' has no attribute {name!r}")
