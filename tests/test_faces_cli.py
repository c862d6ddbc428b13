"""`python -m magicface_jax.preprocess`: the files it writes, and the one-line errors with exit status 2."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from magicface_jax import preprocess as cli
from magicface_jax.assets import AUTHORS_EXAMPLES
from magicface_jax.cli import run
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces.preprocess import is_available

pytestmark = [
    pytest.mark.skipif(not is_available(), reason="needs the faces extra: pip install '.[faces]'"),
    pytest.mark.xdist_group("faces"),
]

EXAMPLE = AUTHORS_EXAMPLES / "00381.png"


def call(capsys, *argv: str) -> tuple[int, str, str]:
    code = run(cli.main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]


def test_writes_face_and_background(tmp_path, capsys):
    out = tmp_path / "out" / "nested"
    code, stdout, err = call(capsys, "--image", str(EXAMPLE), "--out", str(out), "--size", "256")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["background.png", "face.png"]
    for name in ("face.png", "background.png"):
        with Image.open(out / name) as image:
            assert image.size == (256, 256) and image.mode == "RGB"
    background = np.asarray(Image.open(out / "background.png"))
    assert 0.3 < (background.max(-1) == 0).mean() < 0.9
    assert "face.png" in stdout


def test_rgba_input_and_face_mask(tmp_path, capsys):
    rgba = tmp_path / "face.png"
    Image.open(EXAMPLE).convert("RGBA").save(rgba)
    code, _, err = call(capsys, "--image", str(rgba), "--out", str(tmp_path / "out"), "--mask", "face")
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "out" / "face.png")).shape == (512, 512, 3)


def test_no_face_exits_2_and_writes_nothing(tmp_path, capsys):
    plain = tmp_path / "wall.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))).save(plain)
    out = tmp_path / "out"
    code, _, err = call(capsys, "--image", str(plain), "--out", str(out))
    assert_one_line_error(code, err, "no face found")
    assert not out.exists()


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"])
def test_unreadable_files_exit_2(tmp_path, capsys, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    code, _, err = call(capsys, "--image", str(bad), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, str(bad))
    assert not (tmp_path / "out").exists()


def test_truncated_image_exits_2(tmp_path, capsys):
    data = EXAMPLE.read_bytes()
    bad = tmp_path / "cut.png"
    bad.write_bytes(data[: len(data) // 2])
    code, _, err = call(capsys, "--image", str(bad), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "cannot read image")


def test_missing_image_and_folder_exit_2(tmp_path, capsys):
    code, _, err = call(capsys, "--image", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "image not found", "nope.jpg")
    code, _, err = call(capsys, "--image", str(tmp_path), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "is not a file")


def test_out_is_a_file_exits_2(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    code, _, err = call(capsys, "--image", str(EXAMPLE), "--out", str(target))
    assert_one_line_error(code, err, "is a file")


def test_bad_size_exits_2(tmp_path, capsys):
    code, _, err = call(capsys, "--image", str(EXAMPLE), "--out", str(tmp_path / "o"), "--size", "300")
    assert_one_line_error(code, err, "multiples of 64")


def test_bad_mask_is_a_one_line_error(tmp_path, capsys):
    assert run(cli.main, ["--image", str(EXAMPLE), "--out", str(tmp_path / "out"), "--mask", "hair"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "hair" in err
    assert not (tmp_path / "out").exists()


def test_nothing_half_written_when_a_write_fails(tmp_path, monkeypatch):
    """If the second image cannot be written, the first is not left behind either."""
    saves = []
    original = Image.Image.save

    def failing_save(self, fp, *args, **kwargs):
        saves.append(fp)
        if len(saves) == 2:
            raise OSError(28, "No space left on device")
        return original(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    pixels = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(MagicFaceError, match="No space left"):
        cli._write_pngs(tmp_path, {"face.png": pixels, "background.png": pixels})
    assert list(tmp_path.iterdir()) == []


def test_runs_as_a_module(tmp_path):
    """The real entry point, in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-m", "magicface_jax.preprocess", "--image", str(tmp_path / "x.png"), "--out", "o"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: image not found: {tmp_path / 'x.png'}"


def _not_called(*args, **kwargs):
    raise AssertionError("the photo was preprocessed before the outputs were checked")


def test_an_output_that_is_the_input_is_refused(tmp_path, capsys, monkeypatch):
    from magicface_jax.faces import preprocess as faces

    monkeypatch.setattr(faces, "preprocess_image", _not_called)
    photo = tmp_path / "face.png"
    photo.write_bytes(EXAMPLE.read_bytes())
    code, _, err = call(capsys, "--image", str(photo), "--out", str(tmp_path), "--overwrite")
    assert_one_line_error(code, err, f"output {photo} is the input")
    assert photo.read_bytes() == EXAMPLE.read_bytes()


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, capsys, monkeypatch):
    from magicface_jax.faces import preprocess as faces

    out = tmp_path / "out"
    out.mkdir()
    (out / "background.png").write_text("an earlier result")
    with monkeypatch.context() as patch:
        patch.setattr(faces, "preprocess_image", _not_called)
        code, _, err = call(capsys, "--image", str(EXAMPLE), "--out", str(out))
    assert_one_line_error(code, err, "background.png already exists", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["background.png"]
    code, _, err = call(capsys, "--image", str(EXAMPLE), "--out", str(out), "--size", "128", "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["background.png", "face.png"]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("face.png", "background.png"):
        assert Image.open(out / name).size == (128, 128)
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask


def test_out_under_a_file_exits_2_before_any_work(tmp_path, capsys, monkeypatch):
    from magicface_jax.faces import preprocess as faces

    monkeypatch.setattr(faces, "preprocess_image", _not_called)
    (tmp_path / "taken").write_text("x")
    code, _, err = call(capsys, "--image", str(EXAMPLE), "--out", str(tmp_path / "taken" / "sub"))
    assert_one_line_error(code, err, "is a file, not a folder")
