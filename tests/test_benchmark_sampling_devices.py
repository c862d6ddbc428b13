"""benchmarks/sampling_devices.py: bad arguments exit 2 with one line and write nothing; a tiny run over
two of the suite's virtual CPU devices gives the same images under pmap and shard_map and every figure."""

import json

import pytest

from benchmarks import sampling_devices
from magicface_jax.cli import run

BAD_ARGUMENTS = [
    (["--parallelism", "vmap"], "--parallelism 'vmap': use one or more of shard_map, pmap"),
    (["--parallelism", ""], "--parallelism '': use one or more of"),
    (["--devices", "0"], "--devices '0': every value must be at least 1"),
    (["--devices", "1,two"], "--devices '1,two': give comma-separated whole numbers"),
    (["--devices", "1.5"], "--devices '1.5': give comma-separated whole numbers"),
    (["--devices", "16"], "--devices needs 16 devices, JAX has 8"),
    (["--batch-per-device", "0"], "--batch-per-device '0': every value must be at least 1"),
    (["--config", "sdxl"], "--config 'sdxl': use one or more of tiny, sd15"),
    (["--compile-only", "sd21"], "--compile-only 'sd21'"),
    (["--steps", "0"], "--steps 0"),
    (["--repeats", "0"], "--repeats 0"),
    (["--guidance", "1"], "must be above 1"),
    (["--dtype", "float16"], "--dtype 'float16'"),
    (["--matmul-size", "8"], "--matmul-size 8"),
]


@pytest.fixture
def benchmark_flags(monkeypatch):
    """The suite's backend is up with 8 devices and fast compiles, whose flags the benchmark refuses: it
    sees none (these runs check behaviour and figures' presence, not speed)."""
    import jax

    jax.devices()
    monkeypatch.setenv("XLA_FLAGS", "")


@pytest.mark.parametrize(("argv", "message"), BAD_ARGUMENTS)
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(
    benchmark_flags, tmp_path, capsys, argv, message
):
    out = tmp_path / "devices.json"
    assert run(sampling_devices.main, [*argv, "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_an_existing_json_file_is_kept(benchmark_flags, tmp_path, capsys):
    out = tmp_path / "devices.json"
    out.write_text("{}")
    assert run(sampling_devices.main, ["--json", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "{}"


TINY = [
    "--config",
    "tiny",
    "--steps",
    "2",
    "--repeats",
    "1",
    "--matmul-size",
    "256",
    "--batch-per-device",
    "1",
]


@pytest.mark.slow
def test_a_tiny_run_over_two_devices_agrees_and_reports_every_figure(benchmark_flags, tmp_path, capsys):
    out = tmp_path / "devices.json"
    assert run(sampling_devices.main, [*TINY, "--devices", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {(r["parallelism"], r["devices"]): r for r in report["rows"]}
    assert set(rows) == {("pmap", 2), ("shard_map", 2)}
    for (_, devices), row in rows.items():
        assert row["edits_per_call"] == devices and row["weights_copies_per_device"] == 1
        assert row["xla_memory_per_device"]["argument_bytes"] >= row["weights_bytes_per_device"] > 0
        assert row["images_per_s"] == pytest.approx(devices * row["images_per_s_per_device"])
        assert row["denoiser_flops_per_edit"] > 0 and row["fraction_of_peak"] > 0
        assert row["scaling_base_devices"] == 2 and row["scaling_efficiency"] == 1
    assert rows["shard_map", 2]["max_abs_diff_vs"]["pmap"] <= 1e-5
    assert report["devices_share_cores"] is True
    printed = capsys.readouterr().out
    assert "share the" in printed and "| tiny | float32 | pmap | 2 | 1 |" in printed


@pytest.mark.slow
def test_compile_only_analyses_without_weights(benchmark_flags, capsys):
    argv = [*TINY, "--devices", "2", "--compile-only", "tiny"]
    assert run(sampling_devices.main, argv) == 0
    printed = capsys.readouterr().out
    assert "compiled only" in printed
    assert "| tiny | float32 | shard_map | 2 | 1 |" in printed and "| — | — | — |" in printed


def test_images_that_disagree_fail_the_run():
    row = {
        "config": "tiny",
        "dtype": "float32",
        "devices": 2,
        "batch_per_device": 1,
        "parallelism": "shard_map",
    }
    with pytest.raises(SystemExit, match="disagree"):
        sampling_devices.check_agreement([{**row, "max_abs_diff_vs": {"pmap": 0.5}}])
    with pytest.raises(SystemExit, match="disagree"):
        sampling_devices.check_agreement([{**row, "max_abs_diff_vs": {"pmap": float("nan")}}])
    sampling_devices.check_agreement([{**row, "max_abs_diff_vs": {"pmap": 0.0}}])
