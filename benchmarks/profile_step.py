"""Where the time of one guided denoiser step goes: every operation of the compiled step timed by JAX's
profiler, joined with the optimised HLO for its kind and its FLOPs.

    python benchmarks/profile_step.py [--config tiny|sd15] [--batch 1] [--top 25] [--json OUT]

The step is the sampling loop's body without the sampler update: the denoiser on the [cond ; uncond]
pairs of `--batch` edits and the guidance combination (random weights and identity keys/values). Each
executed HLO operation is put in one category: products (dots and convolutions), products with fused
elementwise work (e.g. a softmax's exponential after the attention logits), elementwise and reductions,
data movement (copies, slices, concatenations). Reported per category and per (category, result shape):
time, share, FLOPs (2 per multiply-add, from the HLO) and achieved FLOP/s, against this machine's
jnp.dot rate (the better of two measurements, before and after). Loops (`while`) are not counted
themselves: the operations inside them are. The profiler adds a little time to every operation, so
their sum exceeds the step's time (measured without it).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import re
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common
from benchmarks.model import CONFIGS, LATENT_SIZE
from magicface_jax.cli import ArgumentParser, run
from magicface_jax.errors import MagicFaceError

PRODUCTS = ("dot", "convolution")
# Opcodes that move or relabel data without arithmetic.
MOVES = frozenset(
    [
        "parameter",
        "constant",
        "bitcast",
        "broadcast",
        "reshape",
        "transpose",
        "copy",
        "slice",
        "dynamic-slice",
        "dynamic-update-slice",
        "concatenate",
        "pad",
        "tuple",
        "get-tuple-element",
        "iota",
    ]
)
CONTROL = frozenset(("while", "conditional", "call"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sd15", help="tiny or sd15 (default sd15)")
    parser.add_argument("--batch", type=int, default=1, help="edits per step (default 1: 2 denoiser rows)")
    parser.add_argument("--guidance", type=float, default=1.5, help="AU guidance scale (default 1.5)")
    parser.add_argument("--top", type=int, default=25, help="rows of the per-shape table (default 25)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.config not in CONFIGS:
        raise MagicFaceError(f"--config {args.config!r}: use tiny or sd15")
    if args.batch < 1:
        raise MagicFaceError(f"--batch {args.batch}: must be at least 1")
    if args.guidance <= 1:
        raise MagicFaceError(f"--guidance {args.guidance}: must be above 1 (both branches run)")
    if args.top < 1:
        raise MagicFaceError(f"--top {args.top}: must be at least 1")
    common.check_json_path(args.json)
    return args


# ------------------------------------------------------------------------------------------ the HLO text


@dataclasses.dataclass(frozen=True)
class Op:
    """One instruction of the optimised HLO module."""

    name: str
    opcode: str
    result: str  # its result type, e.g. f32[2,64,64,320]{3,2,1,0}
    category: str  # "products", "products + elementwise", "elementwise", "data movement" or "loop"
    flops: float  # of the dots and convolutions it runs, per execution


_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$")
_CALLS = re.compile(r"calls=%([\w.\-]+)")


def _called(rest: str) -> str:
    """The computation a fusion runs ("" if none is named)."""
    match = _CALLS.search(rest)
    return match.group(1) if match else ""


def _dims(result: str) -> list[int]:
    match = re.match(r"\w+\[([\d,]*)\]", result)
    return [int(d) for d in match.group(1).split(",") if d] if match else []


def _operand_names(rest: str) -> list[str]:
    return re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])


def _product_flops(opcode: str, result: str, rest: str, types: dict[str, str]) -> float:
    """2 x multiply-adds of a dot or convolution, from its operands' types."""
    out = math.prod(_dims(result))
    operands = _operand_names(rest)
    if opcode == "dot":
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
        lhs = _dims(types[operands[0]])
        dims = [int(d) for d in contracting.group(1).split(",") if d] if contracting else []
        return 2.0 * out * math.prod(lhs[d] for d in dims)
    kernel = _dims(types[operands[1]])
    labels = re.search(r"dim_labels=\w+_(\w+)->", rest)
    features = kernel[labels.group(1).index("o")] if labels else kernel[-1]
    groups = re.search(r"feature_group_count=(\d+)", rest)
    return 2.0 * out * math.prod(kernel) / features / (int(groups.group(1)) if groups else 1)


