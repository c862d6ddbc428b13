"""The benchmark scripts refuse bad arguments with one line and exit status 2, before any model work."""

import numpy as np
import pytest

from benchmarks import convert_memory, denoiser_diagnostics, model, profile_step, sampling, training
from magicface_jax.cli import run

BAD_ARGUMENTS = [
    (model, ["--config", "sd21"], "--config 'sd21'"),
    (model, ["--batch", "0"], "--batch 0"),
    (model, ["--json", "/nowhere/at/all/out.json"], "its folder does not exist"),
    (sampling, ["--batch", "1,x"], "comma-separated whole numbers"),
    (sampling, ["--batch", "0"], "at least 1"),
    (sampling, ["--guidance", "1.0"], "must be above 1"),
    (sampling, ["--dtype", "float64"], "--dtype 'float64'"),
    (sampling, ["--steps", "0"], "--steps 0"),
    (convert_memory, ["--dtype", "int8"], "--dtype 'int8'"),
    (convert_memory, ["--workdir", "/nowhere/at/all"], "not an existing folder"),
    (model, ["--no-such-flag"], "unrecognized arguments"),
    (profile_step, ["--config", "sdxl"], "--config 'sdxl'"),
    (profile_step, ["--batch", "0"], "--batch 0"),
    (profile_step, ["--guidance", "1"], "must be above 1"),
    (profile_step, ["--top", "0"], "--top 0"),
    (training, ["--part", "gpu"], "--part 'gpu'"),
    (training, ["--configs", "tiny,sd21"], "--configs 'tiny,sd21'"),
    (training, ["--remat", "some"], "--remat 'some'"),
    (training, ["--batches", "1,two"], "comma-separated whole numbers"),
    (training, ["--batches", "0,2"], "at least 1"),
    (training, ["--steps", "0"], "--steps 0"),
    (training, ["--pairs", "8"], "--pairs 8"),
    (training, ["--width", "100"], "--width 100"),
    (training, ["--mfu", "1.5"], "--mfu 1.5"),
    (training, ["--compile-widths", "64,48"], "--compile-widths 48"),
    (training, ["--reuse", "/nowhere/at/all/report.json"], "--reuse /nowhere/at/all/report.json"),
    (training, ["--json", "/nowhere/at/all/out.json"], "its folder does not exist"),
    (denoiser_diagnostics, ["--model", "/nowhere", "--latents", "/nowhere"], "--model has no export"),
    (denoiser_diagnostics, ["--model", ".", "--latents", ".", "--measure", "au,loss"], "--measure 'au,loss'"),
    (denoiser_diagnostics, ["--latents", "."], "--model"),
]


@pytest.mark.parametrize(("script", "argv", "message"), BAD_ARGUMENTS)
def test_bad_arguments(capsys, script, argv, message):
    assert run(script.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1


def test_fast_compile_flags_are_refused(monkeypatch, capsys):
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    assert run(model.main, ["--config", "tiny"]) == 2
    assert "fast-compile" in capsys.readouterr().err


def test_benchmarks_build_the_torch_reference_from_the_tests():
    """The benchmarks take the PyTorch reference from tests/ (it is not part of the installed package)."""
    denoiser = model.torch_denoiser(model.model_config("tiny"))
    assert type(denoiser).__module__ == "tests.torch_reference"
    models = sampling.build_models("tiny", with_torch=True)
    assert type(models.torch_model).__module__ == "tests.torch_reference"


def test_the_gradient_snr_of_a_known_signal_in_noise():
    rng = np.random.default_rng(0)
    signal = np.full((12, 8), 0.1)  # ‖signal‖² = 0.96; noise variance 1 per value: 96 in all
    gradients = signal + rng.standard_normal((4000, 12, 8))
    assert denoiser_diagnostics.gradient_snr(gradients) == pytest.approx(0.01, abs=0.002)
    assert abs(denoiser_diagnostics.gradient_snr(rng.standard_normal((4000, 12, 8)))) < 0.002
