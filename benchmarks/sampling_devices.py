"""Sampling throughput across devices: the classic `jax.pmap` program beside the `shard_map` one, over the
first 1, 2, 4, ... devices of this host, for several edits per device.

    python benchmarks/sampling_devices.py [--config tiny,sd15] [--parallelism pmap,shard_map]
        [--devices 1,2,4,8] [--batch-per-device 1,2] [--steps 50] [--guidance 1.5] [--repeats 3]
        [--dtype auto|float32|bfloat16|both] [--compile-only CONFIGS] [--matmul-size 4096]
        [--json OUT [--overwrite]]

A separate script from `sampling.py`, which compares one device against the authors' PyTorch loop: this
one has no PyTorch side and needs its device count settled before JAX starts (on a CPU it asks XLA for
virtual devices when XLA_FLAGS does not say how many).

Each setting (dtype, devices d, parallelism) places the weights once on the first d devices (a mesh over
them): replicated for shard_map, stacked one slice per device for pmap; either way one copy per device,
which the output says with its size. Then, for each batch per device b, the edit program (VAE encodes,
identity features and their keys/values, the AU-guided UniPC loop in one `lax.scan`, decode) is lowered
and compiled ahead of time, warmed up and timed: a call edits d·b images at once, so its wall time is the
latency of each of them. Reported: compile time, the call's time, images/s in total and per device,
scaling efficiency (images/s per device against the smallest device count's), per-device memory from
XLA's memory analysis of the compiled program (arguments + outputs + temporaries; on a GPU or TPU also the
allocator's peak so far, from `device.memory_stats()`), the denoiser's FLOPs per edit (XLA's cost analysis
of one guided denoiser call, times the steps) and the FLOP/s that achieves against the peak: the measured
rate of a large matmul in the run's dtype on one device, times d (on a CPU's virtual devices, which share
the cores, the peak is that one rate). The same edits run under both programs and their images must agree
(max |diff| printed; above the dtype's tolerance the run fails with exit status 1).

`--compile-only CONFIGS` analyses those configs without weights (ShapeDtypeStructs): compile time, memory
and FLOPs, no timing; how a full-size model is measured on a host whose memory cannot hold its copies.

There is no input file: `--json` refuses an existing file unless `--overwrite`, and is written whole or
not at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common, sampling
from magicface_jax.atomic import check_output
from magicface_jax.cli import ArgumentParser, run
from magicface_jax.errors import MagicFaceError
from magicface_jax.pipeline import PARALLELISMS

CONFIGS = sampling.CONFIGS
# Largest image difference allowed between the two programs on the same edits (images in [0, 1]): they
# run the same per-device computation, but an accelerator may pick other kernels in each compile.
TOLERANCE = {"float32": 1e-3, "bfloat16": 3e-2}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny,sd15", help="tiny and/or sd15 (default both)")
    parser.add_argument(
        "--parallelism", default="pmap,shard_map", help="pmap and/or shard_map (default both)"
    )
    parser.add_argument(
        "--devices", help="device counts, comma-separated (default 1, 2, 4, ... up to every device)"
    )
    parser.add_argument("--batch-per-device", default="1,2", help="edits per device per call (default 1,2)")
    parser.add_argument("--steps", type=int, default=50, help="UniPC steps per edit (default 50)")
    parser.add_argument("--guidance", type=float, default=1.5, help="AU guidance scale (default 1.5, > 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per setting (default 3)")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="compute dtype: float32, bfloat16, both, or auto (float32 on a CPU; both on an accelerator)",
    )
    parser.add_argument(
        "--compile-only",
        default="",
        help="configs analysed without weights or runs (compile time, memory, FLOPs), e.g. sd15",
    )
    parser.add_argument(
        "--matmul-size",
        type=int,
        default=4096,
        help="side of the matmul whose rate is the peak (default 4096)",
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = parser.parse_args(argv)
    args.config = common.names(args.config, "--config", CONFIGS)
    args.parallelism = common.names(args.parallelism, "--parallelism", PARALLELISMS)
    if args.devices is not None:
        args.devices = tuple(sorted(set(common.whole_numbers(args.devices, "--devices", "1,2,4,8"))))
    args.batch_per_device = tuple(
        sorted(set(common.whole_numbers(args.batch_per_device, "--batch-per-device")))
    )
    args.compile_only = (
        common.names(args.compile_only, "--compile-only", CONFIGS) if args.compile_only else ()
    )
    for flag, value in (("--steps", args.steps), ("--repeats", args.repeats)):
        if value < 1:
            raise MagicFaceError(f"{flag} {value}: must be at least 1")
    if args.matmul_size < 128:
        raise MagicFaceError(f"--matmul-size {args.matmul_size}: must be at least 128")
    if not args.guidance > 1.0:
        raise MagicFaceError(f"--guidance {args.guidance}: must be above 1 (at 1 there is no guidance batch)")
    if args.dtype not in (*sampling.DTYPES, "both", "auto"):
        raise MagicFaceError(f"--dtype {args.dtype!r}: use float32, bfloat16, both or auto")
    if args.json:
        check_output(args.json, overwrite=args.overwrite)
    return args


def device_counts(requested: tuple[int, ...] | None) -> tuple[int, ...]:
    """The requested counts, checked against this host's devices; by default 1, 2, 4, ... and all."""
    if requested:
        common.ensure_devices(max(requested), "--devices")
        return requested
    common.request_cpu_devices(8)
    import jax

    available = len(jax.devices())
    return tuple(sorted({2**i for i in range(available.bit_length())} | {available}))


