"""The editing helpers behind `sample.py`, without a model: edit specs, settings, inputs, sweeps, JSONL."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from magicface_jax.editing import jsonl
from magicface_jax.editing.inputs import (
    EditImages,
    EditSettings,
    check_output,
    format_edit,
    prepare_images,
    resolve_edit,
)
from magicface_jax.editing.sweep import Sweep, sweep_grid
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces import preprocess as faces
from magicface_jax.pipeline import check_seed


def pixels(size: int = 64, seed: int = 0, channels: int = 3) -> np.ndarray:
    shape = (size, size, channels) if channels > 1 else (size, size)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_resolve_edit_both_forms():
    assert resolve_edit("AU4=+4,AU1=+2") == {"AU4": 4.0, "AU1": 2.0}
    assert resolve_edit(au_test="AU4+AU1", au_variation="4+2") == {"AU4": 4.0, "AU1": 2.0}
    assert resolve_edit() is None
    assert format_edit({"AU4": 4.0, "AU12": -2.5}) == "AU4=+4, AU12=-2.5"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"au": "AU3=+2"}, ["AU3", "AU1, AU2, AU4, AU5, AU6, AU9, AU12, AU15, AU17, AU20, AU25, AU26"]),
        ({"au": "AU4=much"}, ["AU4", "'much' is not a number"]),
        ({"au": "AU4=+4", "au_test": "AU4", "au_variation": "4"}, ["not both"]),
        ({"au_test": "AU4+AU1"}, ["--AU_variation"]),
        ({"au_test": "AU4+AU1", "au_variation": "4"}, ["one value per AU"]),
    ],
)
def test_resolve_edit_errors(kwargs, words):
    with pytest.raises(MagicFaceError) as err:
        resolve_edit(**kwargs)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    ("settings", "word"),
    [({"steps": 0}, "steps"), ({"guidance": -0.5}, "guidance"), ({"sampler": "plms"}, "sampler")],
)
def test_settings_errors(settings, word):
    with pytest.raises(MagicFaceError, match=word):
        EditSettings(**settings)


def test_seed_and_output_checks(tmp_path):
    assert check_seed(424) == 424
    for bad in (-1, 2**32, True, 1.5):
        with pytest.raises(MagicFaceError, match="seed"):
            check_seed(bad)
    assert check_output(tmp_path / "a.jpg") == tmp_path / "a.jpg"
    with pytest.raises(MagicFaceError, match="unknown image format"):
        check_output(tmp_path / "a.xyz")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(MagicFaceError, match="folder"):
        check_output(tmp_path / "dir.png")
    face = tmp_path / "face.png"
    with pytest.raises(MagicFaceError, match="input"):
        check_output(face, (face,))


def test_prepare_images_checks_and_resizes():
    face, background = pixels(64, 0), pixels(64, 1)
    prepared = prepare_images(face, background, multiple=8)
    assert prepared.source is face and prepared.notes == []
    resized = prepare_images(face, background, multiple=8, size=32)
    assert resized.source.shape == resized.background.shape == (32, 32, 3)
    with pytest.raises(MagicFaceError, match="same size"):
        prepare_images(face, pixels(72, 1), multiple=8)
    with pytest.raises(MagicFaceError, match="multiples of 8"):
        prepare_images(pixels(60, 0), pixels(60, 1), multiple=8)
    with pytest.raises(MagicFaceError, match="square"):
        prepare_images(face[:48], background[:48], multiple=8, size=32)


def test_missing_background_without_preprocessing(monkeypatch):
    monkeypatch.setattr(faces, "is_available", lambda: False)
    with pytest.raises(MagicFaceError) as err:
        prepare_images(pixels(64, 0), None, multiple=8)
    assert "python -m magicface_jax.preprocess" in str(err.value)
    assert "pip install 'magicface-jax[faces]'" in str(err.value)


def test_sweep_vectors_labels_and_grid():
    sweep = Sweep.parse("AU12=-6:6:3")
    assert sweep.labels() == ["AU12 -6", "AU12 +0", "AU12 +6"]
    vectors = sweep.vectors({"AU4": 2.0, "AU12": 1.0})
    assert vectors.shape == (3, 12)
    np.testing.assert_array_equal(vectors[:, 6], [-6, 0, 6])  # AU12 overridden by the sweep
    np.testing.assert_array_equal(vectors[:, 2], [2, 2, 2])  # AU4 from the base edit
    source, short = pixels(64, 0), Sweep.parse("AU1=0:2:2")
    rows = [pixels(64, 1)[None].repeat(3, 0), pixels(64, 2)[None].repeat(2, 0)]
    grid = sweep_grid(source, [sweep, short], rows, {"AU4": 2.0})
    assert grid.shape == (2 * 64, 4 * 64, 3)
    # Labels sit in a band at the top of each tile; below it the tiles are the images.
    np.testing.assert_array_equal(grid[40:64, :64], source[40:])
    np.testing.assert_array_equal(grid[64 + 40 :, 64:128], rows[1][0][40:])
    assert (grid[64 + 40 :, 3 * 64 :] == 40).all()  # the second row has one column fewer
    assert not np.array_equal(grid[:10, 64:128], rows[0][0][:10])  # labelled


def write_jsonl(path, records) -> None:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")


def test_read_edits(tmp_path):
    edits = tmp_path / "edits.jsonl"
    write_jsonl(
        edits,
        [
            {"image": "a.png", "background": "a_bg.png", "au": {"AU12": 4, "au04": -2}, "out": "o/a.png"},
            "",
            {"image": "b.png", "au": "AU1=+2", "out": "b.jpg", "seed": 7},
        ],
    )
    first, second = jsonl.read_edits(edits, default_seed=424)
    assert first.number == 1 and second.number == 3
    assert first.image == tmp_path / "a.png" and first.background == tmp_path / "a_bg.png"
    assert (
        first.edit == {"AU12": 4.0, "AU4": -2.0} and first.seed == 424 and first.out == tmp_path / "o/a.png"
    )
    assert second.background is None and second.edit == {"AU1": 2.0} and second.seed == 7


GOOD = {"image": "a.png", "au": {"AU12": 4}, "out": "a_out.png"}


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("{not json", ["not valid JSON"]),
        ("[1, 2]", ["JSON object"]),
        ({**GOOD, "strength": 1}, ["unknown field", "strength"]),
        ({"image": "a.png", "out": "x.png"}, ["missing", "au"]),
        ({**GOOD, "au": {"AU3": 1}}, ["AU3", "AU26"]),
        ({**GOOD, "au": {"AU12": "big"}}, ["AU12", "not a number"]),
        ({**GOOD, "au": {"AU12": 1, "AU012": 2}}, ["twice"]),
        ({**GOOD, "au": []}, ['"au"']),
        ({**GOOD, "image": 3}, ['"image"']),
        ({**GOOD, "out": "a.doc"}, ["unknown image format"]),
        ({**GOOD, "seed": -3}, ["seed"]),
        ({**GOOD, "out": "a.png"}, ["is the input"]),
    ],
)
def test_read_edits_errors_name_the_line(tmp_path, line, words):
    edits = tmp_path / "edits.jsonl"
    write_jsonl(edits, [{**GOOD, "out": "first.png"}, line])
    with pytest.raises(MagicFaceError) as err:
        jsonl.read_edits(edits, 0)
    assert f"{edits} line 2: " in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_read_edits_file_errors(tmp_path):
    with pytest.raises(MagicFaceError, match="not found"):
        jsonl.read_edits(tmp_path / "none.jsonl", 0)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(MagicFaceError, match="no edits"):
        jsonl.read_edits(empty, 0)
    twice = tmp_path / "twice.jsonl"
    write_jsonl(twice, [GOOD, {**GOOD, "au": "AU1=1"}])
    with pytest.raises(MagicFaceError, match=r"line 2: writes .* as line 1 does"):
        jsonl.read_edits(twice, 0)


def test_load_edit_images_reads_each_file_once_and_names_the_line(tmp_path):
    Image.fromarray(pixels(64, 0)).save(tmp_path / "a.png")
    Image.fromarray(pixels(64, 1)).save(tmp_path / "a_bg.png")
    Image.fromarray(pixels(72, 2)).save(tmp_path / "big_bg.png")
    edits = tmp_path / "edits.jsonl"
    records = [{**GOOD, "background": "a_bg.png", "out": f"{i}.png"} for i in range(2)]
    write_jsonl(edits, records)
    lines = jsonl.read_edits(edits, 0)
    images, notes = jsonl.load_edit_images(edits, lines, multiple=8)
    assert images[0] is images[1] and notes == []
    write_jsonl(edits, [*records, {**GOOD, "background": "big_bg.png", "out": "2.png"}])
    with pytest.raises(MagicFaceError, match="line 3: image is 64x64 but background is 72x72"):
        jsonl.load_edit_images(edits, jsonl.read_edits(edits, 0), multiple=8)


def test_plan_batches_groups_sizes_and_fills_the_devices():
    small, large = EditImages(pixels(64), pixels(64)), EditImages(pixels(72), pixels(72))
    images = [small, large, small, small, small, large, small]
    assert jsonl.plan_batches(images, batch_size=2, num_devices=1) == [
        ([0, 2], 2),
        ([3, 4], 2),
        ([6], 2),
        ([1, 5], 2),
    ]
    # Batches are a multiple of the device count, and no larger than needed.
    assert jsonl.plan_batches(images, batch_size=3, num_devices=2) == [
        ([0, 2, 3, 4], 4),
        ([6], 4),
        ([1, 5], 2),
    ]
    assert jsonl.plan_batches([small], batch_size=1, num_devices=8) == [([0], 8)]
