"""The four metrics on constructed cases with known answers, and the offline photo estimators."""

from __future__ import annotations

import numpy as np
import pytest

from magicface_jax.errors import MagicFaceError
from magicface_jax.evaluation import metrics
from magicface_jax.faces import detect

needs_faces = pytest.mark.skipif(not detect.is_available(), reason="needs the faces extra")


def test_au_mse_compares_the_request_with_the_estimate():
    identity = np.array([[0.0] * 12, [1.0] * 12])
    variation = np.array([[2.0] * 12, [-1.0] * 12])
    requested = metrics.requested_aus(identity, variation)
    np.testing.assert_array_equal(requested, [[2.0] * 12, [0.0] * 12])
    assert metrics.au_mse(requested, requested) == 0
    assert metrics.au_mse(requested, requested + 2) == pytest.approx(4.0)
    estimate = requested + 1
    estimate[:, 3] = np.nan  # an AU the estimator cannot read is left out
    estimate[:, 4] += 10
    assert metrics.au_mse(requested, estimate) == pytest.approx((10 * 1 + 121) / 11)
    assert np.isnan(metrics.au_mse(requested, np.full_like(requested, np.nan)))
    by_au = metrics.au_mse(requested, estimate, axis=0)  # per AU: which AUs an edit follows
    np.testing.assert_array_equal(by_au[[0, 4, 11]], [1.0, 121.0, 1.0])
    assert by_au.shape == (12,) and np.isnan(by_au[3])
    with pytest.raises(MagicFaceError, match="shapes"):
        metrics.au_mse(requested, requested[:1])


def test_id_l2_is_the_mean_distance_and_skips_faces_not_found():
    source = np.zeros((3, 4))
    edited = np.array([[3.0, 4.0, 0, 0], [0, 0, 0, 1.0], [np.nan] * 4])
    assert metrics.id_l2(source, edited) == pytest.approx(3.0)  # (5 + 1) / 2
    assert metrics.id_l2(source, source) == 0


def test_background_rmse_ignores_the_face_and_is_in_unit_range():
    source = np.zeros((2, 8, 8, 3), np.uint8)
    mask = np.zeros((2, 8, 8), bool)
    mask[:, 2:6, 2:6] = True
    edited = source.copy()
    edited[:, 2:6, 2:6] = 255  # changes inside the face do not count
    assert metrics.background_rmse(source, edited, mask) == 0
    edited[0][~mask[0]] = 51  # 0.2 everywhere outside the face of the first image
    assert metrics.background_rmse(source, edited, mask) == pytest.approx(0.1)
    floats = source.astype(np.float64) / 255
    assert metrics.background_rmse(floats, edited.astype(np.float64) / 255, mask) == pytest.approx(0.1)
    with pytest.raises(MagicFaceError, match="whole image"):
        metrics.background_rmse(source, edited, np.ones((2, 8, 8), bool))
    with pytest.raises(MagicFaceError, match="mask"):
        metrics.background_rmse(source, edited, mask[:, :4])


def test_pose_rmse_in_degrees_over_images_and_angles():
    source = np.zeros((2, 3))
    edited = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 5.0]])
    assert metrics.pose_rmse(source, edited) == pytest.approx(np.sqrt(50 / 6))
    edited[1] = np.nan
    assert metrics.pose_rmse(source, edited) == pytest.approx(np.sqrt(25 / 3))
    assert metrics.POSE_UNIT == "degrees"


def test_euler_angles_invert_the_rotation_convention():
    from magicface_jax.evaluation.photos import euler_angles, rotation_matrix

    for angles in ((20.0, -10.0, 5.0), (-35.0, 15.0, -25.0), (0.0, 0.0, 0.0)):
        np.testing.assert_allclose(euler_angles(rotation_matrix(*angles)), angles, atol=1e-9)


