"""What `sample.py --demo` edits: a portrait shipped with the package and a generated tiny checkpoint.

No trained checkpoint ships with the repository yet, so the demo's checkpoint is a tiny MagicFace
(`tiny_magicface_config`) with random weights, generated deterministically from a fixed seed the first
time it is needed and kept in the cache directory. Its output shows that the whole edit runs; it is not
a real edit.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import jax
import numpy as np

from magicface_jax import checkpoint
from magicface_jax.assets import AUTHORS_EXAMPLES
from magicface_jax.cache import CACHE_ENV, cache_root
from magicface_jax.config import MagicFaceConfig, tiny_magicface_config
from magicface_jax.diffusion import SD15_SCHEDULER_CONFIG
from magicface_jax.errors import MagicFaceError
from magicface_jax.models.magicface import COMPONENTS, Params, abstract_params, unbox

DEMO_IMAGE = AUTHORS_EXAMPLES / "00381.png"
DEMO_BACKGROUND = AUTHORS_EXAMPLES / "00381_bg.png"
DEMO_EDIT = "AU4=+4,AU1=+2"  # the authors' example edit
# Defaults that keep the demo to seconds on a laptop CPU, used unless --steps or --size is given.
DEMO_STEPS = 10
DEMO_SIZE = 128
DEMO_CONFIG = tiny_magicface_config()
WEIGHTS_SEED = 0
# The code that decides the parameters' names and shapes: when it changes, a cached checkpoint is replaced.
LAYOUT_SOURCES = ("config.py", "models", "nn", "demo.py")
# The demo's model is tiny: compiling its program takes far longer than running it, and XLA's cheaper code
# generation compiles it about a third faster for about a second more of running time.
FAST_COMPILE_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
NOTICE = (
    "the demo checkpoint is a tiny MagicFace with RANDOM weights (no trained checkpoint is shipped yet): "
    "the output shows that the whole edit runs, it is not a real edit"
)


def demo_checkpoint_dir() -> Path:
    return cache_root() / "demo-tiny"


def prefer_fast_compilation() -> None:
    """Adds `FAST_COMPILE_XLA_FLAGS` to `XLA_FLAGS` where not set there; effective only before JAX starts
    its backend (the first computation)."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    given = {flag.split("=")[0] for flag in flags}
    flags += [flag for flag in FAST_COMPILE_XLA_FLAGS if flag.split("=")[0] not in given]
    os.environ["XLA_FLAGS"] = " ".join(flags)


def demo_source() -> dict[str, object]:
    """The provenance written into the demo checkpoint's manifest, with a fingerprint of `LAYOUT_SOURCES`."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for name in LAYOUT_SOURCES:
        path = package / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(package).as_posix().encode())
            digest.update(file.read_bytes())
    return {"demo": "tiny-random", "seed": WEIGHTS_SEED, "code": digest.hexdigest()[:16]}


def _is_current(directory: Path) -> bool:
    try:
        info = checkpoint.read_info(directory)
    except MagicFaceError:
        return False
    return info.source == demo_source()


def _random_leaf(rng: np.random.Generator, path: tuple, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
    name = getattr(path[-1], "key", None)
    if name == "kernel":  # LeCun normal over the fan-in (every kernel, also those a new model zeroes)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
    if name == "scale":
        return np.ones(leaf.shape, np.float32)
    return np.zeros(leaf.shape, np.float32)


def random_params(config: MagicFaceConfig, seed: int) -> Params:
    """Random parameters for `config` from NumPy's generator: the same for every JAX version, and
    without compiling Flax's initialisers (which takes minutes on a small CPU)."""
    rng = np.random.default_rng(seed)
    return {
        name: jax.tree_util.tree_map_with_path(
            lambda path, leaf: _random_leaf(rng, path, leaf), unbox(abstract_params(config, name))
        )
        for name in COMPONENTS
    }


def write_demo_checkpoint(directory: str | Path, overwrite: bool = False) -> None:
    """Writes the demo's tiny checkpoint with random weights, the same on every run."""
    config = DEMO_CONFIG
    params = random_params(config, WEIGHTS_SEED)
    width = config.denoiser.cross_attention_dim
    prompt_embeds = np.random.default_rng(WEIGHTS_SEED + 1).standard_normal((1, 77, width)).astype(np.float32)
    info = checkpoint.CheckpointInfo(
        config=config, scheduler=dict(SD15_SCHEDULER_CONFIG), source=demo_source()
    )
    with checkpoint.writing_checkpoint(directory, overwrite=overwrite) as writer:
        for name in COMPONENTS:
            writer.write_params(name, params[name])
        writer.write_prompt_embeds(prompt_embeds)
        writer.finish(info)


def ensure_demo_checkpoint() -> tuple[Path, bool]:
    """The demo checkpoint's directory, generated first if missing or outdated; True if generated now."""
    directory = demo_checkpoint_dir()
    if _is_current(directory):
        return directory, False
    try:
        write_demo_checkpoint(directory, overwrite=True)
    except OSError as err:
        raise MagicFaceError(
            f"cannot write the demo checkpoint to {directory} ({err.strerror or err}): "
            f"set {CACHE_ENV} to a writable folder"
        ) from None
    return directory, True
