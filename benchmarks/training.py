"""Benchmark of the train step: what it costs on this CPU, and what full SD1.5 MagicFace needs on a pod.

    python benchmarks/training.py --part cpu [--configs tiny,synthetic_128] [--steps 5] [--json OUT]
    python benchmarks/training.py --part sd15 [--remat none,block,full] [--batches 1,2] [--json OUT]

`cpu`: configs/tiny.yaml (nano model, 64²) and configs/synthetic_128.yaml (model.preset=tiny, 128²) on one
CPU device, each on a small synthetic_faces set built here: compile time, step time, examples/s, XLA's
memory analysis of the compiled step and the process's peak RSS, MFU against this machine's measured
float32 matmul rate, and next to it the examples/s of training/data.py's iterator (goal: ≥ 3× what the
step consumes).

`sd15`: configs/sd15_magicface.yaml's step (both UNets trained, VAE frozen and run inside the step, bf16
compute) compiled ahead of time, never run, for an FSDP mesh of 8 CPU devices (8×H100) and of 4 (a v5p-8
is 4 chips), from abstract inputs only: no weight is ever materialized. FLOPs per example and per-device
memory come from XLA's cost and memory analyses, per remat policy and per-device batch; the largest batch
that fits 95 GiB (v5p) and 80 GiB (H100) is extrapolated linearly from the compiled batch sizes; the
expected step time follows from the FLOPs at a stated MFU of the published bf16 peaks. `--width W` scales
the UNets' widths (320 is SD1.5) for a measured scaling where a full compile does not fit the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common
from magicface_jax.cli import ArgumentParser, run
from magicface_jax.errors import MagicFaceError

REPO = Path(__file__).resolve().parent.parent
PARTS = ("cpu", "sd15", "all")
CPU_CONFIGS = {
    "tiny": ("configs/tiny.yaml", 64, ()),
    "synthetic_128": ("configs/synthetic_128.yaml", 128, ("model.preset=tiny",)),
}
REMATS = ("none", "block", "full")
SD15_CONFIG = "configs/sd15_magicface.yaml"
SD15_DEVICES = 8
# Per-device memory and published dense bf16 peaks (observe.PEAK_TFLOPS) of the two targets.
TARGETS = {
    "v5p-8": {"devices": 4, "memory_gib": 95.0, "device_kind": "TPU v5p"},
    "8xH100": {"devices": 8, "memory_gib": 80.0, "device_kind": "NVIDIA H100"},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="cpu", help="cpu, sd15 or all (default cpu)")
    parser.add_argument("--configs", default="tiny,synthetic_128", help="cpu part: tiny and/or synthetic_128")
    parser.add_argument("--steps", type=int, default=5, help="cpu part: timed steps (default 5)")
    parser.add_argument("--pairs", type=int, default=64, help="cpu part: pairs of the built set (default 64)")
    parser.add_argument(
        "--pipeline-batches", type=int, default=20, help="cpu part: batches the input pipeline is timed on"
    )
    parser.add_argument("--remat", default="none,block,full", help="sd15 part: remat policies")
    parser.add_argument("--batches", default="1,2", help="sd15 part: per-device batch sizes to compile")
    parser.add_argument("--width", type=int, default=320, help="sd15 part: first UNet width (SD1.5: 320)")
    parser.add_argument(
        "--compile-widths",
        default="",
        help="sd15 part: widths compiled for XLA's memory analysis, e.g. 64,128 or 320 (default: none; "
        "the memory then comes from the backward's residuals)",
    )
    parser.add_argument(
        "--lower-step",
        action="store_true",
        help="sd15 part: FLOPs from the whole step lowered (slow) instead of its forward programs",
    )
    parser.add_argument(
        "--reuse",
        default="",
        help="sd15 part: earlier --json reports (comma-separated) whose lowerings and compiles are reused",
    )
    parser.add_argument("--mfu", type=float, default=0.4, help="sd15 part: the MFU step times assume")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.part not in PARTS:
        raise MagicFaceError(f"--part {args.part!r}: use cpu, sd15 or all")
    args.configs = common.names(args.configs, "--configs", tuple(CPU_CONFIGS))
    args.remat = common.names(args.remat, "--remat", REMATS)
    args.batches = tuple(sorted(set(common.whole_numbers(args.batches, "--batches"))))
    for flag, value in (("--steps", args.steps), ("--pipeline-batches", args.pipeline_batches)):
        if value < 1:
            raise MagicFaceError(f"{flag} {value}: must be at least 1")
    if args.pairs < 16:
        raise MagicFaceError(f"--pairs {args.pairs}: must be at least 16 (two batches of 8)")
    args.compile_widths = (
        common.whole_numbers(args.compile_widths, "--compile-widths") if args.compile_widths else ()
    )
    for flag, width in [("--width", args.width)] + [("--compile-widths", w) for w in args.compile_widths]:
        if width < 32 or width % 32:
            raise MagicFaceError(f"{flag} {width}: must be a multiple of 32 (the GroupNorm groups)")
    if not 0 < args.mfu <= 1:
        raise MagicFaceError(f"--mfu {args.mfu}: expected a fraction in (0, 1]")
    args.reuse = tuple(_reused(path) for path in args.reuse.split(",") if path)
    common.check_json_path(args.json)
    return args


def _reused(path: str) -> dict[str, Any]:
    """The sd15 results of an earlier report: its lowerings and compiles."""
    try:
        report = json.loads(Path(path).read_text())
        results = report["sd15"]
        return {
            "forwards": [results["forwards"]],
            "flops": [f for f in results["flops"].values() if "lower_s" in f],
            "residuals": list(results["residuals"].values()),
            "compiles": list(results["compiles"]),
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise MagicFaceError(
            f"--reuse {path}: not a report of benchmarks/training.py --part sd15 --json "
            f"({type(err).__name__})"
        ) from None


# ------------------------------------------------------------------------------------------- cpu part


def build_pairs(resolution: int, pairs: int, data_dir: str) -> tuple[Path, float]:
    from magicface_jax.data.synthetic_faces import SyntheticFaces, SyntheticFacesConfig, SyntheticFacesSpec

    spec = SyntheticFacesSpec(resolution=resolution, train_pairs=pairs, test_pairs=0, seed=0)
    builder = SyntheticFaces(config=SyntheticFacesConfig(spec), data_dir=data_dir)
    begin = time.perf_counter()
    builder.download_and_prepare()
    return Path(builder.data_dir), time.perf_counter() - begin


def pipeline_rate(run_config, source, mesh, batches: int) -> float:
    """Examples/s of the loop's input (training/data.py's iterator, then its global batches)."""
    import itertools

    from magicface_jax.training.data import batches as global_batches
    from magicface_jax.training.data import training_iterator

    iterator = training_iterator(run_config, source, mesh)
    stream = global_batches(iterator, mesh)
    next(stream)  # start-up (threads, first reads) is not throughput
    begin = time.perf_counter()
    for batch in itertools.islice(stream, batches):
        batch["au_variation"].block_until_ready()
    return batches * run_config.train.batch_size / (time.perf_counter() - begin)


def run_cpu_config(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import jax

    from magicface_jax.parallel.mesh import training_mesh
    from magicface_jax.training.config import load_config
    from magicface_jax.training.data import batches as global_batches
    from magicface_jax.training.data import open_training_source, training_iterator
    from magicface_jax.training.init import load_start
    from magicface_jax.training.observe import measured_matmul_tflops, step_flops
    from magicface_jax.training.trainer import make_trainer

    config_path, resolution, overrides = CPU_CONFIGS[name]
    print(f"\n== {name}: {config_path} {' '.join(overrides)}, {resolution}², one CPU device", flush=True)
    load_before = common.load_average()
    dataset, build_s = build_pairs(resolution, args.pairs, str(workdir / f"data_{name}"))
    run_config = load_config(
        REPO / config_path,
        [*overrides, f"dataset={dataset}", "data.data_dir=", f"output_dir={workdir / name}"],
    )
    mesh = training_mesh(1, 1, 1, jax.devices()[:1])
    source = open_training_source(run_config, run_config.data.split)
    common.reset_peak_rss()
    start = load_start(run_config, mesh)
    trainer = make_trainer(run_config, mesh, start)
    batch = next(global_batches(training_iterator(run_config, source, mesh), mesh))
    compiled, compile_s = trainer.compile_step(batch)
    state, frozen = trainer.initial_state(), trainer.frozen

    def step() -> None:
        nonlocal state
        state, metrics = compiled(state, frozen, batch, trainer.prompt_embeds)
        metrics["loss"].block_until_ready()

    timing = common.time_runs(step, args.steps)
    peak_rss = common.peak_rss_bytes()
    # The rate the training loop's MFU uses on a CPU: a matmul in the run's compute dtype.
    rate = measured_matmul_tflops(run_config.model.dtype) * 1e12
    pipeline = pipeline_rate(run_config, source, mesh, args.pipeline_batches)
    flops = step_flops(compiled)
    step_s = timing.median
    consumed = run_config.train.batch_size / step_s
    result = {
        "config": name,
        "command_config": [config_path, *overrides],
        "resolution": resolution,
        "batch_size": run_config.train.batch_size,
        "dtype": run_config.model.dtype,
        "parameters": {n: sum(a.size for a in jax.tree.leaves(p)) for n, p in start.networks.items()},
        "build_pairs": args.pairs,
        "build_s": build_s,
        "compile_s": compile_s,
        "step": timing.to_json(),
        "examples_per_s": consumed,
        "flops_per_step": flops,
        "matmul_flops_per_s": rate,
        "matmul_dtype": run_config.model.dtype,
        "mfu": flops / step_s / rate,
        "xla_memory": common.xla_memory(compiled),
        "peak_rss_bytes": peak_rss,
        "pipeline_examples_per_s": pipeline,
        "pipeline_over_step": pipeline / consumed,
        "pipeline_goal_met": pipeline >= 3 * consumed,
        "load_average_before": load_before,
        "load_average_after": common.load_average(),
    }
    print(
        f"compile {compile_s:.1f} s; step median {step_s * 1e3:.0f} ms -> {consumed:.1f} examples/s; "
        f"{flops / 1e9:.2f} GFLOP/step = {100 * result['mfu']:.1f}% of the "
        f"{result['matmul_dtype']} matmul rate "
        f"({rate / 1e9:.1f} GFLOP/s); input pipeline {pipeline:.0f} examples/s = "
        f"{result['pipeline_over_step']:.1f}x the step "
        f"(goal 3x: {'met' if result['pipeline_goal_met'] else 'NOT met'})",
        flush=True,
    )
    return result


def cpu_table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| config | batch | compile s | step ms (median) | examples/s | GFLOP/step "
        "| MFU (vs a matmul in the run dtype) | XLA args + temp | peak RSS | input examples/s "
        "| input / step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        memory = r["xla_memory"]
        rows.append(
            f"| {r['config']} {r['resolution']}² | {r['batch_size']} | {r['compile_s']:.1f} "
            f"| {r['step']['median_s'] * 1e3:.0f} | {r['examples_per_s']:.1f} "
            f"| {r['flops_per_step'] / 1e9:.2f} "
            f"| {100 * r['mfu']:.1f}% | {common.gib(memory['argument_bytes'] + memory['temp_bytes'])} "
            f"| {common.gib(r['peak_rss_bytes'])} | {r['pipeline_examples_per_s']:.0f} "
            f"| {r['pipeline_over_step']:.1f}x {'✓' if r['pipeline_goal_met'] else '✗'} |"
        )
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------ sd15 part


def scaled_config(width: int):
    """SD1.5 MagicFace with every UNet width scaled by width/320 (the AU linear stays 12 -> 1280)."""
    from magicface_jax.config import sd15_magicface_config

    config = sd15_magicface_config()
    if width == 320:
        return config

    def scale(unet):
        return unet.replace(block_out_channels=tuple(c * width // 320 for c in unet.block_out_channels))

    return dataclasses.replace(
        config, identity_encoder=scale(config.identity_encoder), denoiser=scale(config.denoiser)
    )


def abstract_start(config, mesh, rules):
    """A Start whose networks are ShapeDtypeStructs in their shardings: nothing is allocated."""
    import jax
    import numpy as np

    from magicface_jax.diffusion import SD15_SCHEDULER_CONFIG
    from magicface_jax.models.magicface import COMPONENTS, abstract_params, unbox
    from magicface_jax.training.init import Start, network_shardings

    shardings = network_shardings(config, mesh, rules)
    networks = {
        name: jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            unbox(abstract_params(config, name)),
            shardings[name],
        )
        for name in COMPONENTS
    }
    prompt = np.zeros((1, 77, config.denoiser.cross_attention_dim), np.float32)
    return Start(config, networks, dict(SD15_SCHEDULER_CONFIG), prompt, {"abstract": True})


def abstract_batch(mesh, global_batch: int, size: int):
    import jax
    import jax.numpy as jnp

    from magicface_jax.parallel.mesh import training_batch_sharding

    sharding = training_batch_sharding(mesh)
    image = jax.ShapeDtypeStruct((global_batch, size, size, 3), jnp.float32, sharding=sharding)
    au = jax.ShapeDtypeStruct((global_batch, 12), jnp.float32, sharding=sharding)
    return {"identity": image, "target": image, "background": image, "au_variation": au}


@functools.cache
def sd15_trainer(width: int, remat: str, devices: int):
    import jax

    from magicface_jax.parallel.mesh import training_mesh
    from magicface_jax.training.config import load_config
    from magicface_jax.training.trainer import make_trainer

    run_config = load_config(
        REPO / SD15_CONFIG, [f"model.remat={remat}", f"mesh.fsdp={devices}", "mesh.data=1"]
    )
    mesh = training_mesh(1, devices, 1, jax.devices()[:devices])
    start = abstract_start(scaled_config(width), mesh, run_config.mesh.rules)
    return run_config, mesh, make_trainer(run_config, mesh, start)


def lowered_flops(lowered) -> float:
    """FLOPs of the whole (unpartitioned) program, from XLA's cost analysis of the lowering: no compile."""
    cost = lowered.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return float(cost["flops"])