def hlo_ops(text: str) -> dict[str, Op]:
    """Every instruction of an optimised HLO module (`compiled.as_text()`), by name, with the category and
    FLOPs of what it runs (for a fusion: of its fused computation)."""
    computations: dict[str, list[tuple[str, str, str, str]]] = {}
    current = None
    for line in text.splitlines():
        if current is None:
            match = _COMPUTATION.match(line)
            if match:
                current = computations.setdefault(match.group(1), [])
        elif line.startswith("}"):
            current = None
        else:
            match = _INSTRUCTION.match(line)
            if match:
                current.append(match.groups())

    def runs(instruction: tuple[str, str, str, str], types: dict[str, str]) -> tuple[set[str], float]:
        """Opcodes an instruction runs (a fusion: those of its computation) and the FLOPs of its products."""
        _, result, opcode, rest = instruction
        if opcode == "fusion":
            return contents(_called(rest))
        return {opcode}, _product_flops(opcode, result, rest, types) if opcode in PRODUCTS else 0.0

    def contents(computation: str) -> tuple[set[str], float]:
        instructions = computations.get(computation, [])
        types = {name: result for name, result, _, _ in instructions}
        opcodes, flops = set(), 0.0
        for instruction in instructions:
            inner, inner_flops = runs(instruction, types)
            opcodes |= inner
            flops += inner_flops
        return opcodes, flops

    fused = {
        _called(rest)
        for instructions in computations.values()
        for _, _, opcode, rest in instructions
        if opcode == "fusion"
    }
    ops = {}  # the instructions that run as themselves: not those inside fused computations
    for computation, instructions in computations.items():
        if computation in fused:
            continue
        types = {name: result for name, result, _, _ in instructions}
        for instruction in instructions:
            name, result, opcode, _ = instruction
            opcodes, flops = runs(instruction, types)
            ops[name] = Op(name, opcode, result, _category(opcodes), flops)
    return ops


def _category(opcodes: set[str]) -> str:
    if opcodes & CONTROL:
        return "loop"
    arithmetic = opcodes - MOVES
    if arithmetic & set(PRODUCTS):
        return "products" if not arithmetic - set(PRODUCTS) else "products + elementwise"
    return "elementwise" if arithmetic else "data movement"


# ---------------------------------------------------------------------------------------- the profile


def traced_events(fn: Callable[[], Any]) -> list[dict[str, Any]]:
    """The complete ("X") events of JAX's profiler trace of one call of `fn`."""
    import jax

    with tempfile.TemporaryDirectory(prefix="magicface-profile-") as directory:
        with jax.profiler.trace(directory):
            jax.block_until_ready(fn())
        traces = sorted(Path(directory).glob("plugins/profile/*/*.trace.json.gz"))
        if not traces:
            raise MagicFaceError(
                f"the profiler wrote no trace under {directory}: is jax's profiler installed?"
            )
        with gzip.open(traces[-1], "rt") as stream:
            trace = json.load(stream)
    return [event for event in trace["traceEvents"] if event.get("ph") == "X"]


@dataclasses.dataclass
class Row:
    category: str
    result: str  # the result type without its layout
    count: int = 0
    seconds: float = 0.0
    flops: float = 0.0

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds if self.seconds else 0.0


