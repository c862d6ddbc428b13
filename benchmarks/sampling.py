"""Benchmark of whole edits: the JAX pipeline against the authors' sampling loop in PyTorch, on the same
random weights, the same inputs and the same machine, in the same run.

    python benchmarks/sampling.py [--config tiny|sd15|both] [--batch 1,2,4,8] [--steps N] [--guidance 1.5]
        [--repeats R] [--dtype auto|float32|bfloat16|both] [--skip-torch] [--compilation-cache DIR]
        [--json OUT]

JAX: `MagicFacePipeline`'s compiled program (VAE encodes, identity features and their keys/values once,
the AU-guided UniPC loop in one `lax.scan`, decode), compiled ahead of time; compile time is reported
apart, cold (empty persistent compilation cache) and warm (the same program loaded from it).
PyTorch: `authors_edit`, the authors' loop step for step (UniPC, guidance over [AU ; AU = 0], identity
features once per image on the duplicated batch, decode), on diffusers' classes, with
`torch.set_num_threads(<cores>)`.

Both pipelines run `--steps` steps (default 50 for tiny, 2 for sd15: a full-size step takes tens of
seconds on a small CPU) and are timed in alternation. A guided step (one denoiser call on the batch of
[cond ; uncond] pairs and the guidance combination; the sampler's update is elementwise and left out)
is also timed alone in each framework: it gives the per-step figures, the denoiser's achieved FLOP/s,
and the per-image time at 50 steps, extrapolated as (call at N steps + (50 − N) × step) / batch.
FLOPs per step: XLA's cost analysis of one guided denoiser call, compiled as the plain program
(`common.plain`), and the products alone counted from the jaxpr; the PyTorch step's FLOPs come
from `torch.utils.flop_counter`. Agreement: the largest difference of the final latents (smallest batch)
and of the decoded images (every batch).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common
from magicface_jax.cli import ArgumentParser, run
from magicface_jax.errors import MagicFaceError

CONFIGS = ("tiny", "sd15")
IMAGE_SIZE = {"tiny": 128, "sd15": 512}  # latents 16², 64²
DEFAULT_STEPS = {"tiny": 50, "sd15": 2}
DEFAULT_REPEATS = {"tiny": 5, "sd15": 1}
REFERENCE_STEPS = 50  # the authors' setting; per-image figures are extrapolated to it
DTYPES = ("float32", "bfloat16")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="both", help="tiny, sd15 or both (default both)")
    parser.add_argument(
        "--batch", default="1,2,4,8", help="edits per call, comma-separated (default 1,2,4,8)"
    )
    parser.add_argument("--steps", type=int, help="sampling steps per call (default 50 tiny, 2 sd15)")
    parser.add_argument("--guidance", type=float, default=1.5, help="AU guidance scale (default 1.5, > 1)")
    parser.add_argument("--repeats", type=int, help="timed calls per framework (default 5 tiny, 1 sd15)")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="JAX compute dtype: float32, bfloat16, both, or auto (float32; both on an accelerator)",
    )
    parser.add_argument("--skip-torch", action="store_true", help="time JAX only")
    parser.add_argument(
        "--compilation-cache", help="persistent compilation cache folder (default: a new empty one)"
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.config not in (*CONFIGS, "both"):
        raise MagicFaceError(f"--config {args.config!r}: use tiny, sd15 or both")
    args.batch = tuple(sorted(set(common.whole_numbers(args.batch, "--batch", "1,2,4,8"))))
    if args.steps is not None and args.steps < 1:
        raise MagicFaceError(f"--steps {args.steps}: must be at least 1")
    if not args.guidance > 1.0:
        raise MagicFaceError(f"--guidance {args.guidance}: must be above 1 (at 1 there is no guidance batch)")
    if args.repeats is not None and args.repeats < 1:
        raise MagicFaceError(f"--repeats {args.repeats}: must be at least 1")
    if args.dtype not in (*DTYPES, "both", "auto"):
        raise MagicFaceError(f"--dtype {args.dtype!r}: use float32, bfloat16, both or auto")
    common.check_json_path(args.json)
    cache = args.compilation_cache
    if cache and Path(cache).exists() and not Path(cache).is_dir():
        raise MagicFaceError(f"--compilation-cache {args.compilation_cache}: not a folder")
    return args


def dtypes(choice: str, backend: str) -> tuple[str, ...]:
    if choice == "auto":
        return ("float32",) if backend == "cpu" else DTYPES
    return DTYPES if choice == "both" else (choice,)


# --------------------------------------------------------------------------------------- models and inputs


@dataclasses.dataclass
class Models:
    name: str
    config: Any  # MagicFaceConfig
    torch_model: Any  # TorchMagicFace, or None with --skip-torch
    params: dict  # replicated jax arrays, our layout
    prompt: Any  # numpy (1, 77, width)
    device: str  # torch's device


def torch_state(model, name: str) -> dict:
    """A component's PyTorch state dict under the keys our name table uses."""
    if name == "identity_encoder":
        return model.identity_encoder.unet.state_dict()
    if name == "denoiser":
        return model.denoiser.magicface_state_dict()
    return model.vae.state_dict()


