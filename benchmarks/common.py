"""Measurement helpers shared by the benchmarks: timing, ahead-of-time compilation, XLA's cost and memory
analyses, this machine's matmul rate, process memory, and a description of the machine.

Benchmarks must run with XLA's default CPU code generation: import this module before JAX is first used,
and it refuses the fast-compile flags that the test suite sets.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from magicface_jax.atomic import atomic_file
from magicface_jax.errors import MagicFaceError

# Flags that trade run time for compile time (tests/conftest.py sets them); figures taken under them are
# not the library's speed.
_SLOW_CODE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
_VERSIONED = ("jax", "jaxlib", "flax", "numpy", "torch", "diffusers", "transformers", "orbax-checkpoint")


def check_json_path(path: str | None) -> None:
    """`--json PATH` must name a file in an existing folder (checked before any measurement)."""
    if path and not Path(path).resolve().parent.is_dir():
        raise MagicFaceError(f"--json {path}: its folder does not exist")


def whole_numbers(text: str, flag: str, example: str = "1,2,4") -> tuple[int, ...]:
    """A comma-separated list of whole numbers >= 1, in the order given, or a one-line error."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise MagicFaceError(f"{flag} {text!r}: give comma-separated whole numbers, e.g. {example}") from None
    if any(v < 1 for v in values):
        raise MagicFaceError(f"{flag} {text!r}: every value must be at least 1")
    return values


def names(text: str, flag: str, allowed: Sequence[str]) -> tuple[str, ...]:
    """A comma-separated list of names out of `allowed`, without repeats, or a one-line error."""
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values or any(v not in allowed for v in values):
        raise MagicFaceError(f"{flag} {text!r}: use one or more of {', '.join(allowed)}, comma-separated")
    return tuple(dict.fromkeys(values))


def write_json(path: str, report: dict[str, Any], overwrite: bool = True) -> None:
    """Writes a report whole or not at all (a partial file renamed at the end); an existing file is kept
    unless `overwrite`."""
    with atomic_file(path, overwrite) as partial:
        partial.write_text(json.dumps(report, indent=2))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def request_cpu_devices(count: int) -> None:
    """Asks XLA for `count` CPU devices when XLA_FLAGS does not say how many (it only takes effect before
    JAX starts its backend; on a GPU or TPU host it only concerns the unused CPU backend)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def ensure_devices(count: int, what: str) -> None:
    """`request_cpu_devices(count)`, then checks that JAX has `count` devices."""
    request_cpu_devices(count)
    flag = f"--xla_force_host_platform_device_count={count}"
    import jax

    if len(jax.devices()) < count:
        raise MagicFaceError(
            f"{what} needs {count} devices, JAX has {len(jax.devices())} ({jax.default_backend()}): on a CPU "
            f"run it in a fresh process with XLA_FLAGS={flag}"
        )


def fast_compile_flags() -> list[str]:
    """The test-only fast-compile flags in XLA_FLAGS: they make slower code (and faster compiles) but leave
    the HLO passes, hence XLA's buffer assignment and cost analysis, as they are."""
    return [f for f in _SLOW_CODE_FLAGS if f in os.environ.get("XLA_FLAGS", "")]


