"""Train checkpoints with orbax's `CheckpointManager`: the state (parameters, optimizer state, EMA, step,
RNG key) and each process's grain iterator position, saved asynchronously, the last `keep` kept.

orbax writes a step under a temporary name and renames it when every process has finished, so a save cut
off midway leaves the checkpoints before it as they were. A restore reads each array straight into the
shardings of the run doing the restoring, so a run resumes onto a mesh of another shape or device count.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

from magicface_jax.errors import MagicFaceError
from magicface_jax.training.config import CheckpointSettings
from magicface_jax.training.state import TrainState

STATE, DATA = "state", "data"


def use_replica_parallel(enabled: bool) -> None:
    """Whether orbax's saves split each replicated array among its replicas, each writing a slice
    (orbax's default except on GPU). Process-wide: orbax reads it from its global type registry."""
    handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=enabled)
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)  # orbax warns of every override; this one is meant
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_log.setLevel(level)


def checkpoint_manager(directory: Path, settings: CheckpointSettings) -> ocp.CheckpointManager:
    if jax.default_backend() == "cpu":
        # CPU devices share their host's memory: splitting only multiplies small writes, 2.3x the
        # time of a save on 8 devices (benchmarks/checkpoint_save.py, BENCHMARKS.md).
        use_replica_parallel(False)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=settings.keep,
        enable_async_checkpointing=settings.async_save,
        create=True,
    )
    handlers = {STATE: ocp.StandardCheckpointHandler(), DATA: grain.checkpoint.CheckpointHandler()}
    return ocp.CheckpointManager(directory.absolute(), options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state: TrainState, iterator) -> None:
    """Starts saving `state` and the iterator's position as `step` (returns before the write ends)."""
    args = ocp.args.Composite(
        **{STATE: ocp.args.StandardSave(state), DATA: grain.checkpoint.CheckpointSave(iterator)}
    )
    manager.save(step, args=args, force=True)


def check_saved(manager: ocp.CheckpointManager, step: int) -> None:
    """Raises unless `step` is on disk, committed (after `wait_until_finished`)."""
    manager.reload()
    if step not in manager.all_steps():
        raise MagicFaceError(
            f"the checkpoint of step {step} is not in {manager.directory} after its save: check the disk "
            "(space, permissions) and the log above"
        )


def restore(manager: ocp.CheckpointManager, step: int, target: TrainState, iterator) -> TrainState:
    """The state of `step` in the shardings of `target` (abstract arrays); the iterator is moved to where
    that step left it."""
    args = ocp.args.Composite(
        **{STATE: ocp.args.StandardRestore(target), DATA: grain.checkpoint.CheckpointRestore(iterator)}
    )
    return manager.restore(step, args=args)[STATE]