def build_models(name: str, with_torch: bool, seed: int = 0) -> Models:
    """The PyTorch MagicFace with random weights (diffusers' initialisation) and the same weights in our
    layout through the conversion table, replicated on the devices one component at a time (a full-size
    model is 7 GiB in each framework: no third copy is kept)."""
    import numpy as np
    import torch

    from magicface_jax.config import sd15_magicface_config, tiny_magicface_config
    from magicface_jax.convert.names import network_table
    from magicface_jax.convert.sources import ArraySource
    from magicface_jax.convert.tensors import to_flax_params
    from magicface_jax.models.magicface import COMPONENTS
    from magicface_jax.parallel.mesh import data_mesh, replicate
    from tests.torch_reference import TorchMagicFace

    config = tiny_magicface_config() if name == "tiny" else sd15_magicface_config()
    torch.manual_seed(seed)
    model = TorchMagicFace(config).eval()
    params = {}
    for component in COMPONENTS:
        rows = network_table(getattr(config, component))
        arrays = to_flax_params(ArraySource(torch_state(model, component)), rows, component)
        params[component] = replicate(arrays, data_mesh())
    width = config.denoiser.cross_attention_dim
    prompt = np.random.default_rng(seed).standard_normal((1, 77, width)).astype(np.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not with_torch:
        model = None
    elif device != "cpu":
        model = model.to(device)
    return Models(name, config, model, params, prompt, device)


@dataclasses.dataclass
class Inputs:
    sources: Any  # uint8 (B, H, W, 3)
    backgrounds: Any  # uint8 (B, H, W, 3)
    au: Any  # float32 (B, 12)
    noise: Any  # float32 (B, h, w, 4)

    def head(self, batch: int) -> Inputs:
        return Inputs(*(x[:batch] for x in dataclasses.astuple(self)))


def make_inputs(batch: int, image_size: int, seed: int = 1) -> Inputs:
    import numpy as np

    rng = np.random.default_rng(seed)

    def pixels():
        return rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)

    au = np.zeros((batch, 12), np.float32)
    au[:, 6] = 4.0  # AU12 +4 ("more smile")
    au[:, 0] = np.linspace(-2, 2, batch)  # AU1 varied, so that no two edits are the same
    latent = image_size // 8
    noise = rng.standard_normal((batch, latent, latent, 4)).astype(np.float32)
    return Inputs(pixels(), pixels(), au, noise)


# --------------------------------------------------------------------------------------------- JAX side


def guided_step(model) -> Callable:
    """One guided denoiser call of the pipeline's loop, as a function of explicit arguments."""
    from magicface_jax.pipeline import guided_denoiser

    def step(params, prompt, background, au, identity_kv, scale, latents, timestep):
        denoise = guided_denoiser(model, params, prompt, background, au, identity_kv, scale)
        return denoise(latents, timestep)

    return step


def identity_shapes(model, params, prompt, batch: int, latent: int) -> tuple[Any, list[tuple[int, ...]]]:
    """ShapeDtypeStructs of the identity tokens' keys/values at `batch` edits, and the identity features'
    shapes (from the parameters' shapes alone: nothing is computed)."""
    import jax
    import jax.numpy as jnp

    features = jax.eval_shape(
        model.identity_features,
        params["identity_encoder"],
        jax.ShapeDtypeStruct((batch, latent, latent, 4), jnp.float32),
        prompt,
    )
    return jax.eval_shape(model.identity_kv, params["denoiser"], features), [f.shape for f in features]


