"""The training objective and the train step, as pure functions of the state, the frozen networks and a
batch.

The objective is the paper's: the target image's latents (a sample of the VAE posterior, or its mean
with `train.sample_posterior` false, times the scaling factor) are noised on the DDPM schedule at a
uniform timestep; the identity and background latents are the unscaled posterior means, exactly as at
inference; the denoiser, attending to the identity encoder's features of the identity latents, predicts
the noise (or v); the loss is the MSE, optionally min-SNR-γ weighted. With probability `au_dropout` an
example's AU vector is zeroed, which is what AU guidance contrasts at sampling.

With `train.objective` unet, the identity encoder alone learns to predict the noise of the target
latents, a plain text-to-image UNet (the prompt embedding its only condition): the synthetic world's
SD1.5, from which a MagicFace starts as the authors' starts from SD's UNet.

All random draws of a step are made for the whole global batch from `fold_in(key, step)` before it is
split into micro-batches, so a step computes the same update on any mesh and for any number of
accumulation steps (up to float rounding).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from magicface_jax.diffusion.schedule import NoiseSchedule, add_noise, snr, training_target
from magicface_jax.models.magicface import MagicFace, Params
from magicface_jax.training.config import TrainSettings
from magicface_jax.training.state import TrainState, ema_decay

Batch = dict[str, jax.Array]
IMAGE_KEYS = ("identity", "target", "background")
LATENT_KEYS = ("identity_latents", "background_latents", "target_mean", "target_logvar")


@dataclasses.dataclass(frozen=True)
class Objective:
    """What one step computes; hashable, so a jitted step is keyed on it."""

    model: MagicFace
    schedule: NoiseSchedule
    settings: TrainSettings
    ema_decay: float = 0.0


def latents_of(objective: Objective, vae: Params, batch: Batch) -> Batch:
    """The batch's latents: read from a latent cache, or encoded by the frozen VAE here."""
    if "identity_latents" in batch:
        return {key: batch[key] for key in LATENT_KEYS}
    model = objective.model
    identity = model.vae_encode(vae, batch["identity"])[0]
    background = model.vae_encode(vae, batch["background"])[0]
    target_mean, target_logvar = model.vae_encode(vae, batch["target"])
    latents = {
        "identity_latents": identity,
        "background_latents": background,
        "target_mean": target_mean,
        "target_logvar": target_logvar,
    }
    return jax.lax.stop_gradient(latents)


def draw(objective: Objective, key: jax.Array, batch_size: int, latent_shape: tuple[int, ...]) -> Batch:
    """Every random value of a step, per example: timestep, noise, the posterior sample, AU dropout."""
    t_key, noise_key, posterior_key, dropout_key = jax.random.split(key, 4)
    steps = objective.schedule.num_train_timesteps
    return {
        "timesteps": jax.random.randint(t_key, (batch_size,), 0, steps),
        "noise": jax.random.normal(noise_key, (batch_size, *latent_shape), jnp.float32),
        "posterior_noise": jax.random.normal(posterior_key, (batch_size, *latent_shape), jnp.float32),
        "keep_au": jax.random.bernoulli(dropout_key, 1.0 - objective.settings.au_dropout, (batch_size,)),
    }


def example_losses(
    objective: Objective, params: dict[str, Params], batch: Batch, draws: Batch, prompt_embeds: jax.Array
) -> jax.Array:
    """The per-example loss (B,) of a micro-batch. `params` holds all three networks."""
    model, schedule, settings = objective.model, objective.schedule, objective.settings
    latents = latents_of(objective, params["vae"], batch)
    x0 = latents["target_mean"]
    if settings.sample_posterior:
        x0 = x0 + jnp.exp(0.5 * latents["target_logvar"]) * draws["posterior_noise"]
    x0 = x0 * model.config.vae.scaling_factor
    t = draws["timesteps"]
    noisy = add_noise(schedule, x0, draws["noise"], t)
    if settings.objective == "unet":
        prediction = model.plain_unet_noise(params["identity_encoder"], noisy, t, prompt_embeds)
    else:
        prediction = _magicface_noise(model, settings, params, latents, batch, draws, noisy, prompt_embeds)
    target = training_target(schedule, x0, draws["noise"], t)
    losses = jnp.mean(jnp.square(prediction - target), axis=(1, 2, 3))
    if settings.min_snr_gamma:
        ratio = snr(schedule, t)
        weights = jnp.minimum(ratio, settings.min_snr_gamma) / ratio
        if schedule.prediction_type == "v_prediction":
            weights = jnp.minimum(ratio, settings.min_snr_gamma) / (ratio + 1.0)
        losses = losses * weights
    return losses


