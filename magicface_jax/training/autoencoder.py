"""The synthetic world's frozen VAE: an `AutoencoderKL` trained on `synthetic_faces` images, which MagicFace
then uses as it uses Stable Diffusion's VAE (frozen; identity and background latents unscaled).

    config = AutoencoderTrainConfig(vae=SYNTHETIC_VAE, resolution=64, steps=3000)
    images = synthetic_images(SyntheticFacesSpec(resolution=64, seed=0), "train", 1000)  # images, masks
    state = train(config, images, "runs/vae")         # resumes from runs/vae/state if it is there
    export_vae("runs/vae/export", config, state.params, images[0][:256], int(state.step))
    vae_config, params, steps, face_scale = load_vae("runs/vae/export")

The loss is L1 reconstruction of the posterior sample's decode plus `kl_weight` × the KL divergence from
N(0, 1), the reconstruction weighted by `face_weight` inside the face mask. L1, not L2: L2 averages a thin
dark stroke (a brow, a lid line, the lip line) into a blur, since a blur costs it little, while L1's cost
of a blur grows linearly with the stroke's contrast; SD's VAE is trained with L1 (plus perceptual and
adversarial terms that we leave out). The KL term is kept small (SD: 1e-6) so that it only bounds the
latents' scale; `export_vae` then sets `scaling_factor` to 1 / std of the latent means, as SD's 0.18215 was
chosen, so that scaled latents have unit variance for the diffusion schedule.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from magicface_jax import atomic, checkpoint
from magicface_jax.config import VAEConfig
from magicface_jax.errors import MagicFaceError
from magicface_jax.images import to_model_input
from magicface_jax.models.magicface import abstract_vae, init_vae, unbox
from magicface_jax.models.vae import AutoencoderKL, sample_posterior

STATE_DIR = "state"
DIVERGED_AFTER_SKIPS = 10  # skipped steps in a row that stop a run
EXPORT_CONFIG = "vae.json"
# vae.json also marks the folder as an export, which a later export of the same run may replace.
EXPORT_MANIFEST = atomic.Manifest(EXPORT_CONFIG, ("magicface-jax/vae-export-1",))
EXPORT_PARAMS = "params"

# The synthetic setting's VAE at 64² (docs/evaluation.md): downsampling 4, latents 16² × 4.
SYNTHETIC_VAE = VAEConfig(
    block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8, sample_size=64
)


@dataclasses.dataclass(frozen=True)
class AutoencoderTrainConfig:
    vae: VAEConfig = SYNTHETIC_VAE
    resolution: int = 64
    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 2e-3  # AdamW peak, after a linear warmup, then cosine decay to 10 %
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    # Adam's moment decays; the latent-diffusion autoencoders (SD's VAE among them) train with (0.5, 0.9).
    adam_betas: tuple[float, float] = (0.9, 0.999)
    # The global gradient norm is clipped to this (0: no clipping). Without it a VAE of the replication
    # diverged at step 1,400 of 2,000 (KL 3e3 -> 3e6, L1 0.13 -> 0.69) at learning rate 2e-3.
    grad_clip_norm: float = 1.0
    # A step whose gradient norm (before clipping) is above this, or not finite, leaves the weights and
    # Adam's moments as they were (0: never skip): a single bad batch passes. Normal steps stay under 2.
    # Clipping did not save a replication VAE whose weights went bad between steps 3,550 and 3,566 of
    # 4,000 (norms 0.4, then 5e2-3e4; KL 6e10 at 3,575): `train` then stops after DIVERGED_AFTER_SKIPS.
    skip_grad_norm: float = 100.0
    kl_weight: float = 1e-6
    face_weight: float = 1.0  # weight of a face pixel's reconstruction error relative to the rest
    checkpoint_every: int = 500
    seed: int = 0
    # False: only the decoder learns; the encoder (and quant_conv) stay as the run starts them, so the
    # latent space, its scaling factor and a MagicFace trained on those latents stay valid. SD's ft-EMA and
    # ft-MSE VAEs sharpened its decoder so. Such a run must start from a trained VAE (`train`'s `start`).
    train_encoder: bool = True
    # False: the decoder learns to decode the posterior mean, which is what a MagicFace trained on the
    # posterior mean (`train.sample_posterior=false`, the demo model's recipe) produces.
    sample_posterior: bool = True

    def __post_init__(self):
        if self.resolution % self.vae.downsample_factor:
            raise MagicFaceError(
                f"resolution {self.resolution} is not a multiple of the VAE's downsampling "
                f"{self.vae.downsample_factor}"
            )
        if min(self.steps, self.batch_size, self.checkpoint_every) < 1 or self.warmup_steps < 0:
            raise MagicFaceError("steps, batch_size and checkpoint_every must be ≥ 1, warmup_steps ≥ 0")
        settings = (
            self.learning_rate,
            self.kl_weight,
            self.face_weight,
            self.grad_clip_norm,
            self.skip_grad_norm,
        )
        if min(settings) < 0:
            raise MagicFaceError(
                "learning_rate, kl_weight, face_weight, grad_clip_norm and skip_grad_norm must be ≥ 0"
            )
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise MagicFaceError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: dict
    opt_state: optax.OptState
    rng: jax.Array


ENCODER_PARTS = ("encoder", "quant_conv")  # the VAE's parameters that make the latents


def learning_rate_schedule(config: AutoencoderTrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then a cosine decay to a tenth of it at the last step."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=max(config.steps, config.warmup_steps + 1),
        end_value=0.1 * config.learning_rate,
    )


def optimizer(config: AutoencoderTrainConfig) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(config)
    b1, b2 = config.adam_betas
    adamw = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=config.weight_decay)
    if config.grad_clip_norm:
        adamw = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw)
    if config.train_encoder:
        return adamw

    def labels(params):  # the frozen parts get no step, not even weight decay
        label = {part: "frozen" if part in ENCODER_PARTS else "trained" for part in params}
        return {part: jax.tree.map(lambda _, part=part: label[part], tree) for part, tree in params.items()}

    return optax.multi_transform({"trained": adamw, "frozen": optax.set_to_zero()}, labels)


def init_state(config: AutoencoderTrainConfig, start=None) -> TrainState:
    """A fresh state from random parameters, or from a copy of the parameters `start` (the step donates
    its state's buffers: the caller's arrays must not be among them)."""
    params_rng, rng = jax.random.split(jax.random.key(config.seed))
    params = unbox(init_vae(config.vae, params_rng)) if start is None else jax.tree.map(jnp.array, start)
    return TrainState(jnp.int32(0), params, optimizer(config).init(params), jax.random.key_data(rng))


def loss_fn(model: AutoencoderKL, params, images, weights, rng, config: AutoencoderTrainConfig):
    """(loss, metrics) for images (B, S, S, 3) in [-1, 1] and per-pixel weights (B, S, S)."""
    mean, logvar = model.apply({"params": params}, images, method=AutoencoderKL.encode)
    if not config.train_encoder:  # no gradient through the frozen encoder: its backward is not computed
        mean, logvar = jax.lax.stop_gradient((mean, logvar))
    latents = sample_posterior(mean, logvar, rng) if config.sample_posterior else mean
    recon = model.apply({"params": params}, latents, method=AutoencoderKL.decode)
    error = jnp.abs(recon - images).mean(-1)
    l1 = (weights * error).sum() / weights.sum()
    kl = 0.5 * (mean**2 + jnp.exp(logvar) - 1.0 - logvar).sum((1, 2, 3)).mean()
    return l1 + config.kl_weight * kl, {"l1": l1, "kl": kl}


@functools.cache
def make_train_step(config: AutoencoderTrainConfig) -> Callable:
    """The jitted step (state, images, weights) -> (state, metrics); one per config, so a resumed run in
    the same process reuses the compiled program."""
    model, tx = AutoencoderKL(config.vae), optimizer(config)

    def step(state: TrainState, images, weights):
        rng, sample_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
        grad_fn = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)
        (loss, metrics), grads = grad_fn(model, state.params, images, weights, sample_rng, config)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        skip = ~jnp.isfinite(grad_norm)
        if config.skip_grad_norm:
            skip |= grad_norm > config.skip_grad_norm
        params, opt_state = jax.tree.map(
            lambda old, new: jnp.where(skip, old, new), (state.params, state.opt_state), (params, opt_state)
        )
        new = TrainState(state.step + 1, params, opt_state, jax.random.key_data(rng))
        return new, {"loss": loss, "grad_norm": grad_norm, "skipped": skip.astype(jnp.int32), **metrics}

    return jax.jit(step, donate_argnums=0)


def synthetic_images(spec, split: str, num_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Both images of the first `num_pairs` pairs of a `synthetic_faces` spec: uint8 (2N, S, S, 3) and
    their face masks bool (2N, S, S)."""
    from magicface_jax.data import features
    from magicface_jax.data.png import decode_mask, decode_png
    from magicface_jax.data.synthetic_faces import synthetic_example

    images, masks = [], []
    for index in range(num_pairs):
        example = synthetic_example(spec, split, index)
        for image, mask in (
            (features.IDENTITY_IMAGE, "identity_face_mask"),
            (features.TARGET_IMAGE, "target_face_mask"),
        ):
            images.append(decode_png(example[image]))
            masks.append(decode_mask(example[mask]))
    return np.stack(images), np.stack(masks)