def step_arguments(pipe, batch: int, latent: int, guidance: float, seed: int = 2) -> tuple[tuple, list]:
    """Arguments of `guided_step` at `batch` edits (random identity keys/values of the right shapes), and
    the shapes of the identity features."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    kv_shapes, feature_shapes = identity_shapes(pipe.model, pipe.params, pipe.prompt_embeds, batch, latent)

    def normal(shape, dtype=jnp.float32):
        return jnp.asarray(rng.standard_normal(shape).astype(np.float32)).astype(dtype)

    identity_kv = jax.tree.map(lambda s: normal(s.shape, s.dtype), kv_shapes)
    au = np.zeros((batch, 12), np.float32)
    au[:, 6] = 4.0
    args = (
        pipe.params["denoiser"],
        pipe.prompt_embeds,
        normal((batch, latent, latent, 4)),
        jnp.asarray(au),
        identity_kv,
        jnp.float32(guidance),
        normal((batch, latent, latent, 4)),
        jnp.float32(500.0),
    )
    return args, feature_shapes


def matmul_flops(fn: Callable, *args) -> float:
    """FLOPs of the matrix products and convolutions in `fn`'s jaxpr, 2 per multiply-add: the same count as
    `torch.utils.flop_counter` makes of the PyTorch side (elementwise work left out)."""
    import jax

    return _jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_matmul_flops(jaxpr) -> float:
    import math

    total = 0.0
    for eqn in jaxpr.eqns:
        name, out = eqn.primitive.name, eqn.outvars[0].aval.shape if eqn.outvars else ()
        if name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(out) * math.prod(lhs[d] for d in contracting)
        elif name == "conv_general_dilated":
            kernel, spec = eqn.invars[1].aval.shape, eqn.params["dimension_numbers"].rhs_spec
            total += 2 * math.prod(out) * math.prod(kernel[d] for d in spec[1:])  # in/groups x window
        elif name == "cond":  # platform-dependent variants of one computation: count one
            total += max(_jaxpr_matmul_flops(branch.jaxpr) for branch in eqn.params["branches"])
        else:
            repeat = eqn.params.get("length", 1) if name == "scan" else 1
            total += repeat * sum(_jaxpr_matmul_flops(sub) for sub in _sub_jaxprs(eqn.params))
    return total


def _sub_jaxprs(params: dict) -> Iterator[Any]:
    from jax.extend.core import ClosedJaxpr, Jaxpr

    for value in params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if isinstance(item, ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, Jaxpr):
                yield item


def step_flops(model, args: tuple) -> float:
    """XLA's FLOPs of one guided denoiser call of `model` on `args` (arrays or their shapes)."""
    import jax

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
    return common.xla_flops(jax.jit(guided_step(common.plain(model))).lower(*abstract).compile())


def compile_program(program, args: tuple) -> tuple[Any, dict[str, float]]:
    """Lowers and compiles twice: cold (nothing in the persistent cache) and warm (JAX's in-memory caches
    cleared, the executable loaded from the persistent cache), as a second process would."""
    import jax

    times = {}
    executable = None
    for kind in ("cold", "warm"):
        if kind == "warm":
            jax.clear_caches()
        start = time.perf_counter()
        lowered = program.lower(*args)
        lowered_at = time.perf_counter()
        executable = lowered.compile()
        times[f"lower_s_{kind}"] = lowered_at - start
        times[f"compile_s_{kind}"] = time.perf_counter() - lowered_at
    return executable, times


# ----------------------------------------------------------------------------------------- PyTorch side


@dataclasses.dataclass
class TorchRun:
    """`authors_edit` on one batch; keeps the last images and the final latents it decoded."""

    models: Models
    inputs: Inputs
    steps: int
    guidance: float
    images: Any = None
    latents: Any = None

    def __call__(self) -> None:
        import torch

        from magicface_jax.diffusion import SD15_SCHEDULER_CONFIG
        from tests.torch_reference import authors_edit, authors_unipc

        model, device = self.models.torch_model, self.models.device

        def tensor(array, images=False):
            if images:
                array = array.astype("float32").transpose(0, 3, 1, 2) / 127.5 - 1
            elif array.ndim == 4:
                array = array.transpose(0, 3, 1, 2).copy()
            return torch.from_numpy(array).to(device)

        captured = {}
        hook = model.vae.post_quant_conv.register_forward_pre_hook(
            lambda module, args: captured.setdefault("z", args[0])
        )
        try:
            images = authors_edit(
                model,
                tensor(self.inputs.sources, images=True),
                tensor(self.inputs.backgrounds, images=True),
                tensor(self.inputs.au),
                tensor(self.models.prompt),
                authors_unipc(SD15_SCHEDULER_CONFIG),
                self.steps,
                self.guidance,
                tensor(self.inputs.noise),
            )
        finally:
            hook.remove()
        if device != "cpu":
            torch.cuda.synchronize()
        scaling = model.vae.config.scaling_factor
        self.images = images.cpu().numpy().transpose(0, 2, 3, 1)
        self.latents = (captured["z"] * scaling).cpu().numpy().transpose(0, 2, 3, 1)