def check_xla_flags() -> str:
    """The XLA_FLAGS in effect; exits if they would make the figures meaningless."""
    flags = os.environ.get("XLA_FLAGS", "")
    bad = fast_compile_flags()
    if bad:
        raise MagicFaceError(f"XLA_FLAGS contains {' '.join(bad)} (test-only fast-compile flags): unset them")
    return flags


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions(packages: Sequence[str] = _VERSIONED) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine() -> dict[str, Any]:
    """What a figure was measured on: CPU, cores, load, date, library versions, XLA flags."""
    return {
        "cpu": cpu_model(),
        "cores": cores(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average": load_average(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


# ---------------------------------------------------------------------------------------------- timing


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated runs after warm-up."""

    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    def to_json(self) -> dict[str, Any]:
        return {"median_s": self.median, "best_s": self.best, "runs_s": list(self.seconds)}


def time_call(fn: Callable[[], Any]) -> float:
    """Seconds one call takes; `fn` must wait for its result (e.g. `block_until_ready`)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_runs(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Timing:
    for _ in range(warmup):
        fn()
    return Timing(tuple(time_call(fn) for _ in range(repeats)))


def time_alternating(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    pause_s: float = 1.0,
    settle_below_s: float = 2.0,
) -> dict[str, Timing]:
    """Times several functions in alternation (A B A B ...), so that a change of load on a shared machine
    falls on all of them alike.

    Each switch begins with a pause, and, for a function faster than `settle_below_s`, one untimed run:
    after work, the idle threads of one runtime (XLA's pool, PyTorch's OpenMP team) keep spinning for a
    while and slow the other one down, by up to 50x for a 40 ms forward on 2 cores.
    """
    settle = {}
    for name, fn in fns.items():
        seconds = [time_call(fn) for _ in range(max(warmup, 1))]
        settle[name] = min(seconds) < settle_below_s
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if len(fns) > 1:
                time.sleep(pause_s)
                if settle[name]:
                    fn()
            runs[name].append(time_call(fn))
    return {name: Timing(tuple(r)) for name, r in runs.items()}


# ------------------------------------------------------------------------------------------------- XLA


@dataclasses.dataclass
class Compiled:
    """An ahead-of-time compiled function with its lowering and compile times."""

    executable: Any
    lower_s: float
    compile_s: float

    @property
    def flops(self) -> float:
        return xla_flops(self.executable)

    @property
    def memory(self) -> dict[str, int]:
        return xla_memory(self.executable)


def compile_ahead(fn: Callable, *args, **kwargs) -> Compiled:
    """`jax.jit(fn).lower(*args).compile()`, timing the two stages apart."""
    import jax

    return compile_program(jax.jit(fn), *args, **kwargs)


def compile_program(program, *args, **kwargs) -> Compiled:
    """`program.lower(*args).compile()` for a jitted or pmapped function, timing the two stages apart."""
    start = time.perf_counter()
    lowered = program.lower(*args, **kwargs)
    lowered_at = time.perf_counter()
    executable = lowered.compile()
    return Compiled(executable, lowered_at - start, time.perf_counter() - lowered_at)


def xla_flops(executable) -> float:
    """FLOPs of one call, from XLA's cost analysis (a dict, or a list of one dict in older JAX)."""
    cost = executable.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def plain(model):
    """The same model computing the same arithmetic without the CPU's rewrites, for XLA's cost analysis:
    attention as one `jax.nn.dot_product_attention` (the analysis counts a loop body, such as the blocked
    attention's, once instead of once per iteration) and XLA's own convolutions (it counts the zero
    padding of an im2col matmul, which its convolution count leaves out)."""
    from magicface_jax.nn.cpu_kernels import PLAIN

    return dataclasses.replace(model, kernels=PLAIN)


def state_bytes(tree) -> tuple[int, int]:
    """(bytes on one device, bytes of one full copy) of a pytree of arrays or ShapeDtypeStructs that carry
    their shardings."""
    import jax
    import numpy as np

    per_device = full = 0
    for leaf in jax.tree.leaves(tree):
        itemsize = np.dtype(leaf.dtype).itemsize
        full += math.prod(leaf.shape) * itemsize
        per_device += math.prod(leaf.sharding.shard_shape(leaf.shape)) * itemsize
    return per_device, full


def xla_memory(executable) -> dict[str, int]:
    """XLA's buffer sizes (bytes): arguments, outputs, temporaries (the scratch the program allocates)."""
    stats = executable.memory_analysis()
    fields = ("argument", "output", "alias", "temp", "generated_code")
    return {f"{name}_bytes": int(getattr(stats, f"{name}_size_in_bytes", 0)) for name in fields}


def matmul_flops_per_second(size: int = 4096, repeats: int = 8, dtype: str = "float32") -> float:
    """Best FLOP/s of a jitted `jnp.dot` of two (size, size) matrices on the default device, at JAX's default
    precision: this machine's practical peak."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    dot = jax.jit(jnp.dot).lower(a, b).compile()
    timing = time_runs(lambda: dot(a, b).block_until_ready(), repeats)
    return 2 * size**3 / timing.best


def torch_matmul_flops_per_second(size: int = 4096, repeats: int = 8) -> float:
    """The same for `torch.mm` (its own BLAS), for comparison."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    timing = time_runs(lambda: torch.mm(a, b), repeats)
    return 2 * size**3 / timing.best


# ---------------------------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_bytes() -> int:
    """Resident memory of this process now."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Highest resident memory since the process started or since `reset_peak_rss()`."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> bool:
    """Restarts the peak-RSS count at the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def lifetime_peak_rss_bytes() -> int:
    """Highest resident memory over the whole process (not affected by `reset_peak_rss`)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclasses.dataclass(frozen=True)
class ChildRun:
    returncode: int
    seconds: float
    peak_rss_bytes: int
    output: str


def run_child(command: Sequence[str], env: dict[str, str] | None = None) -> ChildRun:
    """Runs a command and returns its exit code, wall time, peak RSS (of that process alone) and output."""
    start = time.perf_counter()
    process = subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(process.returncode, time.perf_counter() - start, usage.ru_maxrss * 1024, output)


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"
