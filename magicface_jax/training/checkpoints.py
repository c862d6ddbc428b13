"""Train checkpoints with orbax's `CheckpointManager`: the state (parameters, optimizer state, EMA, step,
RNG key) and each process's grain iterator position, saved asynchronously, the last `keep` kept.

orbax writes a step under a temporary name and renames it when every process has finished, so a save cut
off midway leaves the checkpoints before it as they were. A restore reads each array straight into the
shardings of the run doing the restoring, so a run resumes onto a mesh of another shape or device count.
"""

from __future__ import annotations

from pathlib import Path

import grain
import orbax.checkpoint as ocp

from magicface_jax.training.config import CheckpointSettings
from magicface_jax.training.state import TrainState

STATE, DATA = "state", "data"


def checkpoint_manager(directory: Path, settings: CheckpointSettings) -> ocp.CheckpointManager:
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


def restore(manager: ocp.CheckpointManager, step: int, target: TrainState, iterator) -> TrainState:
    """The state of `step` in the shardings of `target` (abstract arrays); the iterator is moved to where
    that step left it."""
    args = ocp.args.Composite(
        **{STATE: ocp.args.StandardRestore(target), DATA: grain.checkpoint.CheckpointRestore(iterator)}
    )
    return manager.restore(step, args=args)[STATE]