def torch_step(
    models: Models, feature_shapes: list[tuple[int, ...]], batch: int, latent: int, guidance: float
):
    """One guided step of the authors' loop (denoiser on [cond ; uncond], guidance) and its arguments."""
    import numpy as np
    import torch

    rng = np.random.default_rng(2)
    device = models.device

    def normal(*shape):
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(device)

    rows = 2 * batch
    latents, background = normal(rows, 4, latent, latent), normal(rows, 4, latent, latent)
    au = torch.zeros(rows, 12, device=device)
    au[:batch, 6] = 4.0
    features = [normal(rows, *shape[1:]) for shape in feature_shapes]
    prompt = torch.from_numpy(models.prompt).to(device).expand(rows, -1, -1)
    denoiser = models.torch_model.denoiser

    def run() -> None:
        with torch.inference_mode():
            out = denoiser(latents, background, au, 500.0, features, prompt)
            cond, uncond = out.chunk(2)
            (uncond + guidance * (cond - uncond)).cpu()

    return run


def torch_step_flops(step: Callable[[], None]) -> float:
    """FLOPs of the products in one call of `step`, by `torch.utils.flop_counter`, which does not know the
    CPU's flash attention kernel: it is counted here as the other attention kernels are."""
    import torch
    from torch.utils import flop_counter

    def attention(query, key, value, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_flop_count(query, key, value)

    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention}
    with flop_counter.FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        step()
    return float(counter.get_total_flops())


# --------------------------------------------------------------------------------------------- the runs


def run_batch(
    models: Models, pipe, inputs: Inputs, steps: int, args: argparse.Namespace, repeats: int
) -> dict:
    """One (config, dtype, batch): compile, time both pipelines and both guided steps, compare."""
    import jax
    import numpy as np

    batch, latent = len(inputs.au), inputs.noise.shape[1]
    sampler = pipe.make_sampler("unipc", steps, args.guidance)
    request = pipe.prepare(inputs.sources, inputs.backgrounds, inputs.au, latents=inputs.noise)
    program, program_args = pipe.compiled(request, sampler, args.guidance, "np")
    executable, compile_times = compile_program(program, program_args)
    outputs: dict[str, Any] = {}

    def jax_call() -> None:
        outputs["jax"] = np.asarray(executable(*program_args))[:batch]

    calls_fns: dict[str, Callable[[], Any]] = {"jax": jax_call}
    torch_run = None
    if models.torch_model is not None and pipe.config.dtype == "float32":
        calls_fns["torch"] = torch_run = TorchRun(models, inputs, steps, args.guidance)
    calls = common.time_alternating(calls_fns, repeats)

    step_args, feature_shapes = step_arguments(pipe, batch, latent, args.guidance)
    step_exe = jax.jit(guided_step(pipe.model)).lower(*step_args).compile()
    step_fns = {"jax": lambda: step_exe(*step_args).block_until_ready()}
    work = {"jax": {"xla_flops": step_flops(pipe.model, step_args)}}
    work["jax"]["matmul_flops"] = matmul_flops(guided_step(pipe.model), *step_args)
    if torch_run is not None:
        step_fns["torch"] = torch_step(models, feature_shapes, batch, latent, args.guidance)
        work["torch"] = {"matmul_flops": torch_step_flops(step_fns["torch"])}
    step_times = common.time_alternating(step_fns, repeats)

    result: dict[str, Any] = {"batch": batch, **compile_times}
    for name in calls_fns:
        call_s, step_s = calls[name].median, step_times[name].median
        per_image_50 = (call_s + (REFERENCE_STEPS - steps) * step_s) / batch
        result[name] = {
            "call": calls[name].to_json(),
            "images_per_s": batch / call_s,
            "step": step_times[name].to_json(),
            **work[name],
            **{f"{key}_per_s": value / step_s for key, value in work[name].items()},
            "s_per_image_at_50_steps": per_image_50,
            "images_per_s_at_50_steps": 1 / per_image_50,
        }
    if torch_run is not None:
        ours, theirs = result["jax"], result["torch"]
        result["ratio_jax_over_torch"] = ours["images_per_s"] / theirs["images_per_s"]
        result["ratio_at_50_steps"] = ours["images_per_s_at_50_steps"] / theirs["images_per_s_at_50_steps"]
        result["ratio_step"] = theirs["step"]["median_s"] / ours["step"]["median_s"]
        result["images_max_abs_diff"] = float(np.abs(outputs["jax"] - torch_run.images).max())
        result["torch_final_latents"] = torch_run.latents
    return result


