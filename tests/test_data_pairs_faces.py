"""`magicface_pairs` built with the real face preprocessing from the authors' example faces."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from magicface_jax.assets import AUTHORS_EXAMPLES
from magicface_jax.data.magicface_pairs import MagicfacePairs, MagicfacePairsConfig, PairsSpec
from magicface_jax.data.pairing import PairingConfig
from magicface_jax.data.png import decode_png
from magicface_jax.faces.jaw_dots import JAW_COLOURS
from magicface_jax.faces.preprocess import is_available, preprocess_image
from magicface_jax.images import load_image

NAMES = ("00381", "00512")

pytestmark = pytest.mark.skipif(not is_available(), reason="face preprocessing dependencies not installed")


@pytest.mark.slow
def test_build_from_the_authors_faces(tmp_path):
    """Each person: the example face and its mirror image; one person also has an image without a face,
    another an unreadable file."""
    images = tmp_path / "images"
    rows = []
    for k, name in enumerate(NAMES):
        folder = images / f"person{name}"
        folder.mkdir(parents=True)
        face = load_image(AUTHORS_EXAMPLES / f"{name}.png")
        Image.fromarray(face).save(folder / "a.png")
        Image.fromarray(np.ascontiguousarray(face[:, ::-1])).save(folder / "b.png")
        rows += [[f"person{name}/a.png", *[k] * 12], [f"person{name}/b.png", *[k + 2.5] * 12]]
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(images / "person00512" / "wall.png")
    rows.append(["person00512/wall.png", *[5] * 12])
    (images / "person00381" / "broken.png").write_bytes(b"\x89PNG but not really")
    rows.append(["person00381/broken.png", *[5] * 12])
    labels = tmp_path / "labels.csv"
    header = ["file", *(f"AU{n}" for n in (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26))]
    with labels.open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])

    config = PairingConfig(max_pairs_per_identity=4, test_fraction=0.5)
    spec = PairsSpec(str(images), str(labels), resolution=256, pairing=config)
    builder = MagicfacePairs(config=MagicfacePairsConfig(spec), data_dir=str(tmp_path / "data"))
    builder.download_and_prepare()  # the real preprocessing: no `preprocess` given

    report = builder.report.as_dict()
    assert report["pairs"] == {"train": 2, "test": 2} and report["persons"] == {"train": 1, "test": 1}
    assert report["skipped"] == {"no_au_labels": 0, "unreadable": 1, "no_face": 1}
    assert report["listed"]["no_face"][0]["file"] == "person00512/wall.png"
    assert "no face found" in report["listed"]["no_face"][0]["error"]

    records = []
    for split in ("train", "test"):
        source = tfds.builder_from_directory(builder.data_dir).as_data_source(split)
        records += [source[i] for i in range(len(source))]
    for record in records:
        background = decode_png(record["background"])
        assert 0.3 < (background.max(-1) == 0).mean() < 0.8  # the person is black
        assert (np.abs(background.astype(int) - JAW_COLOURS[0]).max(-1) < 40).any()  # the first jaw dot
        np.testing.assert_allclose(np.abs(record["au_variation"]), 2.5)
    for record in records[:: len(records) - 1]:  # the stored crop and condition are the preprocessing's
        target_file = images / record["target_file"].decode()
        expected = preprocess_image(load_image(target_file), size=256)
        np.testing.assert_array_equal(decode_png(record["target_image"]), expected.face)
        np.testing.assert_array_equal(decode_png(record["background"]), expected.background)
        np.testing.assert_allclose(record["target_landmarks"], expected.landmarks, atol=1e-4)