def lower_sd15(width: int, remat: str, devices: int, per_device_batch: int):
    """The step lowered for abstract inputs, and the seconds that took."""
    run_config, mesh, trainer = sd15_trainer(width, remat, devices)
    batch = abstract_batch(mesh, per_device_batch * devices, trainer.start.config.vae.sample_size)
    begin = time.perf_counter()
    lowered = trainer.jitted_step().lower(
        trainer.abstract_state(), trainer.frozen, batch, trainer.prompt_embeds
    )
    return run_config, lowered, time.perf_counter() - begin


def flops_sd15(width: int, remat: str, per_device_batch: int) -> dict[str, Any]:
    """FLOPs per example of the step from its lowering alone (cheap enough at SD1.5's full width)."""
    global_batch = per_device_batch * SD15_DEVICES
    _, lowered, lower_s = lower_sd15(width, remat, SD15_DEVICES, per_device_batch)
    flops = lowered_flops(lowered)
    print(
        f"width {width}, remat {remat}: lowered in {lower_s:.0f} s; {flops / global_batch / 1e12:.3f} "
        f"TFLOP per example (global batch {global_batch})",
        flush=True,
    )
    return {
        "width": width,
        "remat": remat,
        "global_batch": global_batch,
        "lower_s": lower_s,
        "flops_per_example": flops / global_batch,
    }