def final_latents(pipe, inputs: Inputs, steps: int, guidance: float):
    import numpy as np

    return np.asarray(
        pipe(
            inputs.sources,
            inputs.backgrounds,
            inputs.au,
            steps,
            guidance,
            latents=inputs.noise,
            output_type="latent",
        )
    )


def print_row(dtype: str, r: dict[str, Any], steps: int) -> None:
    j = r["jax"]
    lines = [
        f"batch {r['batch']}: compile {r['compile_s_cold']:.1f} s cold, {r['compile_s_warm']:.1f} s warm "
        f"(lowering {r['lower_s_cold']:.1f} s apart)",
        f"jax   call {j['call']['median_s']:.2f} s = {j['images_per_s']:.3f} img/s; step "
        f"{j['step']['median_s'] * 1e3:.0f} ms, {j['xla_flops'] / 1e9:.1f} GFLOP (XLA), "
        f"{j['matmul_flops'] / 1e9:.1f} GFLOP in products, {j['xla_flops_per_s'] / 1e9:.1f} GFLOP/s; "
        f"{j['s_per_image_at_50_steps']:.2f} s/image at 50 steps",
    ]
    if "torch" in r:
        t = r["torch"]
        lines += [
            f"torch call {t['call']['median_s']:.2f} s = {t['images_per_s']:.3f} img/s; step "
            f"{t['step']['median_s'] * 1e3:.0f} ms, {t['matmul_flops'] / 1e9:.1f} GFLOP in products, "
            f"{t['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s; {t['s_per_image_at_50_steps']:.2f} s/image "
            f"at 50 steps",
            f"ratio jax/torch images/s {r['ratio_jax_over_torch']:.2f} at {steps} steps, "
            f"{r['ratio_at_50_steps']:.2f} at 50 steps (step {r['ratio_step']:.2f}); images max |diff| "
            f"{r['images_max_abs_diff']:.1e}",
        ]
    print(f"  [{dtype}] " + "\n    ".join(lines), flush=True)