@needs_faces
def test_head_pose_recovers_a_known_rotation_from_projected_landmarks():
    import cv2

    from magicface_jax.evaluation.photos import (
        MEAN_FACE_3D,
        PNP_LANDMARKS,
        camera_matrix,
        head_pose,
        rotation_matrix,
    )

    for angles in ((0.0, 0.0, 0.0), (25.0, -12.0, 8.0), (-18.0, 10.0, -15.0)):
        rvec = cv2.Rodrigues(rotation_matrix(*angles))[0]
        points, _ = cv2.projectPoints(
            MEAN_FACE_3D, rvec, np.array([0.0, 0.0, 1500.0]), camera_matrix(512, 512), np.zeros(4)
        )
        landmarks = np.zeros((68, 2))
        landmarks[list(PNP_LANDMARKS)] = points[:, 0]
        np.testing.assert_allclose(head_pose(landmarks, 512, 512), angles, atol=0.5)


@needs_faces
def test_face_mask_from_landmarks_covers_the_rendered_face():
    from magicface_jax.data.png import decode_mask
    from magicface_jax.data.synthetic_faces import SyntheticFacesSpec, synthetic_example
    from magicface_jax.evaluation.photos import face_mask_from_landmarks

    example = synthetic_example(SyntheticFacesSpec(resolution=128), "test", 1)
    truth = decode_mask(example["identity_face_mask"])
    mask = face_mask_from_landmarks(example["identity_landmarks"], 128, 128)
    assert (mask & truth).sum() / truth.sum() > 0.8
    assert (mask & ~truth).sum() / mask.sum() < 0.25


def test_landmark_au_proxy_is_fitted_on_synthetic_geometry_and_reads_a_smile():
    from magicface_jax.data import face_geometry, face_params
    from magicface_jax.evaluation.photos import LandmarkAUProxy
    from magicface_jax.faces.aus import au_index

    proxy = LandmarkAUProxy.fit(samples=1500)
    held_out = proxy.held_out()
    assert held_out["au_mse_on_synthetic_landmarks"] < 0.5 * held_out["au_mse_constant"]
    assert "proxy" in proxy.label
    identity = face_params.sample_identity(np.random.default_rng(5))
    neutral, smile = np.zeros(12, np.float32), np.zeros(12, np.float32)
    smile[au_index("AU12")] = 4
    # a similarity (a photo's scale, rotation and position) does not change the proxy's reading
    angle = np.radians(12)
    similarity = 80 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shapes = np.stack([face_geometry.landmarks(identity, a) @ similarity.T + 200 for a in (neutral, smile)])
    reading = proxy.from_landmarks(shapes)
    assert reading[1, au_index("AU12")] - reading[0, au_index("AU12")] > 2
    with pytest.raises(MagicFaceError, match="face finder"):
        proxy.aus(np.zeros((1, 8, 8, 3), np.uint8))


def _openface_csv(path, columns, values):
    path.write_text(",".join(columns) + "\n" + ",".join(str(v) for v in values) + "\n")


def test_openface_aus_are_read_per_image_name(tmp_path):
    from magicface_jax.evaluation.photos import OpenFaceAUs
    from magicface_jax.faces.aus import AU_NAMES, openface_column

    columns = ["frame", "success", *(openface_column(au) for au in AU_NAMES), "AU45_r"]
    _openface_csv(tmp_path / "pair00000_source.csv", columns, [1, 1, *range(12), 9])
    _openface_csv(tmp_path / "pair00001_source.csv", columns, [1, 0, *range(12), 9])  # face not found
    reader = OpenFaceAUs(tmp_path)
    aus = reader.aus(np.zeros((3, 4, 4, 3), np.uint8), ["pair00000_source", "pair00001_source", "other"])
    np.testing.assert_array_equal(aus[0], np.arange(12))
    assert np.isnan(aus[1:]).all()
    _openface_csv(tmp_path / "broken.csv", ["frame", "success", "AU01_c"], [1, 1, 1])
    with pytest.raises(MagicFaceError, match="no column for AU1"):
        OpenFaceAUs(tmp_path)
    with pytest.raises(MagicFaceError, match="does not exist"):
        OpenFaceAUs(tmp_path / "missing")