def _magicface_noise(model, settings, params, latents, batch, draws, noisy, prompt_embeds) -> jax.Array:
    au = batch["au_variation"] * draws["keep_au"][:, None].astype(jnp.float32)
    features = model.identity_features(params["identity_encoder"], latents["identity_latents"], prompt_embeds)
    if not settings.train_identity_features:
        features = [jnp.zeros_like(f) for f in features]
    identity_kv = model.identity_kv(params["denoiser"], features)
    return model.predict_noise(
        params["denoiser"],
        noisy,
        latents["background_latents"],
        au,
        draws["timesteps"],
        identity_kv,
        prompt_embeds,
    )


def _micro_batches(tree: Any, count: int) -> Any:
    """(B, ...) -> (count, B / count, ...), micro-batch j holding examples j, j + count, ...: each device
    keeps its own rows of a batch split over devices, so no data moves."""

    def split(x):
        x = x.reshape(x.shape[0] // count, count, *x.shape[1:])
        return jnp.moveaxis(x, 1, 0)

    return jax.tree.map(split, tree)


def _latent_shape(objective: Objective, batch: Batch) -> tuple[int, ...]:
    if "target_mean" in batch:
        return batch["target_mean"].shape[1:]
    vae = objective.model.config.vae
    _, height, width, _ = batch["target"].shape
    return (height // vae.downsample_factor, width // vae.downsample_factor, vae.latent_channels)


def loss_and_grads(
    objective: Objective,
    trained: dict[str, Params],
    frozen: dict[str, Params],
    batch: Batch,
    key: jax.Array,
    prompt_embeds: jax.Array,
) -> tuple[jax.Array, dict[str, Params]]:
    """The mean loss over the batch and its gradient with respect to the trained networks, accumulated
    over `grad_accum_steps` micro-batches."""
    batch_size = batch["au_variation"].shape[0]
    draws = draw(objective, key, batch_size, _latent_shape(objective, batch))
    frozen = jax.lax.stop_gradient(frozen)

    def micro_loss(trained, micro, micro_draws):
        return jnp.mean(example_losses(objective, {**frozen, **trained}, micro, micro_draws, prompt_embeds))

    grad_fn = jax.value_and_grad(micro_loss)
    count = objective.settings.grad_accum_steps
    if count == 1:
        return grad_fn(trained, batch, draws)

    def accumulate(carry, inputs):
        loss_sum, grad_sum = carry
        loss, grads = grad_fn(trained, *inputs)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, trained)
    (loss_sum, grad_sum), _ = jax.lax.scan(
        accumulate,
        (jnp.zeros((), jnp.float32), zeros),
        (_micro_batches(batch, count), _micro_batches(draws, count)),
    )
    return loss_sum / count, jax.tree.map(lambda g: g / count, grad_sum)


def train_step(
    objective: Objective,
    optimizer: optax.GradientTransformation,
    schedule_fn: optax.Schedule,
    state: TrainState,
    frozen: dict[str, Params],
    batch: Batch,
    prompt_embeds: jax.Array,
) -> tuple[TrainState, dict[str, jax.Array]]:
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    loss, grads = loss_and_grads(objective, state.params, frozen, batch, key, prompt_embeds)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema:
        decay = ema_decay(objective.ema_decay, state.step)
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": schedule_fn(state.step),
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema)
    return new_state, metrics
