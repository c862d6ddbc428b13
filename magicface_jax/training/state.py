"""The train state, its optimizer, and its placement on the mesh.

The state holds only what training changes: the trained networks, their AdamW state and EMA, the step
and the base RNG key. Frozen networks (the VAE, and a UNet whose training is switched off) travel beside
it, unchanged. Shardings follow the parameters' logical axis names through the run's rules: the optimizer
moments and the EMA are sharded exactly as the parameters they belong to.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from magicface_jax.config import AU_EMBED_NAME, MagicFaceConfig
from magicface_jax.models.magicface import Params, abstract_params
from magicface_jax.parallel.rules import Rules, param_shardings
from magicface_jax.training.config import OptimizerSettings, RunConfig


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 ()
    params: dict[str, Params]  # the trained networks, by name
    opt_state: Any
    ema: dict[str, Params]  # the parameters' exponential moving average ({} without EMA)
    rng: jax.Array  # uint32 key data (2,): step s draws from fold_in(key, s)


def trained_networks(run: RunConfig) -> tuple[str, ...]:
    if run.train.objective == "unet":  # the denoiser is made from it at export
        return ("identity_encoder",)
    names = []
    if run.model.train_identity_encoder:
        names.append("identity_encoder")
    if run.model.train_denoiser:
        names.append("denoiser")
    return tuple(names)


def learning_rate_schedule(settings: OptimizerSettings, steps: int) -> optax.Schedule:
    """Linear warmup from 0, then constant, cosine or linear decay to `end_factor` × the rate."""
    rate, warmup = settings.learning_rate, settings.warmup_steps
    decay_steps = max(steps - warmup, 1)
    if settings.schedule == "cosine":
        after = optax.cosine_decay_schedule(rate, decay_steps, alpha=settings.end_factor)
    elif settings.schedule == "linear":
        after = optax.linear_schedule(rate, rate * settings.end_factor, decay_steps)
    else:
        after = optax.constant_schedule(rate)
    if not warmup:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, rate, warmup), after], [warmup])


def make_optimizer(settings: OptimizerSettings, steps: int) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(settings.grad_clip_norm)] if settings.grad_clip_norm else []
    parts.append(
        optax.adamw(
            learning_rate_schedule(settings, steps),
            b1=settings.b1,
            b2=settings.b2,
            eps=settings.eps,
            weight_decay=settings.weight_decay,
        )
    )
    if settings.au_embedding_lr_factor != 1:
        parts.append(optax.masked(optax.scale(settings.au_embedding_lr_factor), _au_embedding_mask))
    return optax.chain(*parts)


def _au_embedding_mask(params: dict[str, Params]) -> dict[str, Params]:
    """True at the leaves of the denoiser's AU linear. Its gradient is mostly noise (docs/evaluation.md): at
    one step size for all, Adam moves it too little for the AUs to be used within a short run."""

    def inside(path, _) -> bool:
        keys = [getattr(k, "key", None) for k in path]
        return keys[:1] == ["denoiser"] and AU_EMBED_NAME in keys

    return jax.tree_util.tree_map_with_path(inside, params)


def ema_decay(decay: float, step: jax.Array) -> jax.Array:
    """The EMA's decay at `step`, warmed up as (1 + step) / (10 + step) so early weights fade quickly."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def new_state(params: dict[str, Params], optimizer: optax.GradientTransformation, ema: bool, seed: int):
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema=jax.tree.map(jnp.copy, params) if ema else {},
        rng=jax.random.key_data(jax.random.key(seed)),
    )


def state_shardings(
    config: MagicFaceConfig,
    names: tuple[str, ...],
    optimizer: optax.GradientTransformation,
    ema: bool,
    mesh: Mesh,
    rules: Rules,
) -> TrainState:
    """A `NamedSharding` per leaf of the state. The state is built abstractly from parameters boxed with
    their logical names; the optimizer's moments and the EMA inherit the boxes, so each is sharded as its
    parameter is; scalars (step, counts, key) are replicated."""
    boxed = {name: abstract_params(config, name) for name in names}
    abstract = jax.eval_shape(lambda p: new_state(p, optimizer, ema, 0), boxed)
    return param_shardings(abstract, mesh, rules)


def abstract_state(shardings: TrainState, config: MagicFaceConfig, names, optimizer, ema) -> TrainState:
    """Shapes, dtypes and shardings of the state (what a restore fills in)."""
    params = {name: nn.meta.unbox(abstract_params(config, name)) for name in names}
    shapes = jax.eval_shape(lambda p: new_state(p, optimizer, ema, 0), params)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)


def create_state(
    params: dict[str, Params],
    optimizer: optax.GradientTransformation,
    ema: bool,
    seed: int,
    shardings: TrainState,
) -> TrainState:
    """The initial state, materialized directly into its shards (the parameters are donated)."""
    make = jax.jit(lambda p: new_state(p, optimizer, ema, seed), out_shardings=shardings, donate_argnums=0)
    return make(params)