@needs_faces
@pytest.mark.slow
def test_dlib_identity_and_pose_on_the_shipped_portraits():
    from magicface_jax.assets import AUTHORS_EXAMPLES
    from magicface_jax.evaluation.photos import PhotoFaces
    from magicface_jax.images import load_image

    faces = PhotoFaces()
    portraits = np.stack([load_image(AUTHORS_EXAMPLES / f"{n}.png") for n in ("00025", "00381")])
    mirrored = portraits[:, :, ::-1]
    same = faces.embed(np.concatenate([portraits, mirrored]))
    assert same.shape == (4, 128)
    assert np.linalg.norm(same[0] - same[2]) < 0.6  # one person, mirrored: dlib's same-person threshold
    assert np.linalg.norm(same[0] - same[1]) > np.linalg.norm(same[0] - same[2])
    pose, pose_mirrored = faces.pose(portraits), faces.pose(mirrored)
    assert np.abs(pose).max() < 45
    np.testing.assert_allclose(pose_mirrored[:, 0], -pose[:, 0], atol=6)  # a mirror turns the yaw round
    masks = faces.face_masks(portraits)
    assert 0.05 < masks.mean() < 0.6
    blank = np.zeros((1, 64, 64, 3), np.uint8)
    assert np.isnan(faces.embed(blank)).all() and np.isnan(faces.pose(blank)).all()
    assert not faces.face_masks(blank).any()


@needs_faces
@pytest.mark.slow
def test_photo_estimators_measure_an_unchanged_photo_as_unchanged(tmp_path):
    from magicface_jax.assets import AUTHORS_EXAMPLES
    from magicface_jax.evaluation import runner
    from magicface_jax.evaluation.photos import OpenFaceAUs
    from magicface_jax.faces.aus import AU_NAMES, openface_column
    from magicface_jax.images import load_image

    estimators, faces = runner.estimators_for(runner.PHOTOS, None)
    assert "proxy" in estimators.aus.label and estimators.identity is faces
    sources = np.stack([load_image(AUTHORS_EXAMPLES / "00381.png")])
    pairs = runner.EvalPairs(
        sources=sources,
        backgrounds=np.stack([load_image(AUTHORS_EXAMPLES / "00381_bg.png")]),
        identity_aus=np.zeros((1, 12)),
        variations=np.full((1, 12), 1.0),
        face_masks=faces.face_masks(sources),
        names=("pair00000",),
    )
    unchanged = runner.measure(pairs, sources, ["pair00000_source"], estimators)
    assert (
        unchanged["id_l2"] == 0 and unchanged["pose_rmse_degrees"] == 0 and unchanged["background_rmse"] == 0
    )
    assert np.isfinite(unchanged["au_mse"])
    columns = ["frame", "success", *(openface_column(au) for au in AU_NAMES)]
    (tmp_path / "pair00000_source.csv").write_text(",".join(columns) + "\n1,1," + ",".join(["1"] * 12) + "\n")
    estimators, _ = runner.estimators_for(runner.PHOTOS, None, OpenFaceAUs(tmp_path))
    assert runner.measure(pairs, sources, ["pair00000_source"], estimators)["au_mse"] == 0  # asked 1, read 1
    with pytest.raises(MagicFaceError, match="--estimator is the synthetic"):
        runner.estimators_for(runner.PHOTOS, tmp_path)


def _estimates(n: int, seed: int):
    from magicface_jax.evaluation import runner

    rng = np.random.default_rng(seed)
    return runner.Estimates(
        aus=rng.uniform(0, 5, (n, 12)),
        source_embeddings=np.zeros((n, 4)),
        edit_embeddings=rng.normal(size=(n, 4)),
        source_poses=np.zeros((n, 3)),
        edit_poses=rng.normal(size=(n, 3)),
        background_rmse=rng.uniform(0, 0.1, n),
    )


def _pairs(n: int):
    from magicface_jax.evaluation import runner

    images = np.zeros((n, 8, 8, 3), np.uint8)
    return runner.EvalPairs(
        sources=images,
        backgrounds=images,
        identity_aus=np.ones((n, 12)),
        variations=np.ones((n, 12)),
        face_masks=np.zeros((n, 8, 8), bool),
        names=tuple(f"pair{i:05d}" for i in range(n)),
    )


