"""benchmarks/training.py: a tiny CPU run reports every figure, the state's bytes per device are read
from the shardings, and the memory model fits the compiled batch sizes and widths."""

import json

import pytest

from benchmarks import common, training
from magicface_jax.cli import run

CPU_KEYS = {
    "compile_s",
    "step",
    "examples_per_s",
    "flops_per_step",
    "matmul_flops_per_s",
    "matmul_dtype",
    "mfu",
    "xla_memory",
    "peak_rss_bytes",
    "pipeline_examples_per_s",
    "pipeline_over_step",
    "pipeline_goal_met",
}


@pytest.mark.slow
def test_a_tiny_cpu_run_reports_every_figure(tmp_path, monkeypatch, capsys):
    import jax

    jax.devices()  # the backend starts with the suite's flags (8 devices, fast compiles) ...
    monkeypatch.setenv("XLA_FLAGS", "")  # ... which the benchmark would refuse: this run checks keys only
    out = tmp_path / "training.json"
    argv = ["--configs", "tiny", "--steps", "2", "--pairs", "16", "--pipeline-batches", "2"]
    assert run(training.main, [*argv, "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())["cpu"]
    assert set(result) >= CPU_KEYS
    assert result["config"] == "tiny" and result["batch_size"] == 8 and len(result["step"]["runs_s"]) == 2
    assert result["flops_per_step"] > 0 and result["mfu"] > 0
    assert result["xla_memory"]["argument_bytes"] > 0 and result["pipeline_examples_per_s"] > 0
    assert "| tiny 64² | 8 |" in capsys.readouterr().out


def test_state_bytes_count_one_device_shard_and_one_full_copy():
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from magicface_jax.parallel.mesh import training_mesh

    mesh = training_mesh(1, 8, 1)
    state = {
        "kernel": jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=NamedSharding(mesh, P("fsdp"))),
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P())),
    }
    assert common.state_bytes(state) == (2 * 8 * 4 + 4, 16 * 8 * 4 + 4)


def test_the_activation_model_fits_batch_and_width_and_predicts_the_largest_batch():
    gib = 2**30
    points = [
        {"width": 64, "per_device_batch": 1, "rest_bytes": 10 * gib},
        {"width": 64, "per_device_batch": 2, "rest_bytes": 14 * gib},
        {"width": 128, "per_device_batch": 1, "rest_bytes": 12 * gib},
    ]
    model = training.activation_model(points)
    assert model["constant_bytes"] == 6 * gib and model["per_example_bytes_at_width"] == 4 * gib
    assert training.per_example_bytes(model, 320) == 12 * gib  # 4 GiB + 2 GiB per 64 of width
    assert training.largest_batch(5 * gib, model, 320, 95.0) == 7  # (95 - 5 - 6) / 12
    assert training.largest_batch(90 * gib, model, 320, 95.0) == 0
    assert training.activation_model(points[:1] + points[2:]) is None  # one batch size per width


def test_fast_compile_flags_are_refused_where_steps_are_timed_and_stated_where_only_compiled(
    monkeypatch, capsys
):
    import jax

    jax.devices()  # 8 devices, as the sd15 part needs
    flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    monkeypatch.setenv("XLA_FLAGS", flags)
    assert run(training.main, ["--part", "cpu", "--configs", "tiny"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "fast-compile flags" in lines[0]
    monkeypatch.setattr(training, "run_sd15", lambda args: {"compiles": []})
    monkeypatch.setattr(training, "sd15_tables", lambda report: "the tables")
    assert run(training.main, ["--part", "sd15"]) == 0
    out = capsys.readouterr().out
    assert "the memory and FLOP figures do not depend on them, the compile times do" in out