# ------------------------------------------------------------------------------------------ the model


@dataclasses.dataclass
class Setup:
    name: str
    model: Any  # MagicFace at the run's dtype, with the sampling kernels
    weights: Any  # (parameters, prompt): host arrays, or ShapeDtypeStructs with --compile-only
    inputs: sampling.Inputs
    sampler: Any
    flops_per_edit: dict[int, float]  # batch per device -> the denoiser's FLOPs per edit


def host_weights(config, abstract: bool, seed: int = 0):
    """Random parameters on the host (or their shapes with `abstract`) and a random prompt embedding.
    Kernels are drawn as Flax's default initialiser draws them (normal, variance 1 / fan-in), biases are
    zero and norm scales one; drawn with NumPy, which takes seconds where compiling the init takes minutes."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from magicface_jax.models.magicface import COMPONENTS, abstract_params, unbox

    rng = np.random.default_rng(seed)
    prompt = rng.standard_normal((1, 77, config.denoiser.cross_attention_dim), dtype=np.float32)
    params = {name: unbox(abstract_params(config, name)) for name in COMPONENTS}
    if abstract:
        return params, jax.ShapeDtypeStruct(prompt.shape, jnp.float32)

    def draw(path, leaf):
        if path[-1].key == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            return rng.standard_normal(leaf.shape, dtype=np.float32) / np.float32(math.sqrt(fan_in))
        return np.full(leaf.shape, 1.0 if path[-1].key == "scale" else 0.0, np.float32)

    return jax.tree_util.tree_map_with_path(draw, params), prompt


def denoiser_flops_per_edit(model, weights, batch: int, latent: int, steps: int) -> float:
    """XLA's FLOPs of the guided denoiser calls of one edit: one call on `batch` edits (their [cond ; uncond]
    pairs), divided by `batch`, times the steps."""
    import jax
    import jax.numpy as jnp

    params, prompt = weights
    kv, _ = sampling.identity_shapes(model, params, prompt, batch, latent)
    latents = jax.ShapeDtypeStruct((batch, latent, latent, 4), jnp.float32)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    au = jax.ShapeDtypeStruct((batch, 12), jnp.float32)
    args = (params["denoiser"], prompt, latents, au, kv, scalar, latents, scalar)
    return sampling.step_flops(model, args) / batch * steps


def abstract_placement(tree, mesh, parallelism: str):
    """What `place_weights` would place, as ShapeDtypeStructs with the same shardings."""
    import jax

    from magicface_jax.parallel.mesh import batch_sharded, data_mesh, replicated
    from magicface_jax.pipeline import local_devices

    if parallelism == "pmap":
        devices = local_devices(mesh)
        sharding = batch_sharded(data_mesh(devices))
        return jax.tree.map(
            lambda a: jax.ShapeDtypeStruct((len(devices), *a.shape), a.dtype, sharding=sharding), tree
        )
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated(mesh)), tree)


# ----------------------------------------------------------------------------------------- the settings


def tree_bytes(tree) -> int:
    import jax
    import numpy as np

    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree))


def allocator_peak(devices) -> int | None:
    """The largest peak of the allocator over `devices` so far (None where the backend keeps no count, as
    on a CPU)."""
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
    return max(peaks) if peaks and None not in peaks else None


def run_once(executable, program_args: tuple) -> None:
    executable(*program_args).block_until_ready()


def run_setting(setup: Setup, dtype: str, devices: list, parallelism: str, args, images: dict) -> list[dict]:
    """One (dtype, devices, parallelism): weights placed once, then each batch per device compiled, timed
    and checked against the other program's images of the same edits (kept in `images`)."""
    import jax
    import numpy as np

    from magicface_jax.parallel.mesh import data_mesh
    from magicface_jax.pipeline import EditRequest, edit_call, place_weights, program_inputs

    mesh, d = data_mesh(devices), len(devices)
    abstract = setup.name in args.compile_only
    start = time.perf_counter()
    if abstract:
        weights = abstract_placement(setup.weights, mesh, parallelism)
    else:
        weights = jax.block_until_ready(place_weights(setup.weights, mesh, parallelism))
    place_s = time.perf_counter() - start
    per_device, _ = common.state_bytes(weights)
    copies = per_device / tree_bytes(setup.weights)
    layout = "stacked, one slice per device" if parallelism == "pmap" else "replicated over the mesh"
    print(
        f"  [{dtype}] {parallelism} on {d} device(s): weights {layout}: {copies:.0f} copy per "
        f"device, {common.gib(per_device)} each, {common.gib(per_device * d)} in all"
        + ("" if abstract else f", placed in {place_s:.1f} s"),
        flush=True,
    )
    rows = []
    for b in args.batch_per_device:
        n = d * b
        request = EditRequest(*dataclasses.astuple(setup.inputs.head(n)))
        program, program_args = edit_call(
            setup.model,
            mesh,
            parallelism,
            weights,
            program_inputs(request),
            jax.numpy.float32(args.guidance),
            setup.sampler,
            guided=True,
            decode=True,
        )
        compiled = common.compile_program(program, *program_args)
        memory = compiled.memory
        row: dict[str, Any] = {
            "config": setup.name,
            "dtype": dtype,
            "parallelism": parallelism,
            "devices": d,
            "batch_per_device": b,
            "edits_per_call": n,
            "weights_bytes_per_device": per_device,
            "weights_copies_per_device": copies,
            "lower_s": compiled.lower_s,
            "compile_s": compiled.compile_s,
            "xla_memory_per_device": memory,
            "xla_peak_bytes_per_device": memory["argument_bytes"]
            + memory["output_bytes"]
            - memory["alias_bytes"]
            + memory["temp_bytes"],
            "denoiser_flops_per_edit": setup.flops_per_edit[b],
        }
        if not abstract:
            call = common.time_runs(
                functools.partial(run_once, compiled.executable, program_args), args.repeats
            )
            output = np.asarray(compiled.executable(*program_args))
            output = output.reshape(-1, *output.shape[-3:])[:n]
            row.update(
                call=call.to_json(),
                images_per_s=n / call.median,
                images_per_s_per_device=b / call.median,
                allocator_peak_bytes=allocator_peak(devices),
            )
            key = (dtype, d, b)
            if key in images:
                other, images_diff = images.pop(key)
                row["max_abs_diff_vs"] = {other: float(np.abs(output - images_diff).max())}
            else:
                images[key] = (parallelism, output)
        rows.append(row)
        print_row(row)
    if not abstract:
        jax.tree.map(lambda a: a.delete(), weights)  # the next setting's copies take their place
    jax.clear_caches()  # and its programs those of this one
    return rows