def test_metrics_of_estimates_over_any_rows():
    from magicface_jax.evaluation import runner

    pairs, found = _pairs(6), _estimates(6, 0)
    every = runner.metrics_of(pairs, found)
    assert every["au_mse"] == pytest.approx(((found.aus - 2.0) ** 2).mean())
    assert every["id_l2"] == pytest.approx(np.linalg.norm(found.edit_embeddings, axis=1).mean())
    assert every["background_rmse"] == pytest.approx(found.background_rmse.mean())
    assert every["pose_rmse_degrees"] == pytest.approx(np.sqrt((found.edit_poses**2).mean()))
    twice = runner.metrics_of(pairs, found, np.array([0, 0, 1, 1]))
    first_two = runner.metrics_of(pairs, found, slice(0, 2))
    assert twice == pytest.approx(first_two)  # a row repeated counts as often as it is drawn
    assert runner.Estimates.from_json(found.to_json()).aus == pytest.approx(found.aus)


def test_bootstrap_noise_is_zero_for_equal_edits_and_shrinks_with_more_pairs():
    from magicface_jax.evaluation import runner

    small, large = _pairs(10), _pairs(400)
    same = runner.bootstrap_noise(small, _estimates(10, 1), _estimates(10, 1), draws=50)
    assert set(same.values()) == {0.0}
    noise_small = runner.bootstrap_noise(small, _estimates(10, 1), _estimates(10, 2), draws=200)
    noise_large = runner.bootstrap_noise(large, _estimates(400, 1), _estimates(400, 2), draws=200)
    for key in noise_small:
        assert 0 < noise_large[key] < noise_small[key]
    # the standard error of a mean of n uniform(0, 0.1) values: 0.1 / sqrt(12 n)
    alone = runner.bootstrap_noise(large, _estimates(400, 3), draws=400)["background_rmse"]
    assert alone == pytest.approx(0.1 / np.sqrt(12 * 400), rel=0.2)


def test_versus_holds_only_a_difference_beyond_the_noise_and_the_tolerance_against_a_setting():
    import dataclasses

    from magicface_jax.evaluation import runner

    pairs, reference = _pairs(200), _estimates(200, 4)
    same = runner.versus(pairs, reference, reference)
    assert same["not_worse"] and set(same["delta"].values()) == {0.0}
    # within the noise: another draw of the same distribution
    other = runner.versus(pairs, _estimates(200, 5), reference)
    assert other["delta"]["au_mse"] != 0 and other["standard_error"]["au_mse"] > 0
    assert other["not_worse"]  # ID L2 worse by more than 1% of the reference's, but within the noise
    one_percent = runner.EQUAL_QUALITY_TOLERANCE * runner.metrics_of(pairs, reference)["id_l2"]
    assert one_percent < other["delta"]["id_l2"] < 2 * other["standard_error"]["id_l2"]
    blurred = dataclasses.replace(reference, background_rmse=reference.background_rmse + 0.01)
    worse = runner.versus(pairs, blurred, reference)
    assert worse["delta"]["background_rmse"] == pytest.approx(0.01) and not worse["not_worse"]
    better = runner.versus(pairs, reference, blurred)  # lower errors are never held against a setting
    assert better["not_worse"]
    # beyond the noise (the same shift on every pair: no spread) but under 1% of the reference's error
    mean = reference.background_rmse.mean()
    slightly = dataclasses.replace(reference, background_rmse=reference.background_rmse + 0.005 * mean)
    invisible = runner.versus(pairs, slightly, reference)
    assert invisible["delta"]["background_rmse"] > 2 * invisible["standard_error"]["background_rmse"]
    assert invisible["not_worse"]
    noticeably = dataclasses.replace(reference, background_rmse=reference.background_rmse + 0.02 * mean)
    assert not runner.versus(pairs, noticeably, reference)["not_worse"]
