"""Small training runs for the tests: the `nano` model of configs/tiny.yaml on 64² synthetic faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from magicface_jax.training.config import RunConfig, load_config

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"
IMAGE_SIZE = 64


def nano_run(dataset: str, **overrides) -> RunConfig:
    """configs/tiny.yaml with `section__key=value` overrides (no progress bar, no TensorBoard)."""
    pairs = {"dataset": dataset, "data.data_dir": "", "logging.progress": False, "logging.tensorboard": False}
    pairs |= {key.replace("__", "."): value for key, value in overrides.items()}
    return load_config(TINY_CONFIG, [f"{key}={value}" for key, value in pairs.items()])


def synthetic_pairs(data_dir: str, train_pairs: int, seed: int) -> str:
    """Builds a small 64² `synthetic_faces` dataset (2 test pairs) under `data_dir`; returns its folder."""
    from magicface_jax.data.synthetic_faces import SyntheticFaces, SyntheticFacesConfig, SyntheticFacesSpec

    spec = SyntheticFacesSpec(resolution=64, train_pairs=train_pairs, test_pairs=2, seed=seed)
    builder = SyntheticFaces(config=SyntheticFacesConfig(spec), data_dir=data_dir)
    builder.download_and_prepare()
    return builder.data_dir


def nano_batch(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of the shapes a 64² dataset gives: images in [-1, 1], AU variations."""
    rng = np.random.default_rng(seed)
    images = {
        key: rng.uniform(-1, 1, (batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
        for key in ("identity", "target", "background")
    }
    return images | {"au_variation": rng.uniform(-3, 3, (batch, 12)).astype(np.float32)}