def forward_flops_sd15(width: int) -> dict[str, Any]:
    """FLOPs per example of the step's three forward programs, from XLA's cost analysis of each one
    lowered alone at full size (no compile): the VAE encoder at 512² (run three times, frozen), the
    identity encoder at 64² latents, and the denoiser with its identity keys and values."""
    import jax
    import jax.numpy as jnp

    _, _, trainer = sd15_trainer(width, "none", SD15_DEVICES)
    model, config = trainer.model, trainer.start.config
    networks = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), trainer.start.networks)
    size, factor = config.vae.sample_size, config.vae.downsample_factor
    latents = jax.ShapeDtypeStruct(
        (1, size // factor, size // factor, config.vae.latent_channels), jnp.float32
    )
    prompt = jax.ShapeDtypeStruct(trainer.prompt_embeds.shape, jnp.float32)
    image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)

    def cost(fn, *args) -> float:
        return lowered_flops(jax.jit(fn).lower(*args))

    begin = time.perf_counter()
    features = jax.eval_shape(model.identity_features, networks["identity_encoder"], latents, prompt)
    kv = jax.eval_shape(model.identity_kv, networks["denoiser"], features)
    au = jax.ShapeDtypeStruct((1, 12), jnp.float32)
    timestep = jax.ShapeDtypeStruct((1,), jnp.int32)
    forwards = {
        "vae_encode": cost(model.vae_encode, networks["vae"], image),
        "identity_features": cost(model.identity_features, networks["identity_encoder"], latents, prompt),
        "identity_kv": cost(model.identity_kv, networks["denoiser"], features),
        "predict_noise": cost(
            model.predict_noise, networks["denoiser"], latents, latents, au, timestep, kv, prompt
        ),
    }
    trained = forwards["identity_features"] + forwards["identity_kv"] + forwards["predict_noise"]
    result = {
        "width": width,
        "lower_s": time.perf_counter() - begin,
        "forward_flops": forwards,
        # The backward of a trained forward costs about twice the forward; remat recomputes the forward.
        "flops_per_example": {
            remat: 3 * forwards["vae_encode"] + (3 + (remat != "none")) * trained for remat in REMATS
        },
    }
    print(
        "forward TFLOP per example: "
        + ", ".join(f"{name} {value / 1e12:.3f}" for name, value in forwards.items())
        + f" (lowered in {result['lower_s']:.0f} s)",
        flush=True,
    )
    return result


