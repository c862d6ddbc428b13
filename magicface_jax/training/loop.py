"""`train(run)`: the whole run, top to bottom: mesh -> input -> networks -> state -> compiled step ->
steps with logging, checkpoints and validation grids -> the exported inference checkpoint.

Rerunning the same command resumes from the latest checkpoint in `output_dir/checkpoints` (onto any mesh)
and says so. SIGTERM (a preemption) saves the current step and returns normally. A non-finite loss stops
the run naming the step, before anything of that step is saved.

    OUTPUT_DIR/
      run_config.json   the resolved run config of the first run
      checkpoints/      orbax train checkpoints, by step
      logs/             TensorBoard event files
      metrics.jsonl     the same values, a JSON line per logged step
      samples/          validation grids, step_000500.png
      export/           the inference checkpoint (MagicFacePipeline.from_pretrained reads it)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
from tqdm import tqdm

from magicface_jax.atomic import atomic_file
from magicface_jax.data.pipeline import IndexedSource
from magicface_jax.errors import MagicFaceError
from magicface_jax.images import save_image
from magicface_jax.parallel.mesh import to_host, training_mesh
from magicface_jax.training import checkpoints
from magicface_jax.training.config import RunConfig
from magicface_jax.training.data import batches, open_training_source, training_iterator
from magicface_jax.training.export import exported_networks, write_export
from magicface_jax.training.init import load_start
from magicface_jax.training.latent_cache import LatentCache, vae_fingerprint
from magicface_jax.training.observe import EventLog, peak_tflops, step_flops
from magicface_jax.training.trainer import Trainer, make_trainer
from magicface_jax.training.validation import validation_grid, validation_record, validation_set

Log = Callable[[str], None]


@dataclasses.dataclass
class RunResult:
    step: int
    losses: dict[int, float]  # the logged steps' losses
    export_dir: Path | None
    stopped_by_signal: bool = False


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.requested = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _handle(self, signum, frame) -> None:
        self.requested = True


def check_run(run: RunConfig, mesh) -> None:
    """Everything about the run that can be checked before weights are read."""
    out = Path(run.output_dir).expanduser()
    if out.is_file():
        raise MagicFaceError(f"output_dir={run.output_dir} is a file; give a folder (it is created)")
    for name, value in (("init_checkpoint", run.init_checkpoint), ("dataset", run.dataset)):
        if value and Path(value).expanduser().exists():
            inside = Path(value).expanduser().resolve()
            if out.resolve() == inside or inside in out.resolve().parents or out.resolve() in inside.parents:
                raise MagicFaceError(
                    f"output_dir={run.output_dir} overlaps {name}={value}: choose another folder"
                )
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if run.train.batch_size % (shards * run.train.grad_accum_steps):
        raise MagicFaceError(
            f"train.batch_size={run.train.batch_size} does not divide over the mesh's data x fsdp = {shards} "
            f"devices and {run.train.grad_accum_steps} accumulation steps: use a multiple of "
            f"{shards * run.train.grad_accum_steps}"
        )
    if run.train.batch_size % jax.process_count():
        raise MagicFaceError(
            f"train.batch_size={run.train.batch_size} does not split over {jax.process_count()} processes"
        )


def _write_run_config(out: Path, run: RunConfig) -> None:
    path = out / "run_config.json"
    if jax.process_index() == 0 and not path.exists():
        with atomic_file(path) as partial:
            partial.write_text(json.dumps(run.to_dict(), indent=2))


def _changed_settings(saved: Path, run: RunConfig) -> list[str]:
    """The dotted keys whose values differ between the run config saved at `saved` and `run`."""
    if not saved.exists():
        return []

    def flat(tree: dict, prefix: str = "") -> dict:
        found = {}
        for key, value in tree.items():
            found |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
        return found

    before, now = flat(json.loads(saved.read_text())), flat(json.loads(json.dumps(run.to_dict())))
    return [f"{key} {before.get(key)!r} -> {now.get(key)!r}" for key in now if before.get(key) != now[key]]


def _restore(manager, step: int, trainer, iterator, out: Path, run: RunConfig):
    """The state of checkpoint `step`, or one line naming the settings that changed the state's shape
    since the run was started (an optimizer option that adds a transform, say)."""
    try:
        return checkpoints.restore(manager, step, trainer.abstract_state(), iterator)
    except ValueError as err:
        if "tree structures do not match" not in str(err):
            raise
        changed = _changed_settings(out / "run_config.json", run)
        since = f" (changed since it started: {'; '.join(changed)})" if changed else ""
        raise MagicFaceError(
            f"the checkpoint of step {step} in {out / 'checkpoints'} holds another optimizer state than this "
            f"run's{since}: resume with the settings it was started with, or give a new output_dir"
        ) from None


def train(run: RunConfig, *, export_only: bool = False, log: Log = print) -> RunResult:
    out = Path(run.output_dir).expanduser()
    mesh = training_mesh(run.mesh.data, run.mesh.fsdp, run.mesh.tensor)
    check_run(run, mesh)
    source = open_training_source(run, run.data.split)
    start = load_start(run, mesh)
    if isinstance(source, LatentCache):
        source.check_vae(vae_fingerprint(jax.tree.map(to_host, start.networks["vae"])))
    trainer = make_trainer(run, mesh, start)
    manager = checkpoints.checkpoint_manager(out / "checkpoints", run.checkpoint)
    try:
        return _train(trainer, manager, source, out, export_only, log)
    finally:
        manager.close()  # its threads end with the run, also when several runs share a process


def _train(trainer: Trainer, manager, source, out: Path, export_only: bool, log: Log) -> RunResult:
    run, mesh = trainer.run, trainer.mesh
    iterator = training_iterator(run, source, mesh)
    latest = manager.latest_step()
    where = f"a {dict(mesh.shape)} mesh of {mesh.devices.size} devices"
    if latest is None:
        state = trainer.initial_state()
        log(f"new run: training {', '.join(trainer.names)} on {where}")
    else:
        state = _restore(manager, latest, trainer, iterator, out, run)
        log(f"resumed from step {latest} on {where}")
    frozen = trainer.frozen
    step = int(state.step)
    if export_only:
        return _export(out, trainer, state, step, log)
    out.mkdir(parents=True, exist_ok=True)
    _write_run_config(out, run)
    data = batches(iterator, mesh)
    batch = next(data)
    compiled, compile_seconds = trainer.compile_step(batch)
    flops = step_flops(compiled)
    peak, peak_source = peak_tflops(run.logging.peak_tflops_per_device, run.model.dtype)
    log(
        f"step compiled in {compile_seconds:.1f} s; {flops / 1e9:.3g} GFLOP per device per step; "
        f"peak {peak:.3g} TFLOP/s per device ({peak_source})"
    )
    events = EventLog(out, run.logging.tensorboard)
    events.scalars(step, {"compile_seconds": compile_seconds})
    grids = _validation(trainer, out, events, log)
    result = RunResult(step, {}, None)
    preemption = _Preemption()
    progress = tqdm(
        total=run.train.steps, initial=step, disable=not run.logging.progress or jax.process_index() != 0
    )
    window_start, window_steps = time.perf_counter(), 0
    with preemption.installed():
        while step < run.train.steps:
            state, metrics = compiled(state, frozen, batch, trainer.prompt_embeds)
            step += 1
            window_steps += 1
            logging_step = step % run.logging.every_steps == 0 or step == run.train.steps
            # Read once: a SIGTERM that lands later in this iteration (the step computes while its metrics
            # are fetched) stops the next one, after saving it, instead of stopping this one unsaved.
            stopping = preemption.requested
            saving = step % run.checkpoint.every_steps == 0 or step == run.train.steps or stopping
            if logging_step or saving:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not math.isfinite(values["loss"]):
                    manager.wait_until_finished()
                    raise MagicFaceError(
                        f"the loss is {values['loss']} at step {step}; stopped without saving it (the "
                        f"last checkpoint is step {manager.latest_step()}): lower optimizer.learning_rate or "
                        "check the data"
                    )
                seconds = (time.perf_counter() - window_start) / window_steps
                values |= {
                    "step_seconds": seconds,
                    "examples_per_second": run.train.batch_size / seconds,
                    "tflops_per_device": flops / seconds / 1e12,
                    "mfu": flops / seconds / 1e12 / peak,
                }
                events.scalars(step, values)
                result.losses[step] = values["loss"]
                progress.set_postfix(loss=f"{values['loss']:.4f}", steps_per_s=f"{1 / seconds:.2f}")
                window_start, window_steps = time.perf_counter(), 0
            if saving:
                checkpoints.save(manager, step, state, iterator)
            if grids is not None and step % run.evaluation.every_steps == 0:
                grids(step, state)
            progress.update(1)
            if stopping:
                result.stopped_by_signal = True
                break
            if step < run.train.steps:
                batch = next(data)
        manager.wait_until_finished()  # under the handler: a second SIGTERM does not cut the write short
    progress.close()
    events.close()
    result.step = step
    if result.stopped_by_signal:
        checkpoints.check_saved(manager, step)
        log(f"SIGTERM: saved step {step}, stopping")
    else:
        result.export_dir = _export(out, trainer, state, step, log).export_dir
    return result


def _validation(trainer: Trainer, out: Path, events: EventLog, log: Log):
    """A function that writes a validation grid, or None when the run makes none."""
    run = trainer.run
    if not run.evaluation.every_steps:
        return None
    images = dataclasses.replace(run, data=dataclasses.replace(run.data, latent_cache=""))
    try:
        source = open_training_source(images, run.data.eval_split)
    except MagicFaceError as err:
        log(f"warning: no validation grids ({err})")
        return None
    raw = [IndexedSource(source)[i] for i in range(min(run.evaluation.num_pairs, len(source)))]
    data = validation_set([validation_record(r) for r in raw], run.evaluation)

    def write(step: int, state) -> None:
        networks = exported_networks(state, trainer.frozen, "ema", run.train, trainer.start.config)
        grid = validation_grid(
            trainer.model,
            trainer.objective.schedule,
            networks,
            trainer.prompt_embeds,
            data,
            run.evaluation,
            trainer.mesh,
        )
        if jax.process_index() == 0:
            path = out / "samples" / f"step_{step:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image(grid, path)
            events.image(step, "validation/edits", grid)

    return write


def _export(out: Path, trainer: Trainer, state, step: int, log: Log) -> RunResult:
    directory = out / "export"
    weights = trainer.run.checkpoint.export_weights
    write_export(
        directory,
        trainer.start,
        state,
        trainer.frozen,
        weights,
        step,
        trainer.run.train,
    )
    if jax.process_index() == 0:
        log(f"exported step {step} ({weights} weights) to {directory}")
    return RunResult(step, {}, directory)
