"""The synthetic estimator, the VAE study's measurements, and evaluate.py end to end on a tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from magicface_jax.cli import run
from magicface_jax.data.synthetic_faces import SyntheticFaces, SyntheticFacesConfig, SyntheticFacesSpec
from magicface_jax.errors import MagicFaceError
from magicface_jax.evaluation import synthetic, vae_study
from magicface_jax.evaluation.regions import part_box
from magicface_jax.faces.aus import AU_NAMES, au_index
from magicface_jax.training import autoencoder

TINY = synthetic.RegressorConfig(input_size=32, widths=(8, 16), hidden=16, batch_size=4)
SPEC = SyntheticFacesSpec(resolution=64, train_pairs=2, test_pairs=3, pairs_per_identity=1, seed=5)


@pytest.fixture(scope="session")
def tiny_estimator(tmp_path_factory):
    """A regressor trained for a few steps on two pairs, saved: enough to exercise every interface."""
    train = synthetic.labelled_images(synthetic.rendered_records(SPEC, "train", 2))
    test = synthetic.labelled_images(synthetic.rendered_records(SPEC, "test", 2))
    estimator = synthetic.train_estimator(TINY, train, test, steps=3, log=lambda _: None)
    directory = tmp_path_factory.mktemp("estimator") / "estimator"
    estimator.save(directory)
    return directory, estimator, test


def test_estimator_reads_every_factor_and_survives_a_round_trip(tiny_estimator):
    directory, estimator, test = tiny_estimator
    loaded = synthetic.SyntheticEstimator.load(directory)
    assert loaded.config == TINY
    np.testing.assert_allclose(loaded.aus(test.images), estimator.aus(test.images), atol=1e-5)
    assert loaded.aus(test.images).shape == (4, 12)
    assert loaded.embed(test.images).shape == (4, len(test.targets["identity"][0]))
    pose = loaded.pose(test.images)
    assert pose.shape == (4, 3) and (pose[:, 1] == 0).all()  # the synthetic world has no pitch
    held_out = loaded.held_out()
    for key in ("au_mse", "au_mse_constant", "pose_rmse_degrees", "id_l2_same_person"):
        assert np.isfinite(held_out[key])
    with pytest.raises(MagicFaceError, match="already exists"):
        estimator.save(directory)
    with pytest.raises(MagicFaceError, match="no synthetic estimator"):
        synthetic.SyntheticEstimator.load(directory.parent)


def test_labelled_images_carry_both_images_truth():
    records = synthetic.rendered_records(SPEC, "test", 1)
    data = synthetic.labelled_images(records)
    assert data.images.shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(data.targets["aus"][1], records[0]["target_aus"])
    assert data.targets["pose"][0, 0] == pytest.approx(float(records[0]["factors"]["identity_pose"]["yaw"]))
    assert data.targets["pose"][1, 1] == pytest.approx(
        float(records[0]["factors"]["target_pose"]["rotation"])
    )
    np.testing.assert_array_equal(data.targets["identity"][0], data.targets["identity"][1])
    assert data.person[0] == data.person[1]


def test_the_estimators_crop_holds_the_faces_of_its_world():
    """Every landmark (brows to chin, where the AUs act) in the image of a world's faces lies in its crop
    (at 1.4 a chin can leave the image)."""
    assert synthetic.face_crop(1.0) == synthetic.RegressorConfig().crop
    for scale in (1.0, 1.4):
        left, top, right, bottom = (64 * f for f in synthetic.face_crop(scale))
        records = synthetic.rendered_records(SyntheticFacesSpec(resolution=64, face_scale=scale), "train", 8)
        points = np.concatenate([r[k] for r in records for k in ("identity_landmarks", "target_landmarks")])
        points = points[((points >= 0) & (points < 64)).all(1)]
        assert (left <= points[:, 0]).all() and (points[:, 0] < right).all()
        assert (top <= points[:, 1]).all() and (points[:, 1] < bottom).all()


def test_au_probe_changes_only_its_part_and_a_perfect_vae_keeps_it_all():
    probe = vae_study.au_probe("AU12", 64, 2)
    change = np.abs(probe.high.astype(int) - probe.low).sum(-1)
    assert change.any()
    survival = vae_study.au_survival(probe, lambda images: images)
    assert survival["part"] == "mouth" and survival["vae_error"] == 0 and survival["kept"] == 1
    blurred = vae_study.au_survival(probe, lambda images: np.full_like(images, 128))
    assert blurred["kept"] <= 0 and blurred["vae_error"] > blurred["change"]
    assert "estimated_kept" not in blurred  # only with an AU estimator


def test_the_estimator_reads_what_a_vae_keeps_of_an_au():
    """A reader whose AU12 is the mouth's brightness, constructed: it sees the whole change through a
    perfect VAE, none through one that returns grey, and half through one that halves the contrast."""
    probe = vae_study.au_probe("AU12", 64, 2)
    box = part_box(probe.landmarks[0], "mouth", 64)

    def read_aus(images):
        found = np.zeros((len(images), 12))
        found[:, au_index("AU12")] = images[:, box[0] : box[1], box[2] : box[3]].astype(float).mean((1, 2, 3))
        return found

    def halve(images):
        return np.round(128 + 0.5 * (images.astype(float) - 128)).astype(np.uint8)

    whole = vae_study.au_survival(probe, lambda images: images, read_aus)
    assert whole["estimated_kept"] == 1 and whole["estimated_change"] != 0
    assert whole["estimated_change_reconstructed"] == whole["estimated_change"]
    grey = vae_study.au_survival(probe, lambda images: np.full_like(images, 128), read_aus)
    assert grey["estimated_kept"] == 0 and grey["estimated_change_reconstructed"] == 0
    half = vae_study.au_survival(probe, halve, read_aus)
    assert half["estimated_kept"] == pytest.approx(0.5, abs=0.02)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    SyntheticFaces(config=SyntheticFacesConfig(SPEC), data_dir=str(data_dir)).download_and_prepare()
    return data_dir


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory):
    from tests.random_checkpoint import write_random_checkpoint

    directory = tmp_path_factory.mktemp("ckpt") / "demo"
    write_random_checkpoint(directory)
    return directory


@pytest.fixture(autouse=True)
def _one_device(monkeypatch):
    """A batch of two would otherwise be padded to run on each of the 8 virtual devices."""
    import jax

    from magicface_jax.parallel.mesh import data_mesh
    from magicface_jax.pipeline import MagicFacePipeline

    load = MagicFacePipeline.from_pretrained.__func__
    monkeypatch.setattr(
        MagicFacePipeline,
        "from_pretrained",
        classmethod(lambda cls, directory: load(cls, directory, mesh=data_mesh(jax.devices()[:1]))),
    )


def _evaluate(*args):
    import evaluate

    return run(evaluate.main, [str(a) for a in args])


@pytest.mark.slow
def test_evaluate_runs_on_a_tiny_checkpoint_and_measures_the_baseline_exactly(
    tmp_path, tiny_dataset, tiny_estimator, demo_checkpoint, capsys
):
    report_path = tmp_path / "report.json"
    edits = tmp_path / "edits"
    argv = ["--checkpoint", demo_checkpoint, "--dataset", f"synthetic_faces/{SPEC.name}"]
    argv += ["--data-dir", tiny_dataset, "--estimator", tiny_estimator[0], "--num", 2, "--steps", 2]
    argv += ["--json", report_path, "--save-edits", edits, "--reference", "unipc:3:3"]
    assert _evaluate(*argv) == 0
    out = capsys.readouterr().out
    assert "no edit (source returned): AU MSE" in out and "unipc_s2_g3: AU MSE" in out
    edit_line = next(line for line in out.splitlines() if line.startswith("unipc_s2_g3"))
    assert "AU MSE" in edit_line and "(estimator's own " in edit_line and "°" in edit_line
    assert "synthetic regressor (held out: au_mse" in out and "degrees for pose" in out
    report = json.loads(report_path.read_text())
    assert report["pairs"] == 2 and len(report["settings"]) == 2  # the reference is evaluated too
    versus = [row["versus_reference"] for row in report["settings"]]
    assert versus[1]["not_worse"] and set(versus[1]["delta"].values()) == {0.0}  # the reference itself
    fewest = report["fewest_steps_of_equal_quality"]
    assert report["equal_quality_rule"] == "no metric worse by > 2 SE and > 1%"
    assert fewest["steps"] == (2 if versus[0]["not_worse"] else 3)
    assert "unipc_s2_g3 − unipc_s3_g3: Δ au_mse " in out and "fewest steps of equal quality to" in out
    baseline = report["baseline"]
    # the source against itself: nothing moved
    assert baseline["id_l2"] == 0 and baseline["background_rmse"] == 0 and baseline["pose_rmse_degrees"] == 0
    assert baseline["au_mse"] > 0  # the source does not show the requested AUs
    edited = report["settings"][0]
    assert edited["setting"] == {"sampler": "unipc", "steps": 2, "guidance": 3.0}
    assert 0 < edited["background_rmse"] <= 1
    assert sorted(p.name for p in edits.iterdir())[:4] == [
        "pair00000_source.png",
        "pair00000_unipc_s2_g3.png",
        "pair00000_unipc_s3_g3.png",
        "pair00000_vae_round_trip.png",
    ]
    # The VAE reference is the checkpoint's VAE, decoded as every edit is: the same as the training
    # module's reconstruction, up to float rounding.
    assert "no edit, through the VAE and back: AU MSE" in out and "\n  AU MSE by AU: AU1 " in out
    assert set(report["settings"][0]["au_mse_by_au"]) == set(AU_NAMES)
    assert report["vae_round_trip"]["background_rmse"] > 0
    source, round_trip = (
        np.asarray(Image.open(edits / f"pair00000_{n}.png")) for n in ("source", "vae_round_trip")
    )
    expected = autoencoder.round_trip(demo_checkpoint)(source[None])[0]
    assert np.abs(round_trip.astype(int) - expected).max() <= 1


@pytest.fixture(scope="session")
def demo_model_report(tmp_path_factory):
    """evaluate.py on the shipped demo model and estimator, on 8 pairs of held-out persons (a seed no model
    or estimator saw) of the demo model's world, each edited by its AU variation as the demo samples
    (10 UniPC steps, guidance 3)."""
    from magicface_jax import checkpoint, demo
    from magicface_jax.assets import DEMO_MODEL, SYNTHETIC_ESTIMATOR

    spec = SyntheticFacesSpec(
        resolution=64,
        train_pairs=1,
        test_pairs=8,
        pairs_per_identity=1,
        seed=11,
        face_scale=demo.face_scale(),
    )
    data_dir = tmp_path_factory.mktemp("held_out")
    SyntheticFaces(config=SyntheticFacesConfig(spec), data_dir=str(data_dir)).download_and_prepare()
    report_path = tmp_path_factory.mktemp("report") / "report.json"
    argv = ["--checkpoint", DEMO_MODEL, "--dataset", f"synthetic_faces/{spec.name}", "--data-dir", data_dir]
    steps = checkpoint.read_info(DEMO_MODEL).default_steps
    argv += ["--estimator", SYNTHETIC_ESTIMATOR, "--steps", steps, "--json", report_path]
    assert _evaluate(*argv) == 0
    return json.loads(report_path.read_text())


@pytest.mark.slow
def test_evaluate_measures_the_demo_model(demo_model_report):
    edited, baseline = demo_model_report["settings"][0], demo_model_report["baseline"]
    assert demo_model_report["pairs"] == 8 and baseline["background_rmse"] == 0
    # It keeps the scene and the pose roughly (background RMSE 0.076, pose 2.8°), far from a random model.
    assert edited["background_rmse"] < 0.2 and edited["pose_rmse_degrees"] < 10


@pytest.mark.slow
def test_the_demo_model_shows_the_requested_aus_better_than_no_edit(demo_model_report):
    # Measured: AU MSE 2.11 against 4.42 for the source and 4.01 for the source through the VAE.
    edited = demo_model_report["settings"][0]
    assert edited["au_mse"] < demo_model_report["baseline"]["au_mse"]
    assert edited["au_mse"] < demo_model_report["vae_round_trip"]["au_mse"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--dataset": "synthetic_faces/nope"}, "cannot open split 'test'"),
        ({"--checkpoint": "missing"}, "does not exist"),
        ({"--estimator": None}, "pass --estimator DIR"),
        ({"--num": "0"}, "--num must be"),
        ({"--sampler": "plms"}, "invalid choice"),
        ({"--reference": "unipc:fifty:3"}, "expected SAMPLER:STEPS:GUIDANCE"),
        ({"--reference": "plms:50:3"}, "with a sampler of"),
        ({"--openface": "CSVS"}, "no column for AU1"),
        ({"--json": "nowhere/report.json"}, "its folder does not exist"),
    ],
)
def test_evaluate_refuses_bad_arguments_in_one_line(
    tmp_path, tiny_dataset, tiny_estimator, demo_checkpoint, capsys, change, message
):
    csvs = tmp_path / "openface"
    csvs.mkdir()
    (csvs / "pair00000_source.csv").write_text("frame,success,AU01_c\n1,1,1\n")
    values = {
        "--checkpoint": str(demo_checkpoint),
        "--dataset": f"synthetic_faces/{SPEC.name}",
        "--data-dir": str(tiny_dataset),
        "--estimator": str(tiny_estimator[0]),
    }
    for key, value in change.items():
        values[key] = {"CSVS": str(csvs), "missing": str(tmp_path / "missing")}.get(value, value)
    argv = [item for key, value in values.items() if value is not None for item in (key, value)]
    assert _evaluate(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_the_shipped_estimator_beats_a_constant_predictor_on_unseen_persons():
    from magicface_jax.assets import SYNTHETIC_ESTIMATOR

    estimator = synthetic.SyntheticEstimator.load(SYNTHETIC_ESTIMATOR)
    from magicface_jax import demo

    # seed 1's test persons: neither the estimator's training persons (seed 0, train) nor its test persons;
    # a new person per pair, faces as in the world of the demo model, which the shipped estimator shares
    spec = SyntheticFacesSpec(resolution=64, seed=1, pairs_per_identity=1, face_scale=demo.face_scale())
    data = synthetic.labelled_images(synthetic.rendered_records(spec, "test", 12))
    constant = estimator.normalization.mean
    aus, pose = estimator.aus(data.images), estimator.pose(data.images)
    constant_error = ((constant["aus"] - data.targets["aus"]) ** 2).mean()
    assert ((aus - data.targets["aus"]) ** 2).mean() < constant_error
    # It reads the faces as the demo model's VAE returns them (every edit comes back through it) as well.
    round_trips = autoencoder.round_trip(demo.DEMO_MODEL, 64, demo.face_scale())(data.images)
    assert ((estimator.aus(round_trips) - data.targets["aus"]) ** 2).mean() < constant_error
    yaw_roll = pose[:, [0, 2]]
    assert (
        np.abs(yaw_roll - data.targets["pose"]).mean()
        < np.abs(constant["pose"] - data.targets["pose"]).mean()
    )
    embedding = estimator.embed(data.images)
    same = np.linalg.norm(embedding[0::2] - embedding[1::2], axis=-1).mean()  # a pair: one person
    other = np.linalg.norm(embedding[0::2] - np.roll(embedding[0::2], 1, axis=0), axis=-1).mean()
    assert same < other


def test_train_estimator_refuses_a_face_scale_out_of_range_before_rendering(tmp_path, capsys):
    from magicface_jax.evaluation import train_estimator

    out = tmp_path / "estimator"
    assert run(train_estimator.main, ["--face-scale", "0.2", "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "the face scale must be in [0.5, 1.6], got 0.2" in lines[0], lines
    assert not out.exists()


def test_an_estimator_trained_with_round_trips_reports_its_errors_on_them_too():
    train = synthetic.labelled_images(synthetic.rendered_records(SPEC, "train", 2))
    test = synthetic.labelled_images(synthetic.rendered_records(SPEC, "test", 2))
    seen = []

    def darken(images):  # a stand-in for a VAE's round trip
        seen.append(len(images))
        return (images // 2).astype(np.uint8)

    both = synthetic.with_reconstructions(train, darken)
    assert len(both.images) == 2 * len(train.images) and (both.person == np.tile(train.person, 2)).all()
    np.testing.assert_array_equal(both.images[len(train.images) :], train.images // 2)
    np.testing.assert_array_equal(both.targets["aus"], np.tile(train.targets["aus"], (2, 1)))
    seen.clear()
    estimator = synthetic.train_estimator(TINY, train, test, steps=2, log=lambda _: None, reconstruct=darken)
    held_out = estimator.held_out()
    assert seen == [len(train.images), len(test.images)]  # the train images, then the test images
    assert held_out["au_mse_vae_round_trip"] != held_out["au_mse"]
    assert {"pose_rmse_degrees_vae_round_trip", "id_l2_same_person_vae_round_trip"} <= set(held_out)


def test_train_estimator_refuses_a_missing_vae_before_rendering(tmp_path, capsys):
    from magicface_jax.evaluation import train_estimator

    out = tmp_path / "estimator"
    assert run(train_estimator.main, ["--vae", str(tmp_path / "none"), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "holds no VAE: give a VAE export" in lines[0], lines
    assert not out.exists()
