"""Joining the processes of a multi-host run (TPU pod slices, multi-node GPU, several CPU processes)."""

from __future__ import annotations

import jax

from magicface_jax.errors import MagicFaceError

INITIALIZATION_TIMEOUT_S = 300
# JAX's default of 100 s declares a process dead when a loaded host (several processes sharing a
# few CPU cores, a long compile) delays its heartbeats; a hung process is still caught in 5 minutes.
HEARTBEAT_TIMEOUT_S = 300


def join_processes(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """`jax.distributed.initialize`: from the arguments when given, else from the environment (TPU pods,
    SLURM and Open MPI describe themselves). Must run before anything touches a device."""
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise MagicFaceError("--coordinator, --num-processes and --process-id go together: give all three")
    if all(given) and not 0 <= process_id < num_processes:
        raise MagicFaceError(f"--process-id {process_id} is not in [0, {num_processes})")
    # CPU processes exchange collectives over gloo (the default implementation has none across hosts).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=INITIALIZATION_TIMEOUT_S,
            heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
        )
    except (RuntimeError, ValueError) as err:
        raise MagicFaceError(
            f"cannot join the other processes ({' '.join(str(err).split())[:300]})"
        ) from None
