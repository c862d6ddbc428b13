"""What a trained denoiser takes from its conditions, measured on a latent cache without sampling:

    python benchmarks/denoiser_diagnostics.py --model runs/replication/models/magicface \
        --latents runs/replication/latents [--measure au,identity,gradient]

- au: the held-out loss with each pair's true AU variation, with AU = 0 and with the variations shuffled
  over the pairs, and the gain (AU = 0 minus true) within each timestep band;
- identity: the held-out loss per band with the true identity latents, with those of another pair and with
  zeros: how much of the target the denoiser takes from the identity image;
- gradient: over training batches, the signal-to-noise ratio of the gradient of the AU linear (and of the
  time embedding beside it), ‖E g‖² / E‖g − E g‖² per batch, bias-corrected: how far Adam can move it.

`--model` is a training run's output folder (its `export` and `run_config.json`: every measurement uses
the objective the model was trained with); `--latents` a latent cache of its VAE with train and test
splits. Each prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from magicface_jax import cli
from magicface_jax.errors import MagicFaceError

TIMESTEP_BANDS = ((0, 200), (200, 400), (400, 600), (600, 800), (800, 1000))
MEASURES = ("au", "identity", "gradient")


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained model's networks with the objective it was trained with, and its per-example loss
    (batch, draws) -> (B,), jitted once for every measurement."""

    objective: object
    params: dict
    prompt: object
    losses: Callable


def load_trained(model: Path) -> Trained:
    import jax
    import jax.numpy as jnp

    from magicface_jax import checkpoint
    from magicface_jax.diffusion import NoiseSchedule
    from magicface_jax.models.magicface import COMPONENTS, MagicFace
    from magicface_jax.training.config import TrainSettings
    from magicface_jax.training.step import Objective, example_losses

    export = model / "export"
    info = checkpoint.read_info(export)
    trained = json.loads((model / "run_config.json").read_text())["train"]
    objective = Objective(
        MagicFace(info.config), NoiseSchedule.from_diffusers(info.scheduler), TrainSettings(**trained)
    )
    params = {name: checkpoint.read_params(export, name) for name in COMPONENTS}
    prompt = jnp.asarray(checkpoint.read_prompt_embeds(export))
    losses = jax.jit(lambda batch, draws: example_losses(objective, params, batch, draws, prompt))
    return Trained(objective, params, prompt, losses)


def _open(latents: Path, split: str):
    from magicface_jax.training.latent_cache import LatentCache

    return LatentCache.open(latents, split)


def _records(cache, indices=None) -> dict:
    """The cache's records at `indices` (all when None), stacked into one batch."""
    import jax.numpy as jnp

    records = [cache[int(i)] for i in (range(len(cache)) if indices is None else indices)]
    return {k: jnp.asarray(np.stack([r[k] for r in records])) for k in records[0] if k != "index"}


def _held_out_losses(
    trained: Trained, batch: dict, variants: dict[str, dict], band, seed: int, draws: int
) -> dict[str, np.ndarray]:
    """Per-example losses of each variant of `batch` (a dict of replaced entries), all on the same noise
    and timesteps (drawn within `band`, or over all timesteps when None), AU dropout off."""
    import jax
    import jax.numpy as jnp

    from magicface_jax.training.step import draw

    size = len(batch["au_variation"])
    found = {name: [] for name in variants}
    for k in range(draws):
        key = jax.random.key(seed + k)
        noise = draw(trained.objective, key, size, batch["target_mean"].shape[1:])
        noise["keep_au"] = jnp.ones_like(noise["keep_au"])
        if band is not None:
            noise["timesteps"] = jax.random.randint(jax.random.fold_in(key, 1), (size,), *band)
        for name, replaced in variants.items():
            found[name].append(np.asarray(trained.losses({**batch, **replaced}, noise)))
    return {name: np.concatenate(v) for name, v in found.items()}


def _mean_and_se(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std() / np.sqrt(len(values)))


def au_use(model: Path, latents: Path, draws: int = 4) -> dict:
    """Does the denoiser use the AU condition? A model that does has the lowest held-out loss with the
    true AUs. The gain is resolved per band of `TIMESTEP_BANDS`: the AUs matter at mid noise, and the
    whole range's mean hides a gain there under the noise of the rest."""
    import jax.numpy as jnp

    trained, batch = load_trained(model), _records(_open(latents, "test"))
    au = batch["au_variation"]
    variants = {
        "true AU": {},
        "AU = 0": {"au_variation": jnp.zeros_like(au)},
        "shuffled AU": {"au_variation": au[np.random.default_rng(0).permutation(len(au))]},
    }

    def gain(found):
        return _mean_and_se(found["AU = 0"] - found["true AU"])

    whole = _held_out_losses(trained, batch, variants, None, 0, draws)
    mean, se = gain(whole)
    bands = {
        f"{lo}-{hi}": gain(_held_out_losses(trained, batch, variants, (lo, hi), 1000 * (i + 1), draws))
        for i, (lo, hi) in enumerate(TIMESTEP_BANDS)
    }
    return {name: float(v.mean()) for name, v in whole.items()} | {
        "gain": mean,
        "gain_se": se,
        "bands": bands,
    }


