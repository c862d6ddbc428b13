"""`train.py --cache-latents`: the frozen VAE's posteriors of every pair of the run's splits, once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np

from magicface_jax.data.pipeline import IndexedSource, decode
from magicface_jax.errors import MagicFaceError
from magicface_jax.models.magicface import MagicFace
from magicface_jax.parallel.mesh import batch_sharded, data_mesh, pad_batch, to_global, training_mesh
from magicface_jax.training.config import RunConfig
from magicface_jax.training.data import open_training_source
from magicface_jax.training.init import load_start
from magicface_jax.training.latent_cache import vae_fingerprint, write_latent_cache

BATCH = 16


def cache_latents(run: RunConfig, log: Callable[[str], None] = print) -> Path:
    if not run.data.latent_cache:
        raise MagicFaceError("data.latent_cache is not set: give the folder to write, data.latent_cache=DIR")
    if jax.process_count() > 1:
        raise MagicFaceError("--cache-latents runs as one process: start it without --coordinator")
    directory = Path(run.data.latent_cache).expanduser()
    images = dataclasses.replace(run, data=dataclasses.replace(run.data, latent_cache=""))
    splits = {
        split: open_training_source(images, split)
        for split in dict.fromkeys((run.data.split, run.data.eval_split))
    }
    start = load_start(run, training_mesh(-1, 1, 1))
    model = MagicFace(start.config)
    mesh = data_mesh()
    vae = start.networks["vae"]

    @jax.jit
    def encode(batch):
        identity = model.vae_encode(vae, batch["identity"])[0]
        background = model.vae_encode(vae, batch["background"])[0]
        mean, logvar = model.vae_encode(vae, batch["target"])
        return {
            "identity_latents": identity,
            "background_latents": background,
            "target_mean": mean,
            "target_logvar": logvar,
            "au_variation": batch["au_variation"],
        }

    def encode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sharding = batch_sharded(mesh)
        placed = {k: to_global(pad_batch(v, mesh.devices.size), sharding) for k, v in batch.items()}
        return {k: np.asarray(v)[: len(batch["au_variation"])] for k, v in encode(placed).items()}

    manifest = {"dataset": run.dataset, "vae": vae_fingerprint(jax.device_get(vae))}
    write_latent_cache(
        directory,
        {split: (len(source), _in_order(source)) for split, source in splits.items()},
        encode_batch,
        manifest,
        log=log,
    )
    log(f"wrote the latent cache {directory}")
    return directory


def _in_order(source) -> Iterator[dict[str, np.ndarray]]:
    indexed = IndexedSource(source)
    for start in range(0, len(source), BATCH):
        records = [decode(indexed[i]) for i in range(start, min(start + BATCH, len(source)))]
        keys = ("identity", "target", "background", "au_variation")
        yield {key: np.stack([r[key] for r in records]) for key in keys}
