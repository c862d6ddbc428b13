"""What a run reports: TensorBoard event files, a progress bar, and the step's FLOPs against the device's
peak (MFU).

The FLOPs are XLA's cost analysis of the compiled step (per device, for the partitioned program). The
peak comes from `logging.peak_tflops_per_device`, else from the device kind's published dense bf16 peak,
else (CPU) from a matmul measured here in the run's compute dtype.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

# Published dense bf16 peaks, TFLOP/s per device (chip).
PEAK_TFLOPS = {
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
    "NVIDIA H100": 989.0,
    "NVIDIA H200": 989.0,
    "NVIDIA A100": 312.0,
}


def step_flops(compiled) -> float:
    """FLOPs per device of one execution of a compiled program (0 where XLA does not say)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", 0.0))


def measured_matmul_tflops(dtype: str = "float32", size: int = 1024, repeats: int = 5) -> float:
    a = jnp.ones((size, size), dtype)
    dot = jax.jit(jnp.dot).lower(a, a).compile()
    dot(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def peak_tflops(configured: float, dtype: str) -> tuple[float, str]:
    """The peak per device and where it comes from."""
    if configured:
        return configured, "configured"
    kind = jax.devices()[0].device_kind
    for prefix, peak in PEAK_TFLOPS.items():
        if kind.startswith(prefix):
            return peak, f"{kind} published bf16 peak"
    return measured_matmul_tflops(dtype), f"{kind}: a {dtype} matmul measured in this run"


class EventLog:
    """Process 0 writes every logged value twice: as TensorBoard scalars (`logs/`) and as one JSON line
    per step (`metrics.jsonl`, for scripts)."""

    def __init__(self, directory: Path, tensorboard: bool = True):
        self._writer = None
        self._lines = None
        if jax.process_index() == 0:
            directory.mkdir(parents=True, exist_ok=True)
            self._lines = open(directory / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._writer = SummaryWriter(str(directory / "logs"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._lines is not None:
            self._lines.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")
            self._lines.flush()
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, float(value), step)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        if self._writer is not None:
            self._writer.add_image(name, image, step, dataformats="HWC")

    def close(self) -> None:
        if self._lines is not None:
            self._lines.close()
        if self._writer is not None:
            self._writer.close()
