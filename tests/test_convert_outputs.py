"""`convert_weights.py` never writes over its inputs or over folders that are not its own, checks where it
writes before reading any weight, and a write that fails late is one line with nothing left behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

import convert_weights
from magicface_jax import checkpoint, cli
from magicface_jax.convert import convert
from magicface_jax.convert.convert import EXPORT_MANIFEST


def convert_cli(capsys, *argv) -> tuple[int, str]:
    code = cli.run(convert_weights.main, [str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    for word in words:
        assert word in err, err


def tree(folder: Path) -> dict[str, int]:
    """Every file under `folder` with its size: what a command must leave as it was."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def no_weights_read(monkeypatch):
    """Reading any weights fails the test: the checks must come first."""

    def fail(*args, **kwargs):
        raise AssertionError("weights were read before the output was checked")

    monkeypatch.setattr(convert, "read_sd", fail)
    monkeypatch.setattr(checkpoint, "read_params", fail)


@pytest.mark.usefixtures("no_weights_read")
def test_output_containing_the_input_is_refused_and_the_input_kept(capsys, sd_folder, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(sd_folder, work / "sd")
    before = tree(work)
    code, err = convert_cli(capsys, "--sd", work / "sd", "--out", work, "--overwrite")
    assert_one_line_error(code, err, f"output {work} contains the input {work / 'sd'}")
    assert tree(work) == before


@pytest.mark.usefixtures("no_weights_read")
def test_output_inside_an_input_is_refused(capsys, sd_folder, release_folder, converted, tmp_path):
    code, err = convert_cli(capsys, "--sd", sd_folder, "--magicface", release_folder,
                            "--out", release_folder / "ckpt")  # fmt: skip
    assert_one_line_error(code, err, "lies inside the input", str(release_folder))
    code, err = convert_cli(
        capsys, "--to-pytorch", "--checkpoint", converted, "--out", converted, "--overwrite"
    )
    assert_one_line_error(code, err, f"output {converted} is the input")
    assert not (release_folder / "ckpt").exists() and (converted / checkpoint.MANIFEST).is_file()


@pytest.mark.usefixtures("no_weights_read")
def test_overwrite_refuses_a_folder_that_is_not_ours(capsys, sd_folder, converted, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_text("mine")
    for argv in (("--sd", sd_folder), ("--to-pytorch", "--checkpoint", converted)):
        code, err = convert_cli(capsys, *argv, "--out", out, "--overwrite")
        assert_one_line_error(code, err, "only an empty folder or an earlier output")
    assert tree(out) == {"holiday.jpg": 4}


@pytest.mark.usefixtures("no_weights_read")
def test_output_location_is_checked_before_the_weights(capsys, sd_folder, converted, tmp_path):
    (tmp_path / "file").write_text("x")
    code, err = convert_cli(capsys, "--sd", sd_folder, "--out", tmp_path / "file" / "ckpt")
    assert_one_line_error(code, err, "is a file, not a folder")
    code, err = convert_cli(capsys, "--sd", sd_folder, "--out", tmp_path / "file", "--overwrite")
    assert_one_line_error(code, err, "is a file: give a folder")
    code, err = convert_cli(
        capsys, "--to-pytorch", "--checkpoint", tmp_path / "file", "--out", tmp_path / "o"
    )
    assert_one_line_error(code, err, "is a file", checkpoint.MANIFEST)


@pytest.mark.parametrize("version", [checkpoint.FORMAT, checkpoint.BEFORE_CHECKSUMS])
def test_overwrite_replaces_an_earlier_checkpoint(capsys, sd_folder, converted, tmp_path, version):
    out = tmp_path / "ckpt"
    shutil.copytree(converted, out)
    manifest = json.loads((out / checkpoint.MANIFEST).read_text())
    (out / checkpoint.MANIFEST).write_text(json.dumps({**manifest, "format": version}))
    (out / "stale.txt").write_text("from the earlier run")
    code, err = convert_cli(capsys, "--sd", sd_folder, "--out", out, "--overwrite")
    assert code == 0, err
    assert not (out / "stale.txt").exists() and checkpoint.read_info(out).source["initialised_from_sd"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # not tempfile's 0700
    modes = {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert modes == {0o666 & ~umask}  # orbax's files and the manifest too


def test_overwrite_replaces_an_earlier_export(capsys, converted, tmp_path):
    out = tmp_path / "pytorch"
    assert convert_cli(capsys, "--to-pytorch", "--checkpoint", converted, "--out", out)[0] == 0
    assert (out / EXPORT_MANIFEST).is_file()
    code, err = convert_cli(capsys, "--to-pytorch", "--checkpoint", converted, "--out", out)
    assert_one_line_error(code, err, "already exists", "--overwrite")
    code, err = convert_cli(capsys, "--to-pytorch", "--checkpoint", converted, "--out", out, "--overwrite")
    assert code == 0, err


def test_a_late_write_failure_is_one_line_and_leaves_nothing(capsys, sd_folder, tmp_path, monkeypatch):
    def disk_full(self, name, params):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.CheckpointWriter, "write_params", disk_full)
    out = tmp_path / "ckpt"
    code, err = convert_cli(capsys, "--sd", sd_folder, "--out", out)
    assert_one_line_error(code, err, f"cannot write {out}", "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_a_killed_conversion_are_removed(capsys, sd_folder, tmp_path):
    leftover = tmp_path / ".ckpt.partial-0badc0de"
    (leftover / "vae").mkdir(parents=True)
    code, err = convert_cli(capsys, "--sd", sd_folder, "--out", tmp_path / "ckpt")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
