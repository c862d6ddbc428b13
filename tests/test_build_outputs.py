"""`python -m magicface_jax.data.build` checks where the dataset goes before any work: never inside its
inputs, one build of a dataset at a time, and an interrupted build's partial folder removed by the next."""

from __future__ import annotations

from pathlib import Path

import pytest

from magicface_jax import atomic
from magicface_jax.cli import run
from magicface_jax.data import build
from magicface_jax.data.synthetic_faces import SyntheticFaces

SYNTHETIC = ["synthetic_faces", "--resolution", "64", "--num-pairs", "2", "--num-test-pairs", "1"]
SYNTHETIC_FOLDER = Path("synthetic_faces", "64px_2x1_p4_a0.4_s0", str(SyntheticFaces.VERSION))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture
def frames(tmp_path) -> tuple[Path, Path]:
    images = tmp_path / "frames"
    (images / "person").mkdir(parents=True)
    labels = tmp_path / "labels.csv"
    labels.write_text("file,AU1,AU2,AU4,AU5,AU6,AU9,AU12,AU15,AU17,AU20,AU25,AU26\n")
    return images, labels


def test_a_dataset_inside_its_images_is_refused(tmp_path, capsys, frames):
    images, labels = frames
    argv = ["magicface_pairs", "--images", str(images), "--labels", str(labels), "--resolution", "64"]
    assert run(build.main, [*argv, "--data-dir", str(images / "tfds")]) == 2
    assert "lies inside the input" in one_line_error(capsys)
    assert sorted(p.name for p in images.iterdir()) == ["person"]


def test_a_data_dir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert run(build.main, [*SYNTHETIC, "--data-dir", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in one_line_error(capsys)


def test_a_second_build_of_one_dataset_is_refused(tmp_path, capsys):
    output = tmp_path / SYNTHETIC_FOLDER
    output.parent.mkdir(parents=True)
    with atomic.exclusive(output):
        assert run(build.main, [*SYNTHETIC, "--data-dir", str(tmp_path)]) == 2
    assert "another command is writing" in one_line_error(capsys)
    assert not output.exists()


def test_an_interrupted_build_is_cleaned_up_by_the_next(tmp_path, capsys):
    leftover = tmp_path / SYNTHETIC_FOLDER.parent / f"incomplete.ABC123_{SYNTHETIC_FOLDER.name}"
    (leftover / "half").mkdir(parents=True)
    other = tmp_path / SYNTHETIC_FOLDER.parent / "incomplete.ABC123_0.9.0"  # another version's: kept
    other.mkdir()
    assert run(build.main, [*SYNTHETIC, "--data-dir", str(tmp_path)]) == 0
    assert f"removed {leftover}" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / SYNTHETIC_FOLDER.parent).iterdir()) == [
        SYNTHETIC_FOLDER.name,
        other.name,
    ]


def test_a_face_scale_out_of_range_is_refused_before_anything_is_written(tmp_path, capsys):
    assert run(build.main, [*SYNTHETIC, "--face-scale", "2", "--data-dir", str(tmp_path / "tfds")]) == 2
    assert "the face scale must be in [0.5, 1.6], got 2.0" in one_line_error(capsys)
    assert not (tmp_path / "tfds").exists()