def print_row(row: dict) -> None:
    memory = row["xla_memory_per_device"]
    line = (
        f"    batch {row['batch_per_device']}/device ({row['edits_per_call']} edits): lower "
        f"{row['lower_s']:.1f} s, compile {row['compile_s']:.1f} s; XLA memory per device: arguments "
        f"{common.gib(memory['argument_bytes'])}, temporaries {common.gib(memory['temp_bytes'])}, peak "
        f"{common.gib(row['xla_peak_bytes_per_device'])}; denoiser "
        f"{row['denoiser_flops_per_edit'] / 1e9:.1f} GFLOP per edit"
    )
    if "call" in row:
        line += f"; call {row['call']['median_s']:.2f} s, {row['images_per_s']:.3f} images/s"
        if row["allocator_peak_bytes"] is not None:
            line += f", allocator peak {common.gib(row['allocator_peak_bytes'])}"
    for other, diff in row.get("max_abs_diff_vs", {}).items():
        line += f"; images vs {other}: max |diff| {diff:.1e}"
    print(line, flush=True)


def add_rates(rows: list[dict], rates: dict[str, float], shared_cores: bool) -> None:
    """Scaling efficiency against the smallest device count of the same (config, dtype, parallelism,
    batch), and the achieved FLOP/s against the peak."""
    for row in rows:
        if "images_per_s" not in row:
            continue
        same = [
            r
            for r in rows
            if "images_per_s" in r
            and all(r[k] == row[k] for k in ("config", "dtype", "parallelism", "batch_per_device"))
        ]
        base = min(same, key=lambda r: r["devices"])
        row["scaling_efficiency"] = row["images_per_s_per_device"] / base["images_per_s_per_device"]
        row["scaling_base_devices"] = base["devices"]
        row["achieved_flops_per_s"] = row["denoiser_flops_per_edit"] * row["images_per_s"]
        row["peak_flops_per_s"] = rates[row["dtype"]] * (1 if shared_cores else row["devices"])
        row["fraction_of_peak"] = row["achieved_flops_per_s"] / row["peak_flops_per_s"]