def op_rows(events: Iterable[dict[str, Any]], ops: dict[str, Op]) -> list[Row]:
    """Profiler events of HLO instructions summed per (category, result shape), loops left out; the
    longest first."""
    rows: dict[tuple[str, str], Row] = {}
    for event in events:
        op = ops.get(event["name"])
        if op is None or op.category == "loop":
            continue
        key = (op.category, op.result.split("{")[0])
        row = rows.setdefault(key, Row(*key))
        row.count += 1
        row.seconds += event["dur"] / 1e6
        row.flops += op.flops
    return sorted(rows.values(), key=lambda r: -r.seconds)


def by_category(rows: Iterable[Row]) -> list[Row]:
    totals: dict[str, Row] = {}
    for row in rows:
        total = totals.setdefault(row.category, Row(row.category, "all"))
        total.count += row.count
        total.seconds += row.seconds
        total.flops += row.flops
    return sorted(totals.values(), key=lambda r: -r.seconds)


# ------------------------------------------------------------------------------------------------ main


def profile_step(name: str, batch: int, guidance: float) -> dict[str, Any]:
    import jax

    from benchmarks.sampling import build_models, guided_step, step_arguments
    from magicface_jax.diffusion import SD15_SCHEDULER_CONFIG, NoiseSchedule
    from magicface_jax.pipeline import MagicFacePipeline

    models = build_models(name, with_torch=False)
    schedule = NoiseSchedule.from_diffusers(SD15_SCHEDULER_CONFIG)
    pipe = MagicFacePipeline(models.config, models.params, models.prompt, schedule)
    args, _ = step_arguments(pipe, batch, LATENT_SIZE[name], guidance)
    executable = jax.jit(guided_step(pipe.model)).lower(*args).compile()
    timing = common.time_runs(lambda: executable(*args).block_until_ready(), repeats=2)
    events = traced_events(lambda: executable(*args))
    rows = op_rows(events, hlo_ops(executable.as_text()))
    return {"config": name, "batch": batch, "step_s": timing.median, "rows": rows}


def print_table(title: str, rows: list[Row], step_s: float, matmul_rate: float) -> None:
    print(f"\n{title}")
    print(f"{'seconds':>8} {'share':>6} {'count':>6} {'GFLOP':>8} {'GFLOP/s':>8} {'of dot':>6}  what")
    for r in rows:
        rate = (
            f"{r.flops_per_s / 1e9:8.1f} {100 * r.flops_per_s / matmul_rate:5.0f}%" if r.flops else " " * 15
        )
        print(
            f"{r.seconds:8.3f} {100 * r.seconds / step_s:5.1f}% {r.count:6d} {r.flops / 1e9:8.1f} {rate}  "
            f"{r.category} {r.result if r.result != 'all' else ''}"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.check_xla_flags()
    info = common.machine()
    print(
        f"{info['cpu']}, {info['cores']} cores; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    )
    before = common.matmul_flops_per_second()
    result = profile_step(args.config, args.batch, args.guidance)
    # The better of the rates before and after: a slower moment of the machine should not flatter the step.
    matmul_rate = max(before, common.matmul_flops_per_second())
    rows, step_s = result["rows"], result["step_s"]
    categories = by_category(rows)
    counted = sum(r.seconds for r in categories)
    print(
        f"\n{args.config}, {args.batch} edit(s) = {2 * args.batch} denoiser rows: step {step_s:.3f} s "
        f"(median of 2), profiled operations {counted:.3f} s; jnp.dot 4096² {matmul_rate / 1e9:.1f} GFLOP/s"
    )
    print_table("by category", categories, step_s, matmul_rate)
    print_table(f"the {args.top} longest (category, result shape)", rows[: args.top], step_s, matmul_rate)
    if args.json:
        report = {
            "command": " ".join(["python", *sys.argv]),
            "machine": info,
            "matmul_flops_per_s": matmul_rate,
            "step_s": step_s,
            "categories": [dataclasses.asdict(r) for r in categories],
            "rows": [dataclasses.asdict(r) for r in rows],
        }
        common.write_json(args.json, report)


if __name__ == "__main__":
    sys.exit(run(main))
