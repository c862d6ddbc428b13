"""The output rules of `magicface_jax.atomic`, which every command and library writer follows: never over
an input, replace only what is ours, one writer at a time, whole or not at all, the user's umask."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from magicface_jax import atomic
from magicface_jax.errors import MagicFaceError
from magicface_jax.images import load_image, save_image

ROOT = Path(__file__).resolve().parents[1]
OURS = atomic.Manifest("ours.json", ("ours/1", "ours/2"))
MANIFEST = OURS.name


def write_manifest(folder: Path, format: str = "ours/2") -> None:
    (folder / MANIFEST).write_text(json.dumps({"format": format}))


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def write_folder(path: str | Path, overwrite: bool = False, **kwargs) -> Path:
    with atomic.atomic_directory(path, overwrite, manifest=OURS, **kwargs) as partial:
        write_manifest(partial)
        (partial / "data.txt").write_text("new")
    return Path(path)


def start(script: str, *argv) -> subprocess.Popen:
    """`script` in a fresh interpreter that imports this checkout's package."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", script, *map(str, argv)]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# ---------------------------------------------------------------------------------------- the checks


@pytest.mark.parametrize(
    ("output", "source", "relation"),
    [
        ("data", "data", "is the input"),
        ("data/out", "data", "lies inside the input"),
        ("parent", "parent/data", "contains the input"),
    ],
)
def test_an_output_touching_an_input_is_refused(tmp_path, output, source, relation):
    (tmp_path / source).mkdir(parents=True)
    (tmp_path / source / "keep.txt").write_text("mine")
    with pytest.raises(MagicFaceError, match=relation):
        write_folder(tmp_path / output, overwrite=True, inputs=(tmp_path / source,))
    assert (tmp_path / source / "keep.txt").read_text() == "mine"


def test_an_input_reached_through_a_link_is_still_an_input(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    with pytest.raises(MagicFaceError, match="lies inside the input"):
        atomic.check_output(tmp_path / "link" / "out", (tmp_path / "data",), folder=True)


def test_existing_outputs_are_kept_without_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "image.png").write_text("mine")
    for path in (tmp_path / "out", tmp_path / "image.png"):
        with pytest.raises(MagicFaceError, match=r"already exists.*--overwrite"):
            atomic.check_output(path, folder=path.is_dir())
    assert (tmp_path / "image.png").read_text() == "mine"