def _manager(directory: Path):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    return ocp.CheckpointManager((directory / STATE_DIR).absolute(), options=options)


def train(
    config: AutoencoderTrainConfig,
    data: tuple[np.ndarray, np.ndarray],
    directory: str | Path,
    log: Callable[[str], None] = print,
    log_every: int = 100,
    time_limit_s: float | None = None,
    start=None,
) -> TrainState:
    """Trains on random batches of `data` (images uint8, face masks bool), from random parameters or those
    of `start` (a trained VAE's); checkpoints the state under `directory` every `checkpoint_every` steps
    and at the end, and resumes from the latest one. With `time_limit_s`, stops (and checkpoints) once that
    much time has passed: the same call later goes on."""
    import orbax.checkpoint as ocp

    images, masks = data
    if images.shape[1:3] != (config.resolution, config.resolution):
        raise MagicFaceError(f"images are {images.shape[1:3]}, the config trains at {config.resolution}²")
    if start is None and not config.train_encoder:
        raise MagicFaceError("a run that trains only the decoder must start from a trained VAE")
    manager = _manager(Path(directory))
    state = init_state(config, start)
    if manager.latest_step() is not None:
        state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(state))
        log(f"resumed from step {int(state.step)}")
    step_fn = make_train_step(config)
    weights = np.where(masks, np.float32(config.face_weight), np.float32(1.0))
    start, skipped_in_a_row = time.perf_counter(), 0
    for step in range(int(state.step), config.steps):
        batch = np.random.default_rng([config.seed, step]).integers(len(images), size=config.batch_size)
        state, metrics = step_fn(state, to_model_input(images[batch]), weights[batch])
        done = step + 1
        skipped_in_a_row = skipped_in_a_row + 1 if metrics["skipped"] else 0
        if skipped_in_a_row:
            log(f"step {done}: skipped, gradient norm {float(metrics['grad_norm']):.3g}")
        if skipped_in_a_row == DIVERGED_AFTER_SKIPS:
            # Not a bad batch but weights gone bad: stop before a checkpoint replaces the last good one.
            manager.wait_until_finished()
            raise MagicFaceError(
                f"the VAE diverged: steps {done - DIVERGED_AFTER_SKIPS + 1}-{done} all had a gradient norm "
                f"above {config.skip_grad_norm:g}; "
                + (
                    "it wrote no checkpoint: train again with a lower learning rate"
                    if manager.latest_step() is None
                    else f"its last checkpoint (step {manager.latest_step()}) is kept: resume from it with a "
                    "lower learning rate"
                )
            )
        if done % log_every == 0 or done == config.steps:
            values = ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items())
            log(f"step {done}: {values} ({time.perf_counter() - start:.0f} s)")
        out_of_time = time_limit_s is not None and time.perf_counter() - start > time_limit_s
        due = done % config.checkpoint_every == 0 or done == config.steps or out_of_time
        if due and not skipped_in_a_row:  # weights that fail now are not saved over good ones
            manager.save(done, args=ocp.args.StandardSave(state))
        if out_of_time:
            log(f"stopped at step {done} after {time_limit_s:.0f} s; the same call continues from there")
            break
    manager.wait_until_finished()
    return state