def check_agreement(rows: list[dict]) -> None:
    for row in rows:
        for other, diff in row.get("max_abs_diff_vs", {}).items():
            if not diff <= TOLERANCE[row["dtype"]]:
                sys.exit(
                    f"error: {row['config']} {row['dtype']} on {row['devices']} device(s), batch "
                    f"{row['batch_per_device']}/device: {row['parallelism']} and {other} images differ by "
                    f"{diff:.2e}, above {TOLERANCE[row['dtype']]:.0e}: the two programs disagree"
                )


HEADER = (
    "config",
    "dtype",
    "program",
    "devices",
    "batch/device",
    "compile s",
    "call s",
    "images/s",
    "images/s/device",
    "scaling",
    "XLA memory/device",
    "allocator peak",
    "GFLOP/edit",
    "GFLOP/s (of peak)",
    "max |diff|",
)


def table(rows: list[dict]) -> str:
    def cells(r: dict) -> list[str]:
        timed = "call" in r
        base = r.get("scaling_base_devices", 1)
        diffs = r.get("max_abs_diff_vs", {})
        peak = r.get("allocator_peak_bytes")
        return [
            r["config"],
            r["dtype"],
            r["parallelism"],
            str(r["devices"]),
            str(r["batch_per_device"]),
            f"{r['lower_s'] + r['compile_s']:.1f}",
            f"{r['call']['median_s']:.2f}" if timed else "—",
            f"{r['images_per_s']:.3f}" if timed else "—",
            f"{r['images_per_s_per_device']:.3f}" if timed else "—",
            (f"{100 * r['scaling_efficiency']:.0f}%" + (f" vs {base}" if base != 1 else ""))
            if timed
            else "—",
            common.gib(r["xla_peak_bytes_per_device"]),
            common.gib(peak) if peak is not None else "—",
            f"{r['denoiser_flops_per_edit'] / 1e9:.1f}",
            f"{r['achieved_flops_per_s'] / 1e9:.1f} ({100 * r['fraction_of_peak']:.0f}%)" if timed else "—",
            ", ".join(f"{d:.1e} vs {o}" for o, d in diffs.items()) or "—",
        ]

    return common.markdown_table(HEADER, [cells(r) for r in rows])