def test_overwrite_replaces_only_an_empty_folder_or_an_earlier_output(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(MagicFaceError, match="only an empty folder or an earlier output"):
        write_folder(other, overwrite=True)
    assert entries(other) == ["keep.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert (write_folder(empty, overwrite=True) / "data.txt").read_text() == "new"

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    write_manifest(earlier, "ours/1")  # an earlier version's output
    (earlier / "old.txt").write_text("old")
    write_folder(earlier, overwrite=True)
    assert entries(earlier) == ["data.txt", MANIFEST]
    assert entries(tmp_path) == ["earlier", "empty", "other"]  # nothing left beside them


@pytest.mark.parametrize("content", [b'{"format": "theirs/1"}', b"{}", b"[1]", b"not json", b"\xff\xfe"])
def test_a_manifest_name_without_our_format_is_not_ours(tmp_path, content):
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / MANIFEST).write_bytes(content)
    with pytest.raises(MagicFaceError, match="only an empty folder or an earlier output"):
        write_folder(folder, overwrite=True)
    assert entries(folder) == [MANIFEST]


def test_the_wrong_kind_of_output_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(MagicFaceError, match="is a file: give a folder"):
        atomic.check_output(tmp_path / "file", folder=True, overwrite=True)
    with pytest.raises(MagicFaceError, match="is a folder: give a file"):
        atomic.check_output(tmp_path / "folder", overwrite=True)


def test_an_output_under_a_file_or_an_unwritable_folder_is_refused(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(MagicFaceError, match="is a file, not a folder"):
        atomic.check_output(tmp_path / "file" / "sub" / "out.png")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # tests may run as root, who may write
    with pytest.raises(MagicFaceError, match="no permission to write into"):
        atomic.check_output(tmp_path / "new" / "out.png")
    assert entries(tmp_path) == ["file"]


def test_tilde_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert atomic.check_output("~/out.png") == tmp_path / "out.png"
    save_image(np.zeros((8, 8, 3), np.uint8), "~/out.png")
    assert load_image("~/out.png").shape == (8, 8, 3)


# ------------------------------------------------------------------------------------------- writing


def test_a_path_that_appears_meanwhile_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    appeared = pytest.raises(MagicFaceError, match="appeared while this command ran")
    with appeared, atomic.atomic_directory(out, manifest=OURS) as partial:
        (partial / "data.txt").write_text("new")
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")
    assert entries(out) == ["theirs.txt"]
    image = tmp_path / "image.png"
    appeared = pytest.raises(MagicFaceError, match="appeared while this command ran")
    with appeared, atomic.atomic_file(image) as partial:
        partial.write_text("new")
        image.write_text("theirs")
    assert image.read_text() == "theirs"
    assert entries(tmp_path) == ["image.png", "out"]


def test_a_second_writer_of_one_output_is_refused(tmp_path):
    out = tmp_path / "out"
    with atomic.atomic_directory(out, manifest=OURS) as partial:
        write_manifest(partial)
        with pytest.raises(MagicFaceError, match="another command is writing"):
            write_folder(out)
    assert entries(out) == [MANIFEST]


def test_two_processes_writing_one_output(tmp_path):
    """Two processes write one file at once: one succeeds, the other gets the one-line error."""
    script = (
        "import sys, time\n"
        "from magicface_jax import atomic, cli\n"
        "def main(argv):\n"
        "    with atomic.atomic_file(sys.argv[1]) as partial:\n"
        "        partial.write_text(sys.argv[2])\n"
        "        time.sleep(2)\n"
        "sys.exit(cli.run(main, []))\n"
    )
    out = tmp_path / "out.txt"
    runs = [start(script, out, name) for name in ("first", "second")]
    results = [(run.wait(timeout=60), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    errors = [err for code, err in results if code == 2]
    assert errors[0].startswith("error: ") and errors[0].count("\n") == 1
    assert "another command is writing" in errors[0] or "appeared while" in errors[0]
    assert out.read_text() in ("first", "second")
    assert entries(tmp_path) == ["out.txt"]


def test_leftovers_of_a_killed_run_are_removed(tmp_path):
    out = tmp_path / "ckpt"
    (tmp_path / ".ckpt.partial-0badc0de").mkdir()
    (tmp_path / ".ckpt.partial-0badc0de" / "half.bin").write_text("half")
    (tmp_path / ".ckpt.partial-x.partial-0badc0de").mkdir()  # another output's: kept
    write_folder(out)
    assert entries(tmp_path) == [".ckpt.partial-x.partial-0badc0de", "ckpt"]


def test_a_killed_writer_leaves_the_output_to_the_next_one(tmp_path):
    """A writer killed mid-way leaves its partial output and no lock; the next run removes the partial."""
    script = (
        "import os, sys\n"
        "from magicface_jax import atomic\n"
        "with atomic.atomic_directory(sys.argv[1]) as partial:\n"
        "    (partial / 'half.bin').write_text('half')\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    out = tmp_path / "ckpt"
    assert start(script, out).wait(timeout=60) == -9
    assert any(name.startswith(".ckpt.partial-") for name in entries(tmp_path))
    write_folder(out)
    assert entries(tmp_path) == ["ckpt"]  # the partial and the dead writer's lock file are gone


def test_a_failing_write_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    refused = pytest.raises(MagicFaceError, match=r"cannot write .*No space left on device; nothing of it")
    with refused, atomic.atomic_directory(out) as partial:
        (partial / "a.bin").write_text("a")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert entries(tmp_path) == []


@pytest.mark.usefixtures("umask_022")
def test_outputs_follow_the_umask(tmp_path):
    image = tmp_path / "image.png"
    save_image(np.zeros((8, 8, 3), np.uint8), image)
    folder = write_folder(tmp_path / "folder")
    assert stat.S_IMODE(image.stat().st_mode) == 0o644
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    os.umask(0o027)
    save_image(np.zeros((8, 8, 3), np.uint8), tmp_path / "private.png")
    assert stat.S_IMODE((tmp_path / "private.png").stat().st_mode) == 0o640