def run_config(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    import jax
    import numpy as np

    from magicface_jax.diffusion import SD15_SCHEDULER_CONFIG, NoiseSchedule
    from magicface_jax.pipeline import MagicFacePipeline

    steps = args.steps or DEFAULT_STEPS[name]
    repeats = args.repeats or DEFAULT_REPEATS[name]
    size = IMAGE_SIZE[name]
    print(f"\n== {name}: {size}² images, {size // 8}² latents, {steps} UniPC steps, guidance {args.guidance}")
    models = build_models(name, with_torch=not args.skip_torch)
    print(f"weights built; RSS {common.gib(common.rss_bytes())}", flush=True)
    inputs = make_inputs(max(args.batch), size)
    schedule = NoiseSchedule.from_diffusers(SD15_SCHEDULER_CONFIG)
    results = []
    for dtype in dtypes(args.dtype, jax.default_backend()):
        config = dataclasses.replace(models.config, dtype=dtype)
        pipe = MagicFacePipeline(config, models.params, models.prompt, schedule)
        rows = []
        for batch in args.batch:
            rows.append(run_batch(models, pipe, inputs.head(batch), steps, args, repeats))
            print_row(dtype, rows[-1], steps)
        first = rows[0]
        if "torch_final_latents" in first:
            theirs = first.pop("torch_final_latents")
            ours = final_latents(pipe, inputs.head(first["batch"]), steps, args.guidance)
            first["latents_max_abs_diff"] = float(np.abs(ours - theirs).max())
            first["latents_max_abs"] = float(np.abs(theirs).max())
            print(
                f"  [{dtype}] final latents, batch {first['batch']}: max |diff| "
                f"{first['latents_max_abs_diff']:.2e} (values up to {first['latents_max_abs']:.2f})"
            )
        for row in rows:
            row.pop("torch_final_latents", None)
        results.append({"config": name, "dtype": dtype, "steps": steps, "repeats": repeats, "batches": rows})
    return results


def setup_compilation_cache(directory: str | None) -> str:
    import jax

    directory = directory or tempfile.mkdtemp(prefix="magicface-bench-xla-")
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def matmul_rates() -> dict[str, float]:
    return {"jax": common.matmul_flops_per_second(), "torch": common.torch_matmul_flops_per_second()}


def add_fractions(results: list[dict[str, Any]], rates: dict[str, float]) -> None:
    """Each framework's step FLOP/s as a fraction of its own matmul rate (jnp.dot, torch.mm)."""
    for result in results:
        for row in result["batches"]:
            for name, figures in ((n, row[n]) for n in ("jax", "torch") if n in row):
                for key in [k for k in figures if k.endswith("flops_per_s")]:
                    figures[key.replace("flops_per_s", "fraction_of_matmul_peak")] = (
                        figures[key] / rates[name]
                    )


def print_summary(results: list[dict[str, Any]]) -> None:
    print(
        "\nconfig dtype batch | compile cold/warm s | img/s jax (torch) at N steps, ratio | s/image at 50 "
        "steps jax (torch), ratio | step GFLOP XLA / products jax (torch) | % of matmul rate XLA / products "
        "jax (torch)"
    )
    for result in results:
        for r in result["batches"]:
            j, t = r["jax"], r.get("torch", {})

            def pair(value: str, key: str, fmt: str, scale: float = 1.0, t=t) -> str:
                return f"{value} ({format(t[key] * scale, fmt)})" if key in t else value

            print(
                f"{result['config']} {result['dtype']} {r['batch']} | {r['compile_s_cold']:.1f}/"
                f"{r['compile_s_warm']:.1f} | "
                + pair(f"{j['images_per_s']:.3f}", "images_per_s", ".3f")
                + f" at {result['steps']}, {r.get('ratio_jax_over_torch', float('nan')):.2f} | "
                + pair(f"{j['s_per_image_at_50_steps']:.2f}", "s_per_image_at_50_steps", ".2f")
                + f", {r.get('ratio_at_50_steps', float('nan')):.2f} | "
                + pair(
                    f"{j['xla_flops'] / 1e9:.1f} / {j['matmul_flops'] / 1e9:.1f}",
                    "matmul_flops",
                    ".1f",
                    1e-9,
                )
                + " | "
                + pair(
                    f"{100 * j['xla_fraction_of_matmul_peak']:.0f} / "
                    f"{100 * j['matmul_fraction_of_matmul_peak']:.0f}",
                    "matmul_fraction_of_matmul_peak",
                    ".0f",
                    100,
                )
            )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.check_xla_flags()
    import jax
    import torch

    torch.set_num_threads(common.cores())
    cache = setup_compilation_cache(args.compilation_cache)
    info = common.machine()
    print(
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, load "
        f"{' '.join(f'{x:.2f}' for x in info['load_average'])}; JAX on {jax.default_backend()}; "
        f"torch threads {torch.get_num_threads()}; compilation cache {cache}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    before = matmul_rates()
    print(
        f"fp32 matmul 4096²: jnp.dot {before['jax'] / 1e9:.1f}, torch.mm {before['torch'] / 1e9:.1f} GFLOP/s"
    )
    names = CONFIGS if args.config == "both" else (args.config,)
    results = [r for name in names for r in run_config(name, args)]
    after = matmul_rates()
    print(
        f"fp32 matmul 4096² again: jnp.dot {after['jax'] / 1e9:.1f}, "
        f"torch.mm {after['torch'] / 1e9:.1f} GFLOP/s"
    )
    rates = {name: max(before[name], after[name]) for name in before}
    add_fractions(results, rates)
    print_summary(results)
    report = {
        "command": " ".join(["python", *sys.argv]),
        "machine": info,
        "torch_threads": torch.get_num_threads(),
        "matmul_flops_per_s": {"before": before, "after": after, "used": rates},
        "results": results,
        "load_average_after": common.load_average(),
    }
    print(f"load average after: {' '.join(f'{x:.2f}' for x in report['load_average_after'])}")
    if args.json:
        common.write_json(args.json, report)


if __name__ == "__main__":
    sys.exit(run(main))