def identity_use(model: Path, latents: Path, draws: int = 2) -> dict:
    """The held-out loss per band with the true identity latents, another pair's, and zeros."""
    import jax.numpy as jnp

    trained, batch = load_trained(model), _records(_open(latents, "test"))
    identity = batch["identity_latents"]
    variants = {
        "true identity": {},
        "another pair's identity": {
            "identity_latents": identity[np.random.default_rng(0).permutation(len(identity))]
        },
        "zero identity": {"identity_latents": jnp.zeros_like(identity)},
    }
    return {
        f"{lo}-{hi}": {
            name: float(v.mean())
            for name, v in _held_out_losses(trained, batch, variants, (lo, hi), 100 * i, draws).items()
        }
        for i, (lo, hi) in enumerate(TIMESTEP_BANDS)
    }


def gradient_snr(gradients: np.ndarray) -> float:
    """‖E g‖² / E‖g − E g‖² of per-batch gradients (batches, ...), the squared mean's share of the
    sampling noise (noise / batches) taken out."""
    batches = len(gradients)
    signal, noise = np.sum(gradients.mean(0) ** 2), np.sum(gradients.var(0, ddof=1))
    return float((signal - noise / batches) / noise)


def au_gradient_snr(model: Path, latents: Path, batches: int = 48, batch_size: int = 16) -> dict:
    """`gradient_snr` of the AU linear's and the time embedding's leaves over `batches` training batches
    at the trained weights, with each leaf's RMS weight. At a ratio r per batch, Adam moves a weight
    along the signal by about √r of its step size per step."""
    import jax

    from magicface_jax.config import AU_EMBED_NAME
    from magicface_jax.training.step import draw, example_losses

    trained = load_trained(model)
    denoiser = trained.params["denoiser"]
    probed = {name: denoiser[name] for name in (AU_EMBED_NAME, "time_embedding")}

    def loss(probe, batch, noise):
        params = {**trained.params, "denoiser": {**denoiser, **probe}}
        return example_losses(trained.objective, params, batch, noise, trained.prompt).mean()

    gradient = jax.jit(jax.grad(loss))
    cache = _open(latents, "train")
    rng = np.random.default_rng(0)
    grads = []
    for i in range(batches):
        batch = _records(cache, rng.choice(len(cache), batch_size, replace=False))
        noise = draw(trained.objective, jax.random.key(i), batch_size, batch["target_mean"].shape[1:])
        grads.append(jax.device_get(gradient(probed, batch, noise)))
    stacked = jax.tree.map(lambda *g: np.stack(g), *grads)

    flat = jax.tree_util.tree_flatten_with_path(stacked)[0]
    weights = jax.tree_util.tree_leaves(jax.device_get(probed))
    return {
        "/".join(str(k.key) for k in path): {
            "snr": gradient_snr(g),
            "weight_rms": float(np.sqrt(np.mean(w**2))),
        }
        for (path, g), w in zip(flat, weights, strict=True)
    }


MEASUREMENTS: dict[str, Callable[[Path, Path], dict]] = {
    "au": au_use,
    "identity": identity_use,
    "gradient": au_gradient_snr,
}


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a training run's output folder")
    parser.add_argument("--latents", type=Path, required=True, help="a latent cache of the model's VAE")
    parser.add_argument(
        "--measure", default=",".join(MEASURES), help=f"comma-separated, of {', '.join(MEASURES)}"
    )
    return parser


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    chosen = [m.strip() for m in args.measure.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in MEASURES]
    if unknown or not chosen:
        raise MagicFaceError(f"--measure {args.measure!r}: choose from {', '.join(MEASURES)}")
    needed = {
        args.model / "export": "--model has no export: give a folder train.py wrote",
        args.model / "run_config.json": "--model has no run_config.json: give a folder train.py wrote",
        args.latents / "test": "--latents has no test split: give a cache of train.py --cache-latents",
        args.latents / "train": "--latents has no train split: give a cache of train.py --cache-latents",
    }
    for path, message in needed.items():
        if not path.exists():
            raise MagicFaceError(f"{message} ({path} does not exist)")
    for name in chosen:
        print(json.dumps({name: MEASUREMENTS[name](args.model, args.latents)}), flush=True)


if __name__ == "__main__":
    sys.exit(cli.run(main))