def residuals_sd15(width: int, remat: str, batches=(1, 2)) -> dict[str, Any]:
    """Bytes the trained networks' forwards keep for their backward, traced with `jax.eval_shape` at two
    batch sizes (no compile, no weights): the residuals of `jax.vjp` of the identity encoder (with respect
    to its parameters) and of the denoiser with its identity keys and values (with respect to its
    parameters and the identity features), the two halves of the step's backward; the frozen VAE keeps
    none. Their difference over the batch is what each example adds; the rest (weights in the compute
    dtype) does not grow with it. XLA's transient buffers come on top."""
    import jax
    import jax.numpy as jnp

    _, _, trainer = sd15_trainer(width, remat, SD15_DEVICES)
    model, config = trainer.model, trainer.start.config
    networks = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), trainer.start.networks)
    size, factor = config.vae.sample_size, config.vae.downsample_factor
    prompt = jax.ShapeDtypeStruct(trainer.prompt_embeds.shape, jnp.float32)

    def encoder_pullback(params, latents, prompt):
        return jax.vjp(lambda p: model.identity_features(p, latents, prompt), params)[1]

    def denoiser_pullback(params, features, noisy, au, timesteps, prompt):
        def forward(params, features):
            kv = model.identity_kv(params, features)
            return model.predict_noise(params, noisy, noisy, au, timesteps, kv, prompt)

        return jax.vjp(forward, params, features)[1]

    def nbytes(tree) -> int:
        return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))

    begin = time.perf_counter()
    totals = {}
    for batch_size in batches:
        latents = jax.ShapeDtypeStruct(
            (batch_size, size // factor, size // factor, config.vae.latent_channels), jnp.float32
        )
        encoder = jax.eval_shape(encoder_pullback, networks["identity_encoder"], latents, prompt)
        features = jax.eval_shape(model.identity_features, networks["identity_encoder"], latents, prompt)
        au = jax.ShapeDtypeStruct((batch_size, 12), jnp.float32)
        timesteps = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
        denoiser = jax.eval_shape(
            denoiser_pullback, networks["denoiser"], features, latents, au, timesteps, prompt
        )
        totals[batch_size] = nbytes(encoder) + nbytes(denoiser)
        print(f"  residuals at batch {batch_size}: {common.gib(totals[batch_size])}", flush=True)
    (b1, r1), (b2, r2) = sorted(totals.items())
    per_example = (r2 - r1) / (b2 - b1)
    result = {
        "width": width,
        "remat": remat,
        "trace_s": time.perf_counter() - begin,
        "residual_bytes": {str(b): r for b, r in totals.items()},
        "per_example_bytes": per_example,
        "constant_bytes": r1 - per_example * b1,
    }
    print(
        f"width {width}, remat {remat}: backward residuals {common.gib(per_example)} per example + "
        f"{common.gib(result['constant_bytes'])} (traced in {result['trace_s']:.0f} s)",
        flush=True,
    )
    return result


def compile_sd15(width: int, remat: str, devices: int, per_device_batch: int) -> dict[str, Any]:
    common.reset_peak_rss()
    rss_before = common.rss_bytes()
    run_config, lowered, lower_s = lower_sd15(width, remat, devices, per_device_batch)
    begin = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - begin
    memory = common.xla_memory(compiled)
    flops = common.xla_flops(compiled)
    peak = memory["argument_bytes"] + memory["output_bytes"] - memory["alias_bytes"] + memory["temp_bytes"]
    result = {
        "width": width,
        "remat": remat,
        "devices": devices,
        "per_device_batch": per_device_batch,
        "dtype": run_config.model.dtype,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "compile_peak_rss_bytes": common.peak_rss_bytes(),
        "rss_before_compile_bytes": rss_before,
        "flops_per_device": flops,
        "flops_per_example": flops / per_device_batch,
        "lowered_flops_per_example": lowered_flops(lowered) / (per_device_batch * devices),
        "xla_memory": memory,
        "per_device_peak_bytes": peak,
    }
    print(
        f"width {width}, remat {remat}, {devices} devices, {per_device_batch}/device: lowered in "
        f"{lower_s:.0f} s, compiled in {compile_s:.0f} s "
        f"(peak RSS {common.gib(result['compile_peak_rss_bytes'])}); "
        f"{flops / per_device_batch / 1e12:.3f} TFLOP/example; per device: arguments "
        f"{common.gib(memory['argument_bytes'])}, temporaries {common.gib(memory['temp_bytes'])}, "
        f"peak {common.gib(peak)}",
        flush=True,
    )
    return result


def state_figures(width: int, devices: int) -> dict[str, Any]:
    """Exact bytes of the train state, gradients and frozen networks per device under FSDP(devices)."""
    _, _, trainer = sd15_trainer(width, "none", devices)
    per_device, full = common.state_bytes(trainer.abstract_state())
    params_per_device, _ = common.state_bytes(trainer.abstract_state().params)
    frozen_per_device, _ = common.state_bytes(trainer.frozen)
    return {
        "devices": devices,
        "state_per_device_bytes": per_device,
        "state_replicated_bytes": full,
        "fraction": per_device / full,
        "goal_met": per_device / full <= 1.1 / devices,
        "gradients_per_device_bytes": params_per_device,
        "frozen_per_device_bytes": frozen_per_device,
        "fixed_per_device_bytes": per_device + params_per_device + frozen_per_device,
    }


def activation_model(points: list[dict[str, Any]]) -> dict[str, float] | None:
    """Fits what a compiled step needs beyond its state, gradients and frozen networks,
    rest(w, b) = c + b·(α + β·w) (activations grow with the batch and linearly with the width; the
    attention scores, with a fixed head count, do not grow with the width), from compiles at two batch
    sizes of the smallest width and, for β, one more width. None without two batch sizes."""
    if not points:
        return None
    smallest = min(p["width"] for p in points)
    at_smallest = sorted((p for p in points if p["width"] == smallest), key=lambda p: p["per_device_batch"])
    if len(at_smallest) < 2:
        return None
    (b1, r1), (b2, r2) = ((p["per_device_batch"], p["rest_bytes"]) for p in at_smallest[-2:])
    per_example = (r2 - r1) / (b2 - b1)
    constant = r1 - per_example * b1
    wider = [p for p in points if p["width"] != smallest]
    slope = 0.0
    if wider:
        p = max(wider, key=lambda p: p["width"])
        slope = ((p["rest_bytes"] - constant) / p["per_device_batch"] - per_example) / (p["width"] - smallest)
    return {
        "constant_bytes": constant,
        "per_example_bytes_at_width": per_example,
        "width": smallest,
        "per_example_bytes_per_width": slope,
        "width_fitted": bool(wider),
    }


def per_example_bytes(model: dict[str, float], width: int) -> float:
    return model["per_example_bytes_at_width"] + model["per_example_bytes_per_width"] * (
        width - model["width"]
    )


def largest_batch(fixed_bytes: float, model: dict[str, float], width: int, memory_gib: float) -> int:
    """The largest per-device batch whose predicted peak fits `memory_gib` (0 if none does)."""
    room = memory_gib * 2**30 - fixed_bytes - model["constant_bytes"]
    return max(math.floor(room / per_example_bytes(model, width)), 0)


def compile_grid(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(width, per-device batch) pairs to compile: every batch at the smallest width, the smallest batch at
    the other widths."""
    widths = sorted(args.compile_widths)
    return [(widths[0], b) for b in args.batches] + [(w, args.batches[0]) for w in widths[1:]]


def run_sd15(args: argparse.Namespace) -> dict[str, Any]:
    from magicface_jax.training.observe import PEAK_TFLOPS

    common.ensure_devices(SD15_DEVICES, "the sd15 part")
    print(
        f"\n== SD1.5 MagicFace at 512², {SD15_CONFIG} (bf16 compute, VAE in the step): FSDP meshes of CPU "
        f"devices, never run; width {args.width}; memory "
        + (
            f"compiled at widths {','.join(map(str, args.compile_widths))}"
            if args.compile_widths
            else "from the backward's residuals"
        ),
        flush=True,
    )
    devices = sorted({t["devices"] for t in TARGETS.values()})
    state = {n: state_figures(args.width, n) for n in devices}
    for n, fig in state.items():
        print(
            f"parameters + AdamW + EMA: {common.gib(fig['state_replicated_bytes'])} replicated, "
            f"{common.gib(fig['state_per_device_bytes'])} per device under FSDP({n}) = {fig['fraction']:.4f} "
            f"(goal ≤ 1.1/{n} = {1.1 / n:.4f}: {'met' if fig['goal_met'] else 'NOT met'})",
            flush=True,
        )
    lowered = [f for report in args.reuse for f in report["flops"]]
    traced = [r for report in args.reuse for r in report["residuals"]]
    compiled = [c for report in args.reuse for c in report["compiles"]]

    def find(points, **key):
        return next((p for p in points if all(p[k] == v for k, v in key.items())), None)

    residuals = {
        remat: find(traced, width=args.width, remat=remat) or residuals_sd15(args.width, remat)
        for remat in args.remat
    }
    forwards = next(
        (f for report in args.reuse for f in report["forwards"] if f["width"] == args.width), None
    )
    forwards = forwards or forward_flops_sd15(args.width)
    flops = {
        remat: (
            find(lowered, width=args.width, remat=remat) or flops_sd15(args.width, remat, args.batches[0])
        )
        if args.lower_step
        else {"width": args.width, "remat": remat, "flops_per_example": forwards["flops_per_example"][remat]}
        for remat in args.remat
    }
    compiles = []
    for remat in args.remat:
        for width, batch in compile_grid(args) if args.compile_widths else ():
            key = {"width": width, "remat": remat, "devices": SD15_DEVICES, "per_device_batch": batch}
            point = find(compiled, **key) or compile_sd15(width, remat, SD15_DEVICES, batch)
            point["rest_bytes"] = (
                point["per_device_peak_bytes"] - state_figures(width, SD15_DEVICES)["fixed_per_device_bytes"]
            )
            compiles.append(point)
    targets = {}
    for target, spec in TARGETS.items():
        peak = PEAK_TFLOPS[spec["device_kind"]] * 1e12
        fixed = state[spec["devices"]]["fixed_per_device_bytes"]
        rows = {}
        for remat in args.remat:
            model = activation_model([c for c in compiles if c["remat"] == remat])
            basis = "compiled" if model else "residuals only"
            if model is None:  # what the backward keeps, at the full width: no compile needed
                r = residuals[remat]
                model = {
                    "constant_bytes": r["constant_bytes"],
                    "per_example_bytes_at_width": r["per_example_bytes"],
                    "width": args.width,
                    "per_example_bytes_per_width": 0.0,
                }
            per_example_flops = flops[remat]["flops_per_example"]
            batch = largest_batch(fixed, model, args.width, spec["memory_gib"])
            rows[remat] = {
                "memory_basis": basis,
                "activation_model": model,
                "largest_batch": batch,
                "flops_per_example": per_example_flops,
                "step_s_at_largest_batch": per_example_flops * batch / (args.mfu * peak) if batch else None,
                "examples_per_s": spec["devices"] * args.mfu * peak / per_example_flops,
            }
        targets[target] = {**spec, "peak_tflops": peak / 1e12, "mfu": args.mfu, "remat": rows}
    return {
        "width": args.width,
        "config": SD15_CONFIG,
        "state": state,
        "flops_basis": "the step lowered" if args.lower_step else "forwards lowered, backward = 2x forward",
        "forwards": forwards,
        "flops": flops,
        "residuals": residuals,
        "compiles": compiles,
        "targets": targets,
    }


def sd15_tables(report: dict[str, Any]) -> str:
    rows = [
        "| FSDP devices | replicated state | per device | fraction | goal ≤ 1.1/N | gradients per device |",
        "|---|---|---|---|---|---|",
    ]
    for n, s in report["state"].items():
        rows.append(
            f"| {n} | {common.gib(s['state_replicated_bytes'])} | {common.gib(s['state_per_device_bytes'])} "
            f"| {s['fraction']:.4f} | {1.1 / int(n):.4f} {'✓' if s['goal_met'] else '✗'} "
            f"| {common.gib(s['gradients_per_device_bytes'])} |"
        )
    forwards = report["forwards"]["forward_flops"]
    rows += ["", "| forward program (one example) | TFLOP |", "|---|---|"]
    rows += [f"| {name} | {value / 1e12:.3f} |" for name, value in forwards.items()]
    rows += ["", f"| remat | TFLOP/example of the step ({report['flops_basis']}) |", "|---|---|"]
    for remat, f in report["flops"].items():
        rows.append(f"| {remat} | {f['flops_per_example'] / 1e12:.2f} |")
    rows += [
        "",
        f"| remat | backward residuals per example (width {report['width']}) | not growing with the batch "
        "| trace s |",
        "|---|---|---|---|",
    ]
    for remat, r in report["residuals"].items():
        rows.append(
            f"| {remat} | {common.gib(r['per_example_bytes'])} | {common.gib(r['constant_bytes'])} "
            f"| {r['trace_s']:.0f} |"
        )
    rows += (
        []
        if not report["compiles"]
        else [
            "",
            "| width | remat | batch/device | lower s | compile s | compile peak RSS | XLA arguments "
            "| XLA temporaries | per-device peak | beyond state + gradients |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    )
    for c in report["compiles"]:
        memory = c["xla_memory"]
        rows.append(
            f"| {c['width']} | {c['remat']} | {c['per_device_batch']} | {c['lower_s']:.0f} "
            f"| {c['compile_s']:.0f} "
            f"| {common.gib(c['compile_peak_rss_bytes'])} | {common.gib(memory['argument_bytes'])} "
            f"| {common.gib(memory['temp_bytes'])} | {common.gib(c['per_device_peak_bytes'])} "
            f"| {common.gib(c['rest_bytes'])} |"
        )
    rows += [
        "",
        f"| target | remat | memory per example at width {report['width']} (from) "
        "| largest batch/device | step s at that batch | examples/s |",
        "|---|---|---|---|---|---|",
    ]
    for target, t in report["targets"].items():
        for remat, r in t["remat"].items():
            model = r["activation_model"]
            per_example = f"{common.gib(per_example_bytes(model, report['width']))} ({r['memory_basis']})"
            step = f"{r['step_s_at_largest_batch']:.2f}" if r["step_s_at_largest_batch"] else "n/a"
            rows.append(
                f"| {target} ({t['devices']}× {t['memory_gib']:.0f} GiB, {t['peak_tflops']:.0f} TFLOP/s "
                f"bf16, MFU {100 * t['mfu']:.0f}%) | {remat} | {per_example} | {r['largest_batch']} | {step} "
                f"| {r['examples_per_s']:.1f} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    fast_compile = common.fast_compile_flags()
    if args.part in ("cpu", "all"):  # step times: the flags would make them meaningless
        common.check_xla_flags()
    elif fast_compile:  # the sd15 part never runs a step
        print(
            f"XLA_FLAGS has {' '.join(fast_compile)}: the compiles are faster and their code slower; the "
            "memory and FLOP figures do not depend on them, the compile times do"
        )
    if args.part in ("sd15", "all"):
        common.ensure_devices(SD15_DEVICES, "the sd15 part")
    info = common.machine()
    print(
        f"{info['cpu']}, {info['cores']} cores, load {' '.join(f'{x:.2f}' for x in info['load_average'])}; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    )
    report: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "machine": info}
    if args.part in ("cpu", "all"):
        with tempfile.TemporaryDirectory() as workdir:
            report["cpu"] = [run_cpu_config(name, args, Path(workdir)) for name in args.configs]
        print("\n" + cpu_table(report["cpu"]))
    if args.part in ("sd15", "all"):
        report["sd15"] = run_sd15(args)
        print("\n" + sd15_tables(report["sd15"]))
    if args.json:
        common.write_json(args.json, report)


if __name__ == "__main__":
    sys.exit(run(main))
