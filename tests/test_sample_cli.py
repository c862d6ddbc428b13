"""`sample.py`: edits, the authors' flags, sweeps, JSONL files, the demo, and every bad input (one-line error,
exit status 2, no output)."""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import sample
from magicface_jax import checkpoint, demo
from magicface_jax.assets import AUTHORS_EXAMPLES
from magicface_jax.cli import run
from magicface_jax.editing import commands
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces import preprocess as faces
from magicface_jax.parallel.mesh import data_mesh
from magicface_jax.pipeline import MagicFacePipeline

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
STEPS = ("--steps", "2")


@functools.cache
def one_device_pipeline(directory, dtype=None):
    """Loaded once per checkpoint for the whole module, on one device (a batch of one would otherwise run
    on each of the 8 virtual devices), so that its compiled programs are shared by the tests."""
    return MagicFacePipeline.from_pretrained(directory, dtype=dtype, mesh=data_mesh(jax.devices()[:1]))


@pytest.fixture(autouse=True)
def _one_device(monkeypatch):
    monkeypatch.setattr(commands, "load_pipeline", one_device_pipeline)


@pytest.fixture(scope="session")
def face(tmp_path_factory) -> tuple[Path, Path]:
    """The authors' example 00381 and its background condition at 64x64."""
    folder = tmp_path_factory.mktemp("face")
    for name in ("00381", "00381_bg"):
        image = Image.open(AUTHORS_EXAMPLES / f"{name}.png").convert("RGB")
        image.resize((SIZE, SIZE), Image.Resampling.LANCZOS).save(folder / f"{name}.png")
    return folder / "00381.png", folder / "00381_bg.png"


