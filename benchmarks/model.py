"""Benchmark of the MagicFace denoiser: one `predict_noise` call with precomputed identity keys/values, as
sampling uses it, in JAX against the PyTorch reference (diffusers' UNet2DConditionModel with the
identity-token attention processor) with the same weights, on the same CPU, in the same run.

    python benchmarks/model.py [--config tiny|sd15|both] [--batch 2] [--repeats 5] [--json OUT]

Reports compile time (apart from the run), forward time (median after warm-up; JAX and PyTorch timed in
alternation), the ratio torch/JAX, FLOPs per forward from XLA's cost analysis, the achieved FLOP/s against
this machine's fp32 matmul rate, XLA's buffer sizes, the process's peak RSS, and the largest difference
between the two outputs. Random weights (diffusers' initialisation), converted through our name table.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common
from magicface_jax.cli import ArgumentParser, run
from magicface_jax.errors import MagicFaceError

CONFIGS = ("tiny", "sd15")
LATENT_SIZE = {"tiny": 16, "sd15": 64}  # sd15: 512² images
TIMESTEP = 500.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="both", help="tiny, sd15 or both (default both)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per framework (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards first (default 1)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--skip-torch", action="store_true", help="time JAX only")
    args = parser.parse_args(argv)
    if args.config not in (*CONFIGS, "both"):
        raise MagicFaceError(f"--config {args.config!r}: use tiny, sd15 or both")
    if args.batch < 1:
        raise MagicFaceError(f"--batch {args.batch}: must be at least 1")
    if args.repeats < 1:
        raise MagicFaceError(f"--repeats {args.repeats}: must be at least 1")
    if args.warmup < 1:
        raise MagicFaceError(f"--warmup {args.warmup}: must be at least 1 (the first call also loads code)")
    common.check_json_path(args.json)
    return args


# --------------------------------------------------------------------------------------- model and inputs


def model_config(name: str):
    from magicface_jax.config import sd15_magicface_config, tiny_magicface_config

    return tiny_magicface_config() if name == "tiny" else sd15_magicface_config()


def torch_denoiser(config, seed: int = 0):
    """The PyTorch reference denoiser with random weights (diffusers' initialisation)."""
    import torch

    from tests.torch_reference import Denoiser

    torch.manual_seed(seed)
    return Denoiser(config.denoiser).eval()


def flax_params(denoiser, config) -> dict:
    """The torch denoiser's weights in our Flax layout, through the conversion table, as JAX arrays."""
    import jax

    from magicface_jax.convert.names import network_table
    from magicface_jax.convert.sources import ArraySource
    from magicface_jax.convert.tensors import to_flax_params

    rows = network_table(config.denoiser)
    params = to_flax_params(ArraySource(denoiser.magicface_state_dict()), rows, "denoiser")
    return jax.tree.map(jax.device_put, params)


def identity_shapes(config, batch: int, size: int) -> list[tuple[int, ...]]:
    """Shapes of the identity features for `size`² latents, computing nothing."""
    import jax
    import jax.numpy as jnp

    from magicface_jax.models.magicface import MagicFace, abstract_unet, unbox

    params = unbox(abstract_unet(config.identity_encoder))
    latents = jax.ShapeDtypeStruct((batch, size, size, 4), jnp.float32)
    prompt = jax.ShapeDtypeStruct((1, 77, config.denoiser.cross_attention_dim), jnp.float32)
    features = jax.eval_shape(MagicFace(config).identity_features, params, latents, prompt)
    return [f.shape for f in features]


def benchmark_inputs(config, batch: int, size: int, seed: int = 0) -> dict[str, Any]:
    """Random inputs, NHWC (the JAX side); identity features at the scale of hidden states."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def normal(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    au = np.zeros((batch, 12), np.float32)
    au[:, 6] = 4.0  # AU12 +4 ("more smile")
    return {
        "noisy": normal(batch, size, size, 4),
        "background": normal(batch, size, size, 4),
        "au": au,
        "timestep": np.float32(TIMESTEP),
        "identity": [normal(*shape) for shape in identity_shapes(config, batch, size)],
        "prompt": normal(1, 77, config.denoiser.cross_attention_dim),
    }


# ---------------------------------------------------------------------------------------------- the runs


def torch_forward(denoiser, inputs: dict[str, Any]) -> Callable[[], Any]:
    """A zero-argument callable running the reference denoiser on `inputs`; returns NHWC numpy."""
    import torch

    def nchw(array):
        return torch.from_numpy(array.transpose(0, 3, 1, 2).copy())

    batch = inputs["noisy"].shape[0]
    noisy, background = nchw(inputs["noisy"]), nchw(inputs["background"])
    au = torch.from_numpy(inputs["au"])
    features = [torch.from_numpy(f) for f in inputs["identity"]]
    prompt = torch.from_numpy(inputs["prompt"]).expand(batch, -1, -1)
    timestep = float(inputs["timestep"])

    def run():
        with torch.inference_mode():
            out = denoiser(noisy, background, au, timestep, features, prompt)
        return out.numpy().transpose(0, 2, 3, 1)

    return run


def torch_attention_kernel(batch: int, heads: int, tokens: int, head_dim: int) -> str:
    """The kernel PyTorch picks for fp32 `scaled_dot_product_attention` of this shape on this CPU."""
    import torch
    from torch.nn.attention import SDPBackend

    q = torch.zeros(batch, heads, tokens, head_dim)
    return SDPBackend(torch._fused_sdp_choice(q, q, q)).name.lower()


def model_flops(model, args) -> float:
    """FLOPs of one forward from XLA's cost analysis of the plain program (`common.plain`)."""
    import jax

    return common.xla_flops(jax.jit(common.plain(model).predict_noise).lower(*args).compile())


@dataclasses.dataclass
class Setup:
    name: str
    batch: int
    size: int
    parameters: int
    weights_rss_bytes: int
    inputs: dict[str, Any]
    jax_args: tuple
    model: Any
    denoiser: Any  # the torch reference, or None


def prepare(name: str, batch: int, with_torch: bool) -> Setup:
    import jax

    from magicface_jax.models.magicface import MagicFace
    from magicface_jax.nn.cpu_kernels import SAMPLING

    config = model_config(name)
    size = LATENT_SIZE[name]
    denoiser = torch_denoiser(config)
    params = flax_params(denoiser, config)
    weights_rss = common.rss_bytes()
    inputs = benchmark_inputs(config, batch, size)
    model = MagicFace(config, kernels=SAMPLING)
    identity_kv = jax.jit(model.identity_kv)(params, inputs["identity"])
    jax_args = (
        params,
        inputs["noisy"],
        inputs["background"],
        inputs["au"],
        inputs["timestep"],
        identity_kv,
        inputs["prompt"],
    )
    return Setup(
        name=name,
        batch=batch,
        size=size,
        parameters=sum(a.size for a in jax.tree.leaves(params)),
        weights_rss_bytes=weights_rss,
        inputs=inputs,
        jax_args=jax_args,
        model=model,
        denoiser=denoiser if with_torch else None,
    )


def run_config(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    print(f"\n== {name}: denoiser, batch {args.batch}, {LATENT_SIZE[name]}² latents, fp32", flush=True)
    load_before = common.load_average()
    common.reset_peak_rss()
    setup = prepare(name, args.batch, with_torch=not args.skip_torch)
    print(
        f"weights: {setup.parameters / 1e6:.1f}M parameters; RSS with the torch and JAX copies "
        f"{common.gib(setup.weights_rss_bytes)}",
        flush=True,
    )
    compiled = common.compile_ahead(setup.model.predict_noise, *setup.jax_args)
    print(f"compile: lower {compiled.lower_s:.1f} s, compile {compiled.compile_s:.1f} s", flush=True)
    flops = model_flops(setup.model, setup.jax_args)

    outputs: dict[str, Any] = {}

    def jax_run() -> None:
        outputs["jax"] = np.asarray(compiled.executable(*setup.jax_args).block_until_ready())

    fns = {"jax": jax_run}
    if setup.denoiser is not None:
        torch_run = torch_forward(setup.denoiser, setup.inputs)

        def torch_keep() -> None:
            outputs["torch"] = torch_run()

        fns["torch"] = torch_keep
    timings = common.time_alternating(fns, args.repeats, warmup=args.warmup)
    peak = common.peak_rss_bytes()
    # The matmul rate right after the forwards, under the same load: the peak they are compared with.
    matmul_rate = common.matmul_flops_per_second()

    jax_s = timings["jax"].median
    result: dict[str, Any] = {
        "config": name,
        "batch": args.batch,
        "latent_size": setup.size,
        "parameters": setup.parameters,
        "load_average_before": load_before,
        "load_average_after": common.load_average(),
        "lower_s": compiled.lower_s,
        "compile_s": compiled.compile_s,
        "flops": flops,
        "xla_flops_cpu_program": compiled.flops,
        "jax": timings["jax"].to_json(),
        "matmul_flops_per_s": matmul_rate,
        "achieved_flops_per_s": flops / jax_s,
        "fraction_of_matmul_peak": flops / jax_s / matmul_rate,
        "xla_memory": compiled.memory,
        "rss_weights_bytes": setup.weights_rss_bytes,
        "peak_rss_bytes": peak,
    }
    print(
        f"jax forward: median {jax_s * 1e3:.1f} ms (best {timings['jax'].best * 1e3:.1f}); "
        f"{flops / 1e9:.1f} GFLOP -> {flops / jax_s / 1e9:.1f} GFLOP/s = "
        f"{100 * result['fraction_of_matmul_peak']:.1f}% of the matmul rate ({matmul_rate / 1e9:.1f} GFLOP/s)"
    )
    if "torch" in timings:
        torch_s = timings["torch"].median
        result |= {
            "torch": timings["torch"].to_json(),
            "ratio_torch_over_jax": torch_s / jax_s,
            "ratio_best_torch_over_best_jax": timings["torch"].best / timings["jax"].best,
            "max_abs_diff": float(np.abs(outputs["jax"] - outputs["torch"]).max()),
            "output_max_abs": float(np.abs(outputs["torch"]).max()),
        }
        print(
            f"torch forward: median {torch_s * 1e3:.1f} ms (best {timings['torch'].best * 1e3:.1f}); "
            f"ratio torch/jax {torch_s / jax_s:.2f} (best to best "
            f"{result['ratio_best_torch_over_best_jax']:.2f}); max |diff| {result['max_abs_diff']:.2e} "
            f"(outputs up to {result['output_max_abs']:.2f})"
        )
    print(f"load average before {load_before[0]:.2f}, after {result['load_average_after'][0]:.2f}")
    memory = compiled.memory
    print(
        f"memory: XLA arguments {common.gib(memory['argument_bytes'])}, temporaries "
        f"{common.gib(memory['temp_bytes'])}; process peak RSS {common.gib(peak)}"
    )
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.check_xla_flags()
    import torch

    torch.set_num_threads(common.cores())
    info = common.machine()
    kernel = torch_attention_kernel(args.batch, 8, 8192, 40)  # SD1.5's first level with identity tokens
    print(
        f"{info['cpu']}, {info['cores']} cores, load {' '.join(f'{x:.2f}' for x in info['load_average'])}; "
        f"torch threads {torch.get_num_threads()}, scaled_dot_product_attention kernel: {kernel}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    torch_rate = common.torch_matmul_flops_per_second()
    print(f"fp32 matmul 4096²: torch.mm {torch_rate / 1e9:.1f} GFLOP/s (jnp.dot: measured after each model)")
    names = CONFIGS if args.config == "both" else (args.config,)
    results = [run_config(name, args) for name in names]
    report = {
        "command": " ".join(["python", *sys.argv]),
        "machine": info,
        "torch_threads": torch.get_num_threads(),
        "torch_attention_kernel": kernel,
        "torch_matmul_flops_per_s": torch_rate,
        "results": results,
    }
    if args.json:
        common.write_json(args.json, report)


if __name__ == "__main__":
    sys.exit(run(main))
