"""`magicface_pairs`: AU labels, pairing, identity splits, the builder (stand-in preprocessing), the CLI."""

from __future__ import annotations

import csv
import json
import types
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from magicface_jax.cli import run
from magicface_jax.data import build, pairing
from magicface_jax.data.face_render import render_face
from magicface_jax.data.labels import read_labels
from magicface_jax.data.magicface_pairs import REPORT_NAME, MagicfacePairs, MagicfacePairsConfig, PairsSpec
from magicface_jax.data.png import decode_png
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces.aus import AU_NAMES
from magicface_jax.faces.jaw_dots import add_layer, jaw_dot_layer
from magicface_jax.faces.preprocess import NoFaceError

HEADER = ["AU01", "AU2", "AU04", "AU5", "AU6", "AU9", "au12", "AU15", "AU17", "AU20", "AU25", "AU26_r"]


def _stand_in(image, size, mask):
    """Deterministic preprocessing: resize, black centre, fixed dots; a flat image has no face."""
    if np.asarray(image).std() < 1:
        raise NoFaceError("no face found")
    face = np.asarray(Image.fromarray(image).resize((size, size)))
    landmarks = np.random.default_rng(0).uniform(0.3, 0.7, (68, 2)).astype(np.float32) * size
    background = face.copy()
    background[size // 4 :, size // 4 : 3 * size // 4] = 0
    return types.SimpleNamespace(
        face=face, background=add_layer(background, jaw_dot_layer(landmarks, size)), landmarks=landmarks
    )


def _photo(seed: int) -> np.ndarray:
    from magicface_jax.data import face_params as fp
    from magicface_jax.data.backgrounds import render_scene

    rng = np.random.default_rng(seed)
    identity, pose, scene = fp.sample_identity(rng), fp.sample_pose(rng), fp.sample_scene(rng)
    return render_face(identity, pose, fp.sample_aus(rng), render_scene(scene, 64)).image


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def folder(tmp_path):
    """6 persons x 4 images, plus a flat image (no face), a broken file, an unlabelled image and a label
    row for a missing file."""
    images = tmp_path / "images"
    rows = []
    rng = np.random.default_rng(0)
    for person in range(6):
        (images / f"person{person}").mkdir(parents=True)
        for k in range(4):
            file = f"person{person}/{k:03d}.png"
            Image.fromarray(_photo(10 * person + k)).save(images / file)
            rows.append([file, *rng.uniform(0, 5, 12).round(2)])
    Image.fromarray(np.full((48, 48, 3), 90, np.uint8)).save(images / "person0/flat.png")
    rows.append(["person0/flat.png", *[5.0] * 12])
    (images / "person1/broken.jpg").write_bytes(b"not a jpeg")
    rows.append(["person1/broken.jpg", *[5.0] * 12])
    Image.fromarray(_photo(99)).save(images / "person2/unlabelled.png")
    rows.append(["person7/missing.png", *[1.0] * 12])
    labels = _write_csv(tmp_path / "labels.csv", ["file", *HEADER], rows)
    return images, labels


def _build(tmp_path, images, labels, name="t", workers=1, **pairing_args):
    config = pairing.PairingConfig(**{"max_pairs_per_identity": 5, "test_fraction": 0.34, **pairing_args})
    spec = PairsSpec(str(images), str(labels), resolution=64, pairing=config)
    builder = MagicfacePairs(
        config=MagicfacePairsConfig(spec, name),
        data_dir=str(tmp_path / "data"),
        preprocess=_stand_in,
        workers=workers,
    )
    builder.download_and_prepare()
    return builder


def _records(builder, split):
    """Records with their text features as str (tfds returns them as bytes)."""
    source = tfds.builder_from_directory(builder.data_dir).as_data_source(split)
    text = ("identity_id", "identity_file", "target_file")
    return [{k: v.decode() if k in text else v for k, v in source[i].items()} for i in range(len(source))]


def test_plain_csv_spellings_and_identities(folder):
    images, labels_csv = folder
    labels = read_labels(labels_csv, images)
    assert len(labels.images) == 26  # 24 photos, the flat one and the broken one
    assert labels.unlabelled == ("person2/unlabelled.png",)
    assert labels.missing_files == ("person7/missing.png",)
    first = labels.images[0]
    assert first.identity == "person0" and first.aus.shape == (12,) and first.aus.dtype == np.float32


def test_plain_csv_errors_name_the_problem(tmp_path, folder):
    images, _ = folder
    with pytest.raises(MagicFaceError, match="AU26"):
        read_labels(_write_csv(tmp_path / "a.csv", ["file", *HEADER[:-1]], []), images)
    with pytest.raises(MagicFaceError, match="'file' column"):
        read_labels(_write_csv(tmp_path / "b.csv", ["image", *HEADER], []), images)
    with pytest.raises(MagicFaceError, match="identity column"):
        read_labels(_write_csv(tmp_path / "c.csv", ["file", *HEADER], []), images, identity_column="who")
    with pytest.raises(MagicFaceError, match="does not exist"):
        read_labels(tmp_path / "nothing.csv", images)
    with pytest.raises(MagicFaceError, match="labelled twice"):
        row = ["person0/000.png", *[1] * 12]
        read_labels(_write_csv(tmp_path / "d.csv", ["file", *HEADER], [row, row]), images)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(_photo(1)).save(flat / "a.png")
    with pytest.raises(MagicFaceError, match="sub-folder"):
        read_labels(_write_csv(tmp_path / "e.csv", ["file", *HEADER], [["a.png", *[1] * 12]]), flat)


def test_identity_column_and_bad_values(tmp_path, folder):
    images, _ = folder
    rows = [["person0/000.png", "ann", *[1] * 12], ["person0/001.png", "bob", *["nan"] + [1] * 11]]
    labels = read_labels(_write_csv(tmp_path / "l.csv", ["file", "who", *HEADER], rows), images, "who")
    assert [(i.file, i.identity) for i in labels.images] == [("person0/000.png", "ann")]
    assert "person0/001.png" in labels.unlabelled


def test_openface_folder(tmp_path):
    images, labels = tmp_path / "frames", tmp_path / "openface"
    (images / "clip").mkdir(parents=True)
    labels.mkdir()
    for k in range(1, 4):
        Image.fromarray(_photo(k)).save(images / "clip" / f"{k:05d}.png")
    header = ["frame", " face_id", " timestamp", " confidence", " success"]
    header += [f" AU{int(n[2:]):02d}_r" for n in AU_NAMES] + [" AU01_c"]
    rows = [[k, 0, k / 30, 0.98, 0 if k == 2 else 1, *[k] * 12, 1] for k in (1, 2, 3, 4)]
    _write_csv(labels / "clip.csv", header, rows)
    read = read_labels(labels, images)
    assert [(i.file, i.identity, float(i.aus[0])) for i in read.images] == [
        ("clip/00001.png", "clip", 1.0),
        ("clip/00003.png", "clip", 3.0),
    ]
    assert read.unlabelled == ("clip/00002.png",)  # OpenFace failed on it
    assert read.missing_files == ("clip/frame 4",)
    with pytest.raises(MagicFaceError, match="identity"):
        read_labels(labels, images, identity_column="who")


def test_splits_are_disjoint_complete_and_seeded():
    people = [f"p{i}" for i in range(20)]
    config = pairing.PairingConfig(test_fraction=0.2, validation_fraction=0.1, seed=3)
    splits = pairing.split_identities(people, config)
    assert {k: len(v) for k, v in splits.items()} == {"train": 14, "test": 4, "validation": 2}
    assert sorted(p for members in splits.values() for p in members) == sorted(people)
    assert splits == pairing.split_identities(people[::-1], config)
    assert splits != pairing.split_identities(people, pairing.PairingConfig(test_fraction=0.2, seed=4))
    with pytest.raises(MagicFaceError, match="without sharing"):
        pairing.split_identities(["only"], pairing.PairingConfig(test_fraction=0.1))
    for bad in (
        {"test_fraction": 0.7, "validation_fraction": 0.3},
        {"min_au_change": -1},
        {"max_pairs_per_identity": 0},
    ):
        with pytest.raises(MagicFaceError):
            pairing.PairingConfig(**bad)


@pytest.mark.parametrize("exhaustive", [True, False])
def test_candidate_pairs_respect_the_minimum_change(monkeypatch, exhaustive):
    if not exhaustive:
        monkeypatch.setattr(pairing, "_EXHAUSTIVE_LIMIT", 10)
        monkeypatch.setattr(pairing, "_GIVE_UP_AFTER", 2000)
    aus = np.random.default_rng(0).uniform(0, 5, (30, 12)).astype(np.float32)
    aus[:10] = 1.0  # ten identical expressions: never paired with each other
    pairs = list(pairing.candidate_pairs(aus, 1.0, np.random.default_rng(1)))
    assert len(pairs) == len(set(pairs)) and all(i != j for i, j in pairs)
    assert all(np.abs(aus[i] - aus[j]).max() >= 1.0 for i, j in pairs)
    assert not any(i < 10 and j < 10 for i, j in pairs)
    valid = sum(np.abs(aus[i] - aus[j]).max() >= 1.0 for i in range(30) for j in range(30) if i != j)
    assert len(pairs) == valid  # the sampler also finds them all, given enough draws
    assert pairs == list(pairing.candidate_pairs(aus, 1.0, np.random.default_rng(1)))


def test_build_skips_and_counts_bad_inputs_and_keeps_persons_apart(tmp_path, folder):
    images, labels = folder
    builder = _build(tmp_path, images, labels)
    report = json.loads((Path(builder.data_dir) / REPORT_NAME).read_text())
    assert report["skipped"]["no_au_labels"] == 1 and report["label_rows_without_image"] == 1
    assert report["listed"]["no_au_labels"] == ["person2/unlabelled.png"]
    train, test = _records(builder, "train"), _records(builder, "test")
    assert report["pairs"] == {"train": len(train), "test": len(test)}
    assert report["persons"] == {"train": 4, "test": 2}
    people = {split: {r["identity_id"] for r in rs} for split, rs in (("train", train), ("test", test))}
    assert not people["train"] & people["test"]
    everything = train + test
    assert all(sum(r["identity_id"] == p for r in everything) <= 5 for p in people["train"] | people["test"])
    labels_by_file = {i.file: i.aus for i in read_labels(labels, images).images}
    for record in everything:
        identity, target = record["identity_file"], record["target_file"]
        assert identity != target and identity.split("/")[0] == target.split("/")[0] == record["identity_id"]
        np.testing.assert_allclose(record["au_variation"], labels_by_file[target] - labels_by_file[identity])
        assert np.abs(record["au_variation"]).max() >= 1.0
        assert (
            decode_png(record["identity_image"]).shape
            == decode_png(record["background"]).shape
            == (64, 64, 3)
        )
        assert record["target_landmarks"].shape == (68, 2)
    used = {r[k] for r in everything for k in ("identity_file", "target_file")}
    assert not used & {"person0/flat.png", "person1/broken.jpg"}
    # a skipped image is reported only if a candidate pair needed it
    assert report["skipped"]["no_face"] == ("person0/flat.png" in str(report["listed"]["no_face"]))
    assert report["skipped"]["unreadable"] == ("person1/broken.jpg" in str(report["listed"]["unreadable"]))


def test_build_reports_every_bad_image_when_pairs_need_them(tmp_path, folder):
    images, labels = folder
    builder = _build(tmp_path, images, labels, max_pairs_per_identity=20)  # every pair is wanted
    report = builder.report.as_dict()
    assert report["skipped"] == {"no_au_labels": 1, "unreadable": 1, "no_face": 1}
    assert report["listed"]["unreadable"][0]["file"] == "person1/broken.jpg"
    assert "not an image that PIL can read" in report["listed"]["unreadable"][0]["error"]
    assert report["listed"]["no_face"] == [{"file": "person0/flat.png", "error": "no face found"}]
    assert (
        report["pairs"]["train"] + report["pairs"]["test"] == 6 * 12
    )  # 4 good images: 12 ordered pairs each
    assert "1 unreadable, 1 no face, 1 without AU labels" in builder.report.summary()


def test_build_is_deterministic_and_seeded(tmp_path, folder):
    images, labels = folder

    def pairs(builder):
        return sorted((r["identity_file"], r["target_file"]) for r in _records(builder, "train"))

    first = pairs(_build(tmp_path / "a", images, labels))
    assert first == pairs(_build(tmp_path / "b", images, labels))
    assert first != pairs(_build(tmp_path / "c", images, labels, seed=1))


@pytest.mark.slow
def test_build_with_worker_processes_matches(tmp_path, folder):
    images, labels = folder
    one = _build(tmp_path / "one", images, labels)
    two = _build(tmp_path / "two", images, labels, workers=2)
    for split in ("train", "test"):
        assert sorted(r["target_image"] for r in _records(one, split)) == sorted(
            r["target_image"] for r in _records(two, split)
        )


def test_build_without_pairs_is_an_error(tmp_path, folder):
    images, labels = folder
    with pytest.raises(MagicFaceError, match="no pairs"):
        _build(tmp_path, images, labels, min_au_change=100)
    assert not list((tmp_path / "data").rglob("*.array_record*"))


def test_missing_face_dependencies_stop_the_build_before_any_work(tmp_path, folder, monkeypatch):
    from magicface_jax.faces import detect

    monkeypatch.setattr(detect, "_MODULES", (*detect._MODULES, "a_module_that_is_not_installed"))
    images, labels = folder
    spec = PairsSpec(str(images), str(labels), resolution=64)
    builder = MagicfacePairs(config=MagicfacePairsConfig(spec), data_dir=str(tmp_path))
    with pytest.raises(MagicFaceError, match="a_module_that_is_not_installed"):
        builder.download_and_prepare()


def test_errors_other_than_no_face_are_not_skipped(tmp_path, folder):
    def broken(image, size, mask):
        raise MagicFaceError("size 64 is not supported")

    images, labels = folder
    spec = PairsSpec(str(images), str(labels), resolution=64)
    builder = MagicfacePairs(config=MagicfacePairsConfig(spec), data_dir=str(tmp_path), preprocess=broken)
    with pytest.raises(MagicFaceError, match="size 64"):
        builder.download_and_prepare()


def test_cli_builds_synthetic_faces(tmp_path, capsys):
    argv = ["synthetic_faces", "--resolution", "64", "--num-pairs", "4", "--num-test-pairs", "2"]
    assert run(build.main, [*argv, "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "synthetic_faces/64px_4x2_p4_a0.4_s0/2.0.0: test 2, train 4 examples" in out
    source = tfds.data_source("synthetic_faces/64px_4x2_p4_a0.4_s0", split="test", data_dir=str(tmp_path))
    assert len(source) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["synthetic_faces", "--num-pairs", "0"], "at least 1 train pair"),
        (["synthetic_faces", "--workers", "0"], "--workers"),
        (["magicface_pairs", "--images", "/nonexistent", "--labels", "x.csv"], "image folder /nonexistent"),
        (["magicface_pairs", "--images", ".", "--labels", "x.csv", "--resolution", "96"], "multiples of 64"),
        (["magicface_pairs", "--images", ".", "--labels", "x.csv", "--test-fraction", "1"], "fractions"),
    ],
)
def test_cli_bad_inputs_are_one_line_errors(tmp_path, capsys, argv, message):
    assert run(build.main, [*argv, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