def call(capsys, *argv) -> tuple[int, str, str]:
    code = run(sample.main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def edit(capsys, converted, face, out, *extra) -> tuple[int, str, str]:
    image, background = face
    return call(capsys, "--checkpoint", converted, "--image", image, "--background", background, *STEPS,
                "--out", out, *extra)  # fmt: skip


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ------------------------------------------------------------------------------------------------- edits


def test_one_edit(capsys, converted, face, tmp_path):
    out = tmp_path / "out" / "edit.png"
    code, stdout, err = edit(capsys, converted, face, out, "--au", "AU4=+4,AU1=+2")
    assert code == 0, err
    assert read(out).shape == (SIZE, SIZE, 3)
    assert "AU4=+4, AU1=+2" in stdout and f"wrote {out}" in stdout and "compiled" in stdout
    assert [p.name for p in out.parent.iterdir()] == ["edit.png"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # readable as the user's umask says


def test_a_checkpoint_and_images_given_as_relative_paths(capsys, converted, face, tmp_path, monkeypatch):
    """orbax reads absolute paths only: a relative --checkpoint once failed as 'convert it again'."""
    monkeypatch.chdir(converted.parent)
    image, background = face
    code, _, err = call(capsys, "--checkpoint", converted.name, "--image", image, "--background", background,
                        *STEPS, "--out", tmp_path / "edit.png", "--au", "AU12=+2")  # fmt: skip
    assert code == 0, err
    assert read(tmp_path / "edit.png").shape == (SIZE, SIZE, 3)


def with_sampling(converted: Path, folder: Path, sampling) -> Path:
    """A copy of the checkpoint whose manifest records `sampling` as its measured steps."""
    copy = folder / "measured"
    shutil.copytree(converted, copy)
    manifest = json.loads((copy / checkpoint.MANIFEST).read_text())
    (copy / checkpoint.MANIFEST).write_text(json.dumps(manifest | {"sampling": sampling}))
    return copy


def test_the_steps_default_to_those_measured_for_the_checkpoint(capsys, converted, face, tmp_path):
    assert checkpoint.read_info(converted).default_steps == checkpoint.AUTHORS_STEPS  # measured for none
    measured = with_sampling(converted, tmp_path, {"steps": 3, "measured": "on 8 pairs"})
    assert checkpoint.read_info(measured).sampling == checkpoint.SamplingDefault(3, "on 8 pairs")
    image, background = face
    out = tmp_path / "edit.png"
    code, stdout, err = call(capsys, "--checkpoint", measured, "--image", image, "--background", background,
                             "--au", "AU12=+2", "--out", out)  # fmt: skip
    assert code == 0, err
    assert "3 unipc steps" in stdout and read(out).shape == (SIZE, SIZE, 3)
    code, stdout, err = edit(capsys, measured, face, tmp_path / "given.png", "--au", "AU12=+2")
    assert code == 0 and "2 unipc steps" in stdout, err  # --steps wins


@pytest.mark.parametrize("sampling", [{"steps": 0}, {"steps": "10"}, {"steps": True}, [10]])
def test_a_bad_recorded_sampling_default_is_refused_in_one_line(capsys, converted, face, tmp_path, sampling):
    measured = with_sampling(converted, tmp_path, sampling)
    image, background = face
    code, _, err = call(capsys, "--checkpoint", measured, "--image", image, "--background", background,
                        "--au", "AU12=+2", "--out", tmp_path / "edit.png")  # fmt: skip
    assert_one_line_error(code, err, "sampling.steps", "fix or remove the sampling entry")
    assert not (tmp_path / "edit.png").exists()


def test_authors_flags_give_the_same_edit(capsys, converted, face, tmp_path):
    image, background = face
    ours, theirs = tmp_path / "ours.png", tmp_path / "theirs"
    assert edit(capsys, converted, face, ours, "--au", "AU4=+4,AU1=+2")[0] == 0
    code, _, err = call(capsys, "--checkpoint", converted, "--img_path", image, "--bg_path", background,
                        "--au_test", "AU4+AU1", "--AU_variation", "4+2", "--inference_steps", "2",
                        "--saved_path", theirs)  # fmt: skip
    assert code == 0, err
    np.testing.assert_array_equal(read(theirs / "00381.png"), read(ours))


def test_emotion_preset_with_au_overrides(capsys, converted, face, tmp_path):
    preset, explicit = tmp_path / "preset.png", tmp_path / "explicit.png"
    code, stdout, err = edit(capsys, converted, face, preset, "--emotion", "happiness:4", "--au", "AU12=+6")
    assert code == 0, err
    assert "AU6=+4, AU12=+6" in stdout  # the preset's AU6, --au's AU12
    assert edit(capsys, converted, face, explicit, "--au", "AU6=+4,AU12=+6")[0] == 0
    np.testing.assert_array_equal(read(preset), read(explicit))


def test_sweep_grid(capsys, converted, face, tmp_path):
    out = tmp_path / "sweep.png"
    code, stdout, err = edit(
        capsys, converted, face, out, "--sweep", "AU12=-6:6:2", "--sweep", "AU4=0:4:2", "--au", "AU1=+1"
    )
    assert code == 0, err
    grid = read(out)
    assert grid.shape == (2 * SIZE, (1 + 2) * SIZE, 3)
    source = read(face[0])
    np.testing.assert_array_equal(grid[SIZE // 2 : SIZE, :SIZE], source[SIZE // 2 :])  # below the label
    columns = [grid[SIZE // 2 : SIZE, c * SIZE : (c + 1) * SIZE] for c in (1, 2)]
    assert not np.array_equal(*columns)  # the intensities differ
    assert "compiled 1 program(s)" in stdout and "ran 4 edit(s)" in stdout  # one edit per batch


def test_sweep_rows_run_in_batches_of_batch_size(capsys, converted, face, tmp_path):
    """A row of 3 runs as batches of 2 (the last padded), one program, and gives what batches of 1 give."""
    single, batched = tmp_path / "single.png", tmp_path / "batched.png"
    assert edit(capsys, converted, face, single, "--sweep", "AU12=-6:6:3")[0] == 0
    code, stdout, err = edit(capsys, converted, face, batched, "--sweep", "AU12=-6:6:3", "--batch-size", "2")
    assert code == 0, err
    assert "compiled 1 program(s)" in stdout and "ran 3 edit(s)" in stdout
    assert np.abs(read(single).astype(int) - read(batched).astype(int)).max() <= 2


def test_edits_file(capsys, converted, face, tmp_path):
    image, background = face
    single = tmp_path / "single.png"
    assert edit(capsys, converted, face, single, "--au", "AU4=+4,AU1=+2", "--seed", "5")[0] == 0
    edits = tmp_path / "batch" / "edits.jsonl"
    edits.parent.mkdir()
    pair = {"image": str(image), "background": str(background)}
    records = [
        {**pair, "au": {"AU4": 4, "AU1": 2}, "out": "a.png", "seed": 5},
        {**pair, "au": "AU12=+3", "out": "sub/b.png"},
        {**pair, "au": {"AU12": -3}, "out": "c.png"},
    ]
    edits.write_text("".join(json.dumps(r) + "\n" for r in records))
    code, stdout, err = call(capsys, "--checkpoint", converted, "--edits", edits, *STEPS, "--batch-size", "2")
    assert code == 0, err
    outputs = [edits.parent / name for name in ("a.png", "sub/b.png", "c.png")]
    assert all(read(path).shape == (SIZE, SIZE, 3) for path in outputs)
    assert "compiled 1 program(s)" in stdout  # the short last batch is padded to the same shape
    # The same seed gives the same edit alone or in a batch (up to float rounding).
    difference = np.abs(read(outputs[0]).astype(int) - read(single).astype(int))
    assert difference.max() <= 2


def test_rgba_and_grayscale_inputs_run(capsys, converted, face, tmp_path):
    image, background = face
    rgba, gray = tmp_path / "rgba.png", tmp_path / "gray.png"
    Image.open(image).convert("RGBA").save(rgba)
    Image.open(image).convert("L").save(gray)
    for source in (rgba, gray):
        out = tmp_path / f"{source.stem}_out.png"
        code, _, err = edit(capsys, converted, (source, background), out, "--au", "AU12=+2")
        assert code == 0, err
        assert read(out).shape == (SIZE, SIZE, 3)


def test_out_of_range_intensity_warns_in_one_line(capsys, converted, face, tmp_path):
    out = tmp_path / "strong.png"
    code, _, err = edit(capsys, converted, face, out, "--au", "AU12=+12")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ") and "AU12" in line]
    assert len(warnings) == 1 and "[-10, 10]" in warnings[0]
    assert "UserWarning" not in err
    assert out.exists()


@pytest.mark.skipif(not faces.is_available(), reason="needs the faces extra: pip install '.[faces]'")
def test_missing_background_is_computed(capsys, converted, face, tmp_path):
    out = tmp_path / "computed.png"
    code, _, err = call(capsys, "--checkpoint", converted, "--image", face[0], *STEPS, "--au", "AU12=+2",
                        "--out", out)  # fmt: skip
    assert code == 0, err
    assert "computed the background condition" in err
    assert read(out).shape == (SIZE, SIZE, 3)


def test_missing_background_without_preprocessing(capsys, converted, face, tmp_path, monkeypatch):
    monkeypatch.setattr(faces, "is_available", lambda: False)
    out = tmp_path / "none.png"
    code, _, err = call(
        capsys, "--checkpoint", converted, "--image", face[0], "--au", "AU12=+2", "--out", out
    )
    assert_one_line_error(code, err, "no background", "python -m magicface_jax.preprocess", "[faces]")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- bad input


def _not_an_image(tmp_path: Path) -> Path:
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    return path


def _truncated(tmp_path: Path, face) -> Path:
    path = tmp_path / "truncated.png"
    path.write_bytes(face[0].read_bytes()[:300])
    return path


def _sized(tmp_path: Path, size: int, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(path)
    return path


def _without(tmp_path: Path, converted: Path, missing: str) -> Path:
    """A copy of the checkpoint (its parts linked) lacking one part."""
    broken = tmp_path / f"without_{missing}"
    broken.mkdir()
    for part in converted.iterdir():
        if part.name != missing:
            (broken / part.name).symlink_to(part)
    return broken


def _file(tmp_path: Path, name: str = "taken.png") -> Path:
    path = tmp_path / name
    path.write_text("an earlier result")
    return path


def _empty_component(tmp_path: Path, converted: Path) -> Path:
    broken = _without(tmp_path, converted, "denoiser")
    (broken / "denoiser").mkdir()
    return broken


VALID_AUS = "AU1, AU2, AU4, AU5, AU6, AU9, AU12, AU15, AU17, AU20, AU25, AU26"

BAD_INPUTS = {
    "unknown AU": (lambda t, c, f: {"--au": "AU3=+2"}, ["AU3", VALID_AUS]),
    "non-numeric intensity": (lambda t, c, f: {"--au": "AU4=strong"}, ["AU4", "'strong' is not a number"]),
    "authors' flags mismatch": (
        lambda t, c, f: {"--au_test": "AU4+AU1", "--AU_variation": "4"},
        ["one value"],
    ),
    "missing image": (lambda t, c, f: {"--image": t / "nowhere.png"}, ["not found", "nowhere.png"]),
    "missing background": (lambda t, c, f: {"--background": t / "nobg.png"}, ["not found", "nobg.png"]),
    "unreadable image": (lambda t, c, f: {"--image": _truncated(t, f)}, ["truncated.png"]),
    "not an image": (lambda t, c, f: {"--image": _not_an_image(t)}, ["notes.png", "not an image"]),
    "a folder as image": (lambda t, c, f: {"--image": t}, ["is not a file"]),
    "sizes differ": (
        lambda t, c, f: {"--background": _sized(t, 72, "bg72")},
        ["64x64", "72x72", "same size"],
    ),
    "size not a multiple of the model's 64": (
        lambda t, c, f: {"--image": _sized(t, 72, "a72"), "--background": _sized(t, 72, "b72")},
        ["72x72", "multiples of 64"],
    ),
    "--size not a multiple of the model's 64": (
        lambda t, c, f: {"--size": "96"},
        ["--size is 96x96", "of 64"],
    ),
    "steps < 1": (lambda t, c, f: {"--steps": "0"}, ["num_inference_steps=0", "at least 1"]),
    "steps past the schedule": (lambda t, c, f: {"--steps": "1001"}, ["num_inference_steps=1001", "(1000)"]),
    "steps not a number": (lambda t, c, f: {"--steps": "ten"}, ["--steps", "'ten'"]),
    "guidance < 0": (lambda t, c, f: {"--guidance": "-1"}, ["guidance", "≥ 0"]),
    "unknown sampler": (lambda t, c, f: {"--sampler": "plms"}, ["--sampler", "plms"]),
    "no checkpoint": (lambda t, c, f: {"--checkpoint": t / "nockpt"}, ["nockpt", "does not exist"]),
    "checkpoint without manifest": (
        lambda t, c, f: {"--checkpoint": _without(t, c, "magicface.json")},
        ["magicface.json", "convert_weights.py"],
    ),
    "checkpoint without a component": (
        lambda t, c, f: {"--checkpoint": _without(t, c, "vae")},
        ["incomplete", "vae"],
    ),
    "checkpoint with an empty component": (
        lambda t, c, f: {"--checkpoint": _empty_component(t, c)},
        ["denoiser", "convert it again"],
    ),
    "unknown output format": (lambda t, c, f: {"--out": t / "edit.xyz"}, ["unknown image format"]),
    "output is a folder": (lambda t, c, f: {"--out": t}, ["is a folder", "give an image file name"]),
    "output is the input image": (lambda t, c, f: {"--out": f[0]}, ["is the input", "00381.png"]),
    "output is the background": (lambda t, c, f: {"--out": f[1]}, ["is the input", "00381_bg.png"]),
    "output inside the checkpoint": (lambda t, c, f: {"--out": c / "edit.png"}, ["lies inside the input"]),
    "output exists": (lambda t, c, f: {"--out": _file(t)}, ["already exists", "--overwrite"]),
    "output under a file": (lambda t, c, f: {"--out": _file(t, "x") / "e.png"}, ["is a file, not a folder"]),
    "checkpoint is a file": (lambda t, c, f: {"--checkpoint": _file(t)}, ["is a file", "magicface.json"]),
    "sweep too long": (lambda t, c, f: {"--sweep": "AU12=-6:6:100000"}, ["100000", "at most 64"]),
    "grid too large": (
        lambda t, c, f: {"--sweep": "AU12=-6:6:64", "--size": "1024"},
        ["65 tiles of 1024x1024", "--size"],
    ),
    "batch size 0": (
        lambda t, c, f: {"--sweep": "AU12=0:1:2", "--batch-size": "0"},
        ["batch size must be a whole number from 1 to", "got 0"],
    ),
    "batch size past the memory bound": (
        lambda t, c, f: {"--sweep": "AU12=0:1:2", "--batch-size": "100000"},
        ["16 per device", "got 100000"],
    ),
    "batch size of one edit": (lambda t, c, f: {"--batch-size": "2"}, ["--batch-size goes with"]),
    "bad sweep": (lambda t, c, f: {"--sweep": "AU12=-6:6"}, ["AU=start:stop:count"]),
    "unknown emotion": (lambda t, c, f: {"--emotion": "joy"}, ["'joy'", "happiness, sadness"]),
    "emotion intensity out of range": (lambda t, c, f: {"--emotion": "anger:12"}, ["anger", "-10..10"]),
    "authors' model flag": (lambda t, c, f: {"--denoising_unet_path": "x"}, ["convert_weights.py"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(capsys, converted, face, tmp_path, case):
    make, words = BAD_INPUTS[case]
    bad = tmp_path / "bad"
    bad.mkdir()
    image, background = face
    options = {"--checkpoint": converted, "--image": image, "--background": background, "--au": "AU4=+4",
               "--out": tmp_path / "out" / "edit.png", "--steps": "2"}  # fmt: skip
    given = make(bad, converted, face)
    if "--au_test" in given:
        del options["--au"]
    options.update(given)
    code, _, err = call(capsys, *(item for pair in options.items() for item in pair))
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "out").exists()


def test_bad_edits_file_runs_nothing(capsys, converted, face, tmp_path):
    image, background = face
    edits = tmp_path / "edits.jsonl"
    good = {"image": str(image), "background": str(background), "au": {"AU12": 2}, "out": "ok.png"}
    bad = {**good, "au": {"AU12": "lots"}, "out": "bad.png"}
    edits.write_text(f"{json.dumps(good)}\n\n{json.dumps(bad)}\n")
    code, _, err = call(capsys, "--checkpoint", converted, "--edits", edits)
    assert_one_line_error(code, err, f"{edits} line 3", "AU12", "not a number")
    assert not (tmp_path / "ok.png").exists()
    code, _, err = call(capsys, "--checkpoint", converted, "--edits", edits, "--image", image)
    assert_one_line_error(code, err, "--edits", "--image")


def _edits_file(folder: Path, face, outs: list[str]) -> Path:
    image, background = face
    edits = folder / "edits.jsonl"
    edits.parent.mkdir(parents=True, exist_ok=True)
    records = [{"image": str(image), "background": str(background), "au": "AU12=+2", "out": o} for o in outs]
    edits.write_text("".join(json.dumps(r) + "\n" for r in records))
    return edits


def test_edits_outputs_are_checked_before_any_work(capsys, converted, face, tmp_path):
    edits = _edits_file(tmp_path, face, ["a.png", "b.png"])
    _file(tmp_path, "b.png")
    code, _, err = call(capsys, "--checkpoint", converted, "--edits", edits, *STEPS)
    assert_one_line_error(code, err, f"{edits} line 2", "already exists", "--overwrite")
    edits = _edits_file(tmp_path / "inside", face, [str(converted / "a.png")])
    code, _, err = call(capsys, "--checkpoint", converted, "--edits", edits, *STEPS)
    assert_one_line_error(code, err, f"{edits} line 1", "lies inside the input", str(converted))
    assert not (tmp_path / "a.png").exists() and not (converted / "a.png").exists()


def _failing_save(monkeypatch, fail_at: int) -> None:
    """PIL's save fails with "disk full" at its `fail_at`-th call (from 1)."""
    calls = []
    original = Image.Image.save

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)


def test_edits_late_write_failure_names_the_line_and_what_was_written(
    capsys, converted, face, tmp_path, monkeypatch
):
    edits = _edits_file(tmp_path, face, ["a.png", "b.png", "c.png"])
    _failing_save(monkeypatch, fail_at=2)
    code, _, err = call(capsys, "--checkpoint", converted, "--edits", edits, *STEPS, "--batch-size", "2",
                        "--no-progress")  # fmt: skip
    assert_one_line_error(code, err, f"{edits} line 2", "No space left on device",
                          f"1 image(s) were written before it: {tmp_path / 'a.png'}")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "edits.jsonl"]


def test_late_write_failure_is_one_line(capsys, converted, face, tmp_path, monkeypatch):
    _failing_save(monkeypatch, fail_at=1)
    out = tmp_path / "edit.png"
    code, _, err = edit(capsys, converted, face, out, "--au", "AU12=+2")
    assert_one_line_error(code, err, f"cannot write {out}", "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_an_earlier_image(capsys, converted, face, tmp_path):
    out = _file(tmp_path, "edit.png")
    code, _, err = edit(capsys, converted, face, out, "--au", "AU12=+2", "--overwrite")
    assert code == 0, err
    assert read(out).shape == (SIZE, SIZE, 3)


@pytest.mark.parametrize("limit", [1000, 3000])  # PIL refuses above twice its limit and warns above it
def test_images_past_the_decompression_bomb_limit(capsys, converted, face, tmp_path, monkeypatch, limit):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)  # the 64x64 face has 4096 pixels
    code, _, err = edit(capsys, converted, face, tmp_path / "edit.png", "--au", "AU12=+2")
    assert_one_line_error(code, err, "00381.png", f"more pixels than PIL opens safely ({limit}")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------- demo


@pytest.fixture
def demo_env(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # restored after --demo adds to it


def test_demo(capsys, demo_env, tmp_path):
    out = tmp_path / "demo.png"
    code, stdout, err = call(capsys, "--demo", *STEPS, "--out", out)
    assert code == 0, err
    assert "the demo model: MagicFace trained" in stdout and demo.DEMO_IMAGE.name in stdout
    assert all(f"{sweep.split('=')[0]} over 6 values" in stdout for sweep in demo.DEMO_SWEEPS)
    assert f"wrote {out}" in stdout
    grid = read(out)
    assert grid.shape[0] >= len(demo.DEMO_SWEEPS) * demo.DEMO_SIZE and grid.shape[1] >= 7 * demo.DEMO_SIZE
    # Explicit flags replace the demo's defaults.
    code, stdout, err = call(capsys, "--demo", *STEPS, "--au", "AU12=+3", "--out", out, "--overwrite")
    assert code == 0, err
    assert "AU12=+3" in stdout and "sweeping" not in stdout
    assert read(out).shape == (demo.DEMO_SIZE, demo.DEMO_SIZE, 3)


def test_the_shipped_demo_model_is_whole_trained_and_small():
    from magicface_jax.training.init import synthetic_magicface_config

    info = checkpoint.read_info(demo.DEMO_MODEL)
    for name in ("identity_encoder", "denoiser", "vae"):
        checkpoint.verify_network(demo.DEMO_MODEL, name)
    assert info.source["trained_steps"] > 0
    assert info.default_steps < 50 and "of equal quality to UniPC 50" in info.sampling.measured
    synthetic = synthetic_magicface_config()
    assert (info.config.denoiser, info.config.identity_encoder) == (
        synthetic.denoiser,
        synthetic.identity_encoder,
    )
    assert not any(str(value).startswith("/") for value in info.source.values())  # no machine's paths
    size = sum(f.stat().st_size for f in demo.DEMO_MODEL.rglob("*") if f.is_file())
    assert size < demo.MAX_MODEL_BYTES
    assert info.config.size_multiple <= demo.DEMO_SIZE
    for k in range(demo.FACE_COUNT):
        face, background = (read(demo.DEMO_FACES / f"face_{k}{end}.png") for end in ("", "_bg"))
        assert face.shape == background.shape == (demo.DEMO_SIZE, demo.DEMO_SIZE, 3)
        person = (background == 0).all(-1)
        assert 0.1 < person.mean() < 0.7  # the person is blacked out in the condition, the scene kept
        assert (face[~person] == background[~person]).mean() > 0.9


def test_demo_assets_are_rendered_from_a_seed_and_replace_only_their_own(tmp_path):
    from magicface_jax.evaluation.synthetic import SyntheticEstimator
    from magicface_jax.training.init import synthetic_magicface_config
    from tests.random_checkpoint import write_random_checkpoint

    export = write_random_checkpoint(tmp_path / "export", synthetic_magicface_config())
    model, faces, estimator = tmp_path / "model", tmp_path / "faces", tmp_path / "estimator"
    shipped_scale = demo.face_scale()
    size = demo.write_demo_assets(
        export,
        model,
        faces,
        note="It edits brows only.",
        face_scale=shipped_scale,
        estimator=demo.SYNTHETIC_ESTIMATOR,
        estimator_dir=estimator,
        made_by="docs/recipe.md",
        sampling=checkpoint.SamplingDefault(7, "measured so"),
    )
    assert checkpoint.read_info(model).default_steps == 7
    assert 0 < size < demo.MAX_MODEL_BYTES
    assert checkpoint.read_info(model).source["demo"] == "docs/recipe.md"
    assert "(docs/recipe.md)" in demo.describe(model)
    assert demo.face_scale(model) == shipped_scale
    copied = SyntheticEstimator.load(estimator)
    assert copied.held_out() == SyntheticEstimator.load(demo.SYNTHETIC_ESTIMATOR).held_out()
    assert demo.describe(model).endswith("a person it never saw. It edits brows only.")
    for k in range(demo.FACE_COUNT):  # the shipped portraits are these, rendered again
        for end in ("", "_bg"):
            np.testing.assert_array_equal(
                read(faces / f"face_{k}{end}.png"), read(demo.DEMO_FACES / f"face_{k}{end}.png")
            )
    shipped = demo.SYNTHETIC_ESTIMATOR
    demo.write_demo_assets(export, model, faces, estimator=shipped, estimator_dir=estimator)  # replaced
    with pytest.raises(MagicFaceError, match="is the input"):
        demo.write_demo_assets(export, model, faces, estimator=estimator, estimator_dir=estimator)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for folders in ((foreign, faces, estimator), (model, foreign, estimator), (model, faces, foreign)):
        with pytest.raises(MagicFaceError, match="is a folder of other files"):
            demo.write_demo_assets(export, *folders[:2], estimator=shipped, estimator_dir=folders[2])
    assert (foreign / "notes.txt").read_text() == "mine"
    assert SyntheticEstimator.load(estimator).held_out() == copied.held_out()


def test_demo_replaces_only_its_own_output(capsys, demo_env, tmp_path):
    named = tmp_path / "mine.png"
    named.write_bytes(b"not to be lost")
    code, _, err = call(capsys, "--demo", *STEPS, "--out", named)
    assert_one_line_error(code, err, "already exists")
    assert named.read_bytes() == b"not to be lost"


def test_demo_size_is_checked_before_anything_runs(capsys, demo_env, tmp_path):
    code, _, err = call(capsys, "--demo", "--size", "72", "--out", tmp_path / "demo.png")
    assert_one_line_error(code, err, "--size is 72x72", "multiples of 16")
    assert list(tmp_path.iterdir()) == []


def _script(*argv, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def test_entry_point_exit_status_on_bad_input(tmp_path):
    result = _script("--demo", "--au", "AU3=+1", "--out", tmp_path / "x.png", env=os.environ.copy())
    assert_one_line_error(result.returncode, result.stderr, "AU3")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_entry_point_demo(tmp_path):
    out = tmp_path / "demo.png"
    result = _script("--demo", *STEPS, "--au", "AU12=+3", "--out", out, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout and out.is_file()