@functools.cache
def _autoencoder(vae_config: VAEConfig):
    model = AutoencoderKL(vae_config)
    return jax.jit(lambda params, x: model.apply({"params": params}, x))


def _batched(fn, params, images: np.ndarray, batch: int) -> np.ndarray:
    """`fn` over `images` in batches of `batch`, the last one padded: one compilation for any count."""
    out = []
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
        out.append(np.asarray(fn(params, to_model_input(padded)))[: len(chunk)])
    return np.concatenate(out)


@functools.cache
def _posterior(vae_config: VAEConfig):
    """The jitted encoder: images -> posterior means and log-variances, concatenated on channels."""
    model = AutoencoderKL(vae_config)
    encode = functools.partial(model.apply, method=AutoencoderKL.encode)
    return jax.jit(lambda params, x: jnp.concatenate(encode({"params": params}, x), axis=-1))


def _moments(vae_config: VAEConfig, params, images: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    return tuple(np.split(_batched(_posterior(vae_config), params, images, batch), 2, axis=-1))


def encode(vae_config: VAEConfig, params, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """uint8 images (N, S, S, 3) -> unscaled posterior means (N, S/f, S/f, C)."""
    return _moments(vae_config, params, images, batch)[0]


def latent_channels(vae_config: VAEConfig, params, images: np.ndarray, batch: int = 32) -> list[dict]:
    """Per latent channel of uint8 `images`, in scaled units (× `vae_config.scaling_factor`): the variance
    of the posterior means over images and positions (`signal`), the mean posterior variance (`noise`),
    and `collapsed` when the noise is the larger: the KL term has pulled that channel to the prior, so it
    carries next to nothing and a posterior sample of it is noise a denoiser cannot predict."""
    mean, logvar = _moments(vae_config, params, images, batch)
    scale = vae_config.scaling_factor
    channels = []
    for c in range(mean.shape[-1]):
        signal = float((mean[..., c] * scale).var())
        noise = float((np.exp(logvar[..., c]) * scale**2).mean())
        channels.append({"signal": signal, "noise": noise, "collapsed": noise > signal})
    return channels


def reconstruct(vae_config: VAEConfig, params, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """uint8 images (N, S, S, 3) -> their reconstructions through the posterior mean, uint8."""
    out = _batched(_autoencoder(vae_config), params, images, batch)
    return np.clip((out + 1) * 127.5, 0, 255).round().astype(np.uint8)


def latent_scaling_factor(vae_config: VAEConfig, params, images: np.ndarray) -> float:
    """1 / std of the unscaled latent means of `images`: scaled latents then have unit variance."""
    return float(1.0 / encode(vae_config, params, images).std())


class ExportedVAE(NamedTuple):
    config: VAEConfig  # with the measured scaling factor
    params: dict
    steps: int | None  # training steps behind it (None: not recorded)
    face_scale: float | None  # the synthetic_faces face scale of its training images (None: not recorded)


def export_vae(
    directory: str | Path,
    config: AutoencoderTrainConfig,
    params,
    images: np.ndarray,
    steps: int,
    overwrite: bool = False,
    face_scale: float = 1.0,
) -> VAEConfig:
    """Writes the frozen VAE (its config with the scaling factor measured on `images`, its parameters, the
    number of training steps behind them and the face scale of the synthetic faces it learnt) to
    `directory`, atomically; returns that config."""
    import orbax.checkpoint as ocp

    # A frozen encoder keeps its latents, so their scaling too: a MagicFace trained on them stays valid.
    scaling = config.vae.scaling_factor
    if config.train_encoder:
        scaling = latent_scaling_factor(config.vae, params, images)
    vae_config = dataclasses.replace(config.vae, scaling_factor=scaling, sample_size=config.resolution)
    with atomic.atomic_directory(directory, overwrite, manifest=EXPORT_MANIFEST) as partial:
        meta = {
            "format": EXPORT_MANIFEST.formats[0],
            "vae": dataclasses.asdict(vae_config),
            "steps": steps,
            "face_scale": face_scale,
        }
        (partial / EXPORT_CONFIG).write_text(json.dumps(meta, indent=2))
        ocp.PyTreeCheckpointer().save((partial / EXPORT_PARAMS).absolute(), jax.device_get(params))
    return vae_config


def is_vae_export(directory: str | Path) -> bool:
    return (Path(directory) / EXPORT_CONFIG).is_file()


def load_vae(directory: str | Path) -> ExportedVAE:
    """What `export_vae` wrote."""
    import orbax.checkpoint as ocp

    directory = Path(directory)
    if not is_vae_export(directory):
        raise MagicFaceError(f"{directory} holds no exported VAE ({EXPORT_CONFIG} is missing)")
    try:
        meta = json.loads((directory / EXPORT_CONFIG).read_text())
        vae = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["vae"].items()}
        vae_config, steps = VAEConfig(**vae), int(meta["steps"])
        face_scale = None if meta.get("face_scale") is None else float(meta["face_scale"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise MagicFaceError(
            f"{directory / EXPORT_CONFIG} is damaged ({type(err).__name__}: {err}); export the VAE again"
        ) from None
    try:
        params = ocp.PyTreeCheckpointer().restore((directory / EXPORT_PARAMS).absolute())
    except Exception as err:  # orbax raises assorted errors for damaged or missing files
        raise MagicFaceError(
            f"cannot read the VAE's parameters in {directory / EXPORT_PARAMS} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); export the VAE again"
        ) from None
    if jax.tree.map(np.shape, params) != jax.tree.map(lambda x: x.shape, unbox(abstract_vae(vae_config))):
        raise MagicFaceError(f"the parameters in {directory} do not have the layout of its {EXPORT_CONFIG}")
    return ExportedVAE(vae_config, params, steps, face_scale)


def frozen_vae(directory: str | Path) -> ExportedVAE:
    """The VAE that `directory` holds: a VAE export (`export_vae`), or a MagicFace checkpoint's, whose
    face scale is what its source records (`demo.write_demo_assets` records it)."""
    if is_vae_export(directory):
        return load_vae(directory)
    if not (Path(directory) / checkpoint.MANIFEST).is_file():
        raise MagicFaceError(
            f"{directory} holds no VAE: give a VAE export (with {EXPORT_CONFIG}) or a MagicFace checkpoint "
            f"(with {checkpoint.MANIFEST})"
        )
    info = checkpoint.read_info(directory)
    scale = info.source.get("face_scale")
    params = checkpoint.read_params(directory, "vae")
    return ExportedVAE(info.config.vae, params, None, None if scale is None else float(scale))


def round_trip(
    directory: str | Path, resolution: int | None = None, face_scale: float | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """The VAE in `directory` (`frozen_vae`) as a function: uint8 images -> their reconstructions, uint8.
    With `resolution` or `face_scale`, the VAE must have been trained on such images (where it says)."""
    exported = frozen_vae(directory)
    trained = exported.config.sample_size
    if resolution is not None and trained != resolution:
        raise MagicFaceError(f"the VAE in {directory} was trained on {trained}² images, not {resolution}²")
    if None not in (face_scale, exported.face_scale) and face_scale != exported.face_scale:
        raise MagicFaceError(
            f"the VAE in {directory} was trained on faces at scale {exported.face_scale:g}, not "
            f"{face_scale:g}: pass --face-scale {exported.face_scale:g} or another VAE"
        )
    return functools.partial(reconstruct, exported.config, exported.params)
