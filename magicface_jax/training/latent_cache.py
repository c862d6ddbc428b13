"""A latent cache: the frozen VAE's posteriors of every pair, computed once, so training runs no VAE.

    CACHE/
      latent_cache.json    the dataset, split sizes, latent shape and the VAE's fingerprint
      train/identity_latents.npy    (N, h, w, c) float32, unscaled posterior means
      train/background_latents.npy  (N, h, w, c)
      train/target_mean.npy, train/target_logvar.npy   the target's posterior (training samples it)
      train/au_variation.npy        (N, 12)

Written by `train.py --cache-latents` under a temporary name and renamed when complete; read memory-mapped,
so a process touches only the rows of its own shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from magicface_jax.atomic import atomic_directory
from magicface_jax.errors import MagicFaceError

MANIFEST = "latent_cache.json"
FORMAT = "magicface-jax-latents/1"
FIELDS = ("identity_latents", "background_latents", "target_mean", "target_logvar", "au_variation")


def vae_fingerprint(vae_params) -> str:
    """A digest of the VAE's weights: a cache made with another VAE is refused."""
    import jax

    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(vae_params)[0]:
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return digest.hexdigest()[:16]


@dataclasses.dataclass
class LatentCache:
    """One split of a latent cache, as a random-access source of records."""

    arrays: dict[str, np.ndarray]
    manifest: dict

    @classmethod
    def open(cls, directory: Path, split: str) -> LatentCache:
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except FileNotFoundError:
            raise MagicFaceError(
                f"{directory} is not a latent cache (no {MANIFEST}); write one with train.py --cache-latents"
            ) from None
        if manifest.get("format") != FORMAT:
            raise MagicFaceError(f"{directory} has format {manifest.get('format')!r}; expected {FORMAT!r}")
        if split not in manifest["splits"]:
            raise MagicFaceError(
                f"latent cache {directory} has no split {split!r} ({', '.join(manifest['splits'])})"
            )
        arrays = {name: np.load(directory / split / f"{name}.npy", mmap_mode="r") for name in FIELDS}
        return cls(arrays, manifest)

    def __len__(self) -> int:
        return len(self.arrays["au_variation"])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {name: np.asarray(array[index]) for name, array in self.arrays.items()}

    def check_vae(self, fingerprint: str) -> None:
        if self.manifest["vae"] != fingerprint:
            raise MagicFaceError(
                "the latent cache was made with another VAE than this run's; write it again with "
                "train.py --cache-latents"
            )


def as_record(record: dict) -> dict[str, np.ndarray]:
    out = {name: np.asarray(record[name], np.float32) for name in FIELDS}
    out["index"] = np.int32(record["index"])
    return out


def write_latent_cache(
    directory: Path,
    splits: dict[str, tuple[int, Iterable[dict[str, np.ndarray]]]],
    encode: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    manifest: dict,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> None:
    """Encodes every batch of every split (`(count, batches)`) with `encode` and writes the cache."""
    with atomic_directory(directory, overwrite) as partial:
        sizes = {}
        for split, (count, split_batches) in splits.items():
            (partial / split).mkdir()
            out: dict[str, np.lib.format.open_memmap] = {}
            written = 0
            for batch in split_batches:
                latents = encode(batch)
                rows = min(len(latents["au_variation"]), count - written)
                for name in FIELDS:
                    values = np.asarray(latents[name], np.float32)[:rows]
                    if name not in out:
                        out[name] = np.lib.format.open_memmap(
                            partial / split / f"{name}.npy", "w+", np.float32, (count, *values.shape[1:])
                        )
                    out[name][written : written + rows] = values
                written += rows
                if written >= count:
                    break
            for array in out.values():
                array.flush()
            sizes[split] = written
            log(f"latent cache: {split}: {written} pairs")
        (partial / MANIFEST).write_text(json.dumps({"format": FORMAT, "splits": sizes, **manifest}, indent=2))