# --------------------------------------------------------------------------------------------- the run


def build_setup(name: str, dtype: str, args) -> Setup:
    from magicface_jax.config import sd15_magicface_config, tiny_magicface_config
    from magicface_jax.diffusion import SD15_SCHEDULER_CONFIG, NoiseSchedule, make_sampler
    from magicface_jax.models.magicface import MagicFace
    from magicface_jax.nn.cpu_kernels import SAMPLING

    base = tiny_magicface_config() if name == "tiny" else sd15_magicface_config()
    config = dataclasses.replace(base, dtype=dtype)
    model = MagicFace(config, kernels=SAMPLING)
    weights = host_weights(config, abstract=name in args.compile_only)
    size = sampling.IMAGE_SIZE[name]
    inputs = sampling.make_inputs(max(args.devices) * max(args.batch_per_device), size)
    sampler = make_sampler("unipc", NoiseSchedule.from_diffusers(SD15_SCHEDULER_CONFIG), args.steps)
    flops = {
        b: denoiser_flops_per_edit(model, weights, b, size // 8, args.steps) for b in args.batch_per_device
    }
    return Setup(name, model, weights, inputs, sampler, flops)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.check_xla_flags()
    args.devices = device_counts(args.devices)
    import jax

    backend = jax.default_backend()
    shared_cores = backend == "cpu"
    info = common.machine()
    print(
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, load "
        f"{' '.join(f'{x:.2f}' for x in info['load_average'])}; JAX on {backend}: {len(jax.devices())} x "
        f"{jax.devices()[0].device_kind}; settings use the first {', '.join(map(str, args.devices))} of them"
    )
    if shared_cores:
        print(
            f"CPU devices are virtual and share the {info['cores']} cores: scaling here measures the "
            "programs' overhead only, not parallel speed-up; the peak FLOP/s is one device's matmul rate"
        )
    cache = jax.config.jax_compilation_cache_dir
    if cache:
        print(f"persistent compilation cache {cache}: compile times of programs found there are loads")
    dtypes = sampling.dtypes(args.dtype, backend)
    rates = {dtype: common.matmul_flops_per_second(args.matmul_size, dtype=dtype) for dtype in dtypes}
    print(
        "matmul "
        + ", ".join(
            f"{dtype} {args.matmul_size}²: {rate / 1e12:.3f} TFLOP/s" for dtype, rate in rates.items()
        )
        + " on one device"
    )
    rows: list[dict] = []
    for name in args.config:
        size = sampling.IMAGE_SIZE[name]
        print(
            f"\n== {name}: {size}² images, {args.steps} UniPC steps, guidance {args.guidance}"
            + (" (compiled only: no weights, no runs)" if name in args.compile_only else "")
        )
        for dtype in dtypes:
            setup = build_setup(name, dtype, args)
            for d in args.devices:
                images: dict = {}
                for parallelism in args.parallelism:
                    rows += run_setting(setup, dtype, jax.devices()[:d], parallelism, args, images)
    add_rates(rows, rates, shared_cores)
    print("\n" + table(rows))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in common.load_average())}")
    check_agreement(rows)
    if args.json:
        report = {
            "command": " ".join(["python", *sys.argv]),
            "machine": info,
            "backend": backend,
            "devices_share_cores": shared_cores,
            "matmul_size": args.matmul_size,
            "matmul_flops_per_s": rates,
            "steps": args.steps,
            "guidance": args.guidance,
            "rows": rows,
            "load_average_after": common.load_average(),
        }
        common.write_json(args.json, report, overwrite=args.overwrite)


if __name__ == "__main__":
    sys.exit(run(main))
