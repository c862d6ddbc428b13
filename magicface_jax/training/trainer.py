"""A run's parts before the first step: the model, the frozen networks, the optimizer, the state's
shardings and the train step jitted over the mesh with explicit shardings. The loop drives them; tests
and benchmarks use them directly."""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from magicface_jax.diffusion import NoiseSchedule
from magicface_jax.models.magicface import MagicFace, Params
from magicface_jax.nn.cpu_kernels import KERNEL_CHOICES
from magicface_jax.parallel.mesh import replicated, training_batch_sharding
from magicface_jax.training.config import RunConfig
from magicface_jax.training.init import Start
from magicface_jax.training.state import (
    TrainState,
    abstract_state,
    create_state,
    learning_rate_schedule,
    make_optimizer,
    state_shardings,
    trained_networks,
)
from magicface_jax.training.step import Objective, train_step


@dataclasses.dataclass(frozen=True)
class Trainer:
    run: RunConfig
    mesh: Mesh
    start: Start
    objective: Objective
    optimizer: optax.GradientTransformation
    names: tuple[str, ...]  # the trained networks
    shardings: TrainState  # a NamedSharding per state leaf
    prompt_embeds: jax.Array  # replicated

    @property
    def model(self) -> MagicFace:
        return self.objective.model

    @property
    def ema(self) -> bool:
        return self.run.optimizer.ema_decay > 0

    @property
    def frozen(self) -> dict[str, Params]:
        return {name: params for name, params in self.start.networks.items() if name not in self.names}

    def initial_state(self) -> TrainState:
        """The state at step 0 in its shards. The trained networks' starting weights are donated."""
        params = {name: self.start.networks[name] for name in self.names}
        return create_state(params, self.optimizer, self.ema, self.run.train.seed, self.shardings)

    def abstract_state(self) -> TrainState:
        return abstract_state(self.shardings, self.start.config, self.names, self.optimizer, self.ema)

    def jitted_step(self):
        """`step(state, frozen, batch, prompt_embeds) -> (state, metrics)`; the state is donated."""
        step_fn = functools.partial(
            train_step,
            self.objective,
            self.optimizer,
            learning_rate_schedule(self.run.optimizer, self.run.train.steps),
        )
        return jax.jit(
            step_fn,
            in_shardings=(
                self.shardings,
                jax.tree.map(lambda a: a.sharding, self.frozen),
                training_batch_sharding(self.mesh),
                replicated(self.mesh),
            ),
            out_shardings=(self.shardings, replicated(self.mesh)),
            donate_argnums=0,
        )

    def compile_step(self, batch) -> tuple[object, float]:
        """The step compiled ahead of time for `batch`'s shapes, and the seconds that took."""
        begin = time.perf_counter()
        compiled = (
            self.jitted_step().lower(self.abstract_state(), self.frozen, batch, self.prompt_embeds).compile()
        )
        return compiled, time.perf_counter() - begin


def make_trainer(run: RunConfig, mesh: Mesh, start: Start) -> Trainer:
    config = dataclasses.replace(start.config, dtype=run.model.dtype)
    model = MagicFace(config, kernels=KERNEL_CHOICES[run.model.kernels], remat=run.model.remat)
    schedule = NoiseSchedule.from_diffusers({**start.scheduler, "prediction_type": run.train.prediction_type})
    optimizer = make_optimizer(run.optimizer, run.train.steps)
    names = trained_networks(run)
    ema = run.optimizer.ema_decay > 0
    return Trainer(
        run=run,
        mesh=mesh,
        start=start,
        objective=Objective(model, schedule, run.train, run.optimizer.ema_decay),
        optimizer=optimizer,
        names=names,
        shardings=state_shardings(start.config, names, optimizer, ema, mesh, run.mesh.rules),
        prompt_embeds=jax.device_put(jnp.asarray(start.prompt_embeds), replicated(mesh)),
    )
