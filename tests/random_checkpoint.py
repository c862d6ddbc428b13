"""A tiny MagicFace checkpoint with random weights, for tests that need a checkpoint but not a trained one.

The weights come from NumPy's generator (the same for every JAX version) rather than Flax's initialisers,
which take minutes to compile on a small CPU.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from magicface_jax import checkpoint
from magicface_jax.config import MagicFaceConfig, tiny_magicface_config
from magicface_jax.diffusion import SD15_SCHEDULER_CONFIG
from magicface_jax.models.magicface import COMPONENTS, Params, abstract_params, unbox

SEED = 0


def _random_leaf(rng: np.random.Generator, path: tuple, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
    name = getattr(path[-1], "key", None)
    if name == "kernel":  # LeCun normal over the fan-in (every kernel, also those a new model zeroes)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
    if name == "scale":
        return np.ones(leaf.shape, np.float32)
    return np.zeros(leaf.shape, np.float32)


def random_params(config: MagicFaceConfig, seed: int = SEED) -> Params:
    rng = np.random.default_rng(seed)
    return {
        name: jax.tree_util.tree_map_with_path(
            lambda path, leaf: _random_leaf(rng, path, leaf), unbox(abstract_params(config, name))
        )
        for name in COMPONENTS
    }


def write_random_checkpoint(
    directory: str | Path,
    config: MagicFaceConfig | None = None,
    seed: int = SEED,
    sampling: checkpoint.SamplingDefault | None = None,
):
    """Writes a checkpoint of `config` (default: the tiny model) with random weights, the same every time;
    `sampling`: the steps it records as measured for it."""
    config = config or tiny_magicface_config()
    params = random_params(config, seed)
    width = config.denoiser.cross_attention_dim
    prompt_embeds = np.random.default_rng(seed + 1).standard_normal((1, 77, width)).astype(np.float32)
    info = checkpoint.CheckpointInfo(
        config=config,
        scheduler=dict(SD15_SCHEDULER_CONFIG),
        source={"random": "tests", "seed": seed},
        sampling=sampling,
    )
    with checkpoint.writing_checkpoint(directory) as writer:
        for name in COMPONENTS:
            writer.write_params(name, params[name])
        writer.write_prompt_embeds(prompt_embeds)
        writer.finish(info)
    return Path(directory)
