"""The procedural face renderer and the `synthetic_faces` builder."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from magicface_jax.data import face_geometry as geo
from magicface_jax.data import face_params as fp
from magicface_jax.data.backgrounds import render_scene
from magicface_jax.data.face_render import render_face
from magicface_jax.data.png import decode_mask, decode_png
from magicface_jax.data.synthetic_faces import (
    SyntheticFaces,
    SyntheticFacesConfig,
    SyntheticFacesSpec,
    background_condition,
    builder_config,
    synthetic_example,
)
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces.aus import AU_NAMES, au_index
from magicface_jax.faces.jaw_dots import JAW_COLOURS, jaw_dot_centres, jaw_dot_layer


def _person(seed: int, size: int = 128):
    rng = np.random.default_rng(seed)
    identity, pose, scene = fp.sample_identity(rng), fp.sample_pose(rng), fp.sample_scene(rng)
    return identity, pose, render_scene(scene, size)


def _aus(**intensities) -> np.ndarray:
    aus = np.zeros(len(AU_NAMES), np.float32)
    for name, value in intensities.items():
        aus[au_index(name)] = value
    return aus


@pytest.mark.parametrize("seed", [0, 1])
def test_every_au_visibly_changes_the_face_and_more_with_intensity(seed):
    identity, pose, scene = _person(seed)
    neutral = render_face(identity, pose, _aus(), scene)
    for name in AU_NAMES:
        changed = []
        for intensity in (2.5, 5.0):
            face = render_face(identity, pose, _aus(**{name: intensity}), scene)
            diff = np.abs(face.image.astype(int) - neutral.image.astype(int)).sum(-1)
            changed.append(int((diff > 30).sum()))
            scene_only = ~(neutral.person_mask | face.person_mask)
            assert not diff[scene_only].any(), f"{name} changed the scene"
        assert changed[1] >= 25, f"{name} at 5 changes only {changed[1]} pixels"
        assert changed[1] > changed[0] > 0, f"{name}: {changed}"


def test_each_au_moves_its_landmarks_the_right_way():
    identity, _, _ = _person(3)
    neutral = geo.landmarks(identity, _aus())

    def moved(name):
        return geo.landmarks(identity, _aus(**{name: 5})) - neutral

    up = -1  # y points down
    assert (moved("AU1")[[21, 22], 1] * up > 0.1).all()  # inner brows up
    assert abs(moved("AU1")[[17, 26], 1]).max() < 0.01  # ...outer ends barely
    assert (moved("AU2")[[17, 26], 1] * up > 0.1).all()
    assert (moved("AU4")[17:27, 1] > 0.04).all() and moved("AU4")[21, 0] > 0 > moved("AU4")[22, 0]
    assert (moved("AU5")[[37, 38, 43, 44], 1] * up > 0.04).all()
    assert (moved("AU6")[[40, 41, 46, 47], 1] * up > 0.02).all()
    assert (moved("AU9")[31:36, 1] * up > 0.04).all()
    assert (moved("AU12")[[48, 54], 1] * up > 0.1).all()
    assert (moved("AU15")[[48, 54], 1] > 0.1).all()
    assert moved("AU17")[57, 1] * up > 0.05 and moved("AU17")[8, 1] * up > 0.03
    stretch = moved("AU20")
    assert stretch[54, 0] - stretch[48, 0] > 0.2
    opened = geo.landmarks(identity, _aus(AU25=5))
    assert opened[66, 1] - opened[62, 1] > 0.05 and abs(moved("AU25")[8, 1]) < 1e-6
    assert moved("AU26")[8, 1] > 0.2 and moved("AU26")[57, 1] > 0.15


def test_landmarks_follow_the_pose():
    identity, pose, scene = _person(4)
    face = render_face(identity, pose, _aus(), scene)
    assert face.landmarks.shape == (68, 2)
    inside = face.landmarks.round().astype(int)
    assert face.face_mask[inside[27:68, 1], inside[27:68, 0]].all()  # brows may sit under a fringe
    assert face.face_mask.sum() < face.person_mask.sum()
    assert not (face.face_mask & ~face.person_mask).any()


def _dot_colour(condition: np.ndarray, landmarks: np.ndarray, k: int) -> np.ndarray:
    """The condition's colour where jaw dot k is drawn most strongly (a 64² dot covers a pixel or two)."""
    x, y = jaw_dot_centres(landmarks)[k].round().astype(int)
    layer = jaw_dot_layer(landmarks, condition.shape[0]).astype(int).sum(-1)
    window = layer[y - 2 : y + 3, x - 2 : x + 3]
    dy, dx = np.unravel_index(window.argmax(), window.shape)
    return condition[y - 2 + dy, x - 2 + dx]


def _pose_and_scene(factors: dict, image: str) -> list:
    return [v.tolist() for group in ("pose", "scene") for v in factors[f"{image}_{group}"].values()]


def test_a_pair_shares_identity_and_differs_in_pose_scene_and_aus():
    spec = SyntheticFacesSpec(resolution=128, seed=7)  # 64² can lose a dot
    example = synthetic_example(spec, "train", 5)
    again = synthetic_example(spec, "train", 5)
    for key in ("identity_image", "target_image", "background", "target_face_mask"):
        assert example[key] == again[key]
    identity, target = decode_png(example["identity_image"]), decode_png(example["target_image"])
    assert identity.shape == target.shape == (128, 128, 3)
    person = decode_mask(example["target_person_mask"])
    np.testing.assert_array_equal(example["au_variation"], example["target_aus"] - example["identity_aus"])
    assert np.abs(example["au_variation"]).max() >= 1
    assert example["target_aus"].min() >= 0 and example["target_aus"].max() <= 5
    # the background condition: scene kept, person black apart from the 17 jaw dots
    condition = decode_png(example["background"])
    landmarks = example["target_landmarks"]
    dots = jaw_dot_layer(landmarks, 128).any(-1)  # drawn exactly as the face preprocessing draws them
    np.testing.assert_array_equal(condition[~person & ~dots], target[~person & ~dots])
    assert (condition[person & ~dots] == 0).all()
    assert np.linalg.norm(jaw_dot_centres(landmarks) - landmarks[:17], axis=-1).max() < 3  # near the jaw line
    pink, orange = (_dot_colour(condition, landmarks, k) for k in (0, 16))
    assert pink[0] > pink[1] and orange[1] > orange[2]  # pink at landmark 0, orange at 16
    assert tuple(JAW_COLOURS[0]) == (255, 0, 127)
    # other pairs of the same person share its identity factors, not its pose
    sibling = synthetic_example(spec, "train", 4)
    assert sibling["identity_id"] == example["identity_id"] == "train-000001"
    assert sibling["factors"]["identity"]["skin"].tolist() == example["factors"]["identity"]["skin"].tolist()
    assert sibling["factors"]["identity_pose"]["rotation"] != example["factors"]["identity_pose"]["rotation"]
    # the target is seen in another pose over another scene, so neither can be copied from the identity image
    factors = example["factors"]
    assert _pose_and_scene(factors, "identity") != _pose_and_scene(factors, "target")
    assert np.abs(example["identity_landmarks"] - landmarks).max() > 1
    assert np.abs(identity.astype(int) - target.astype(int))[~person].mean() > 10


def test_the_identity_images_own_condition_is_stored_for_evaluation():
    example = synthetic_example(SyntheticFacesSpec(resolution=64, seed=3), "test", 2)
    identity = decode_png(example["identity_image"])
    condition = decode_png(example["identity_background"])
    person = decode_mask(example["identity_person_mask"])
    dots = jaw_dot_layer(example["identity_landmarks"], 64).any(-1)
    np.testing.assert_array_equal(condition[~person & ~dots], identity[~person & ~dots])
    assert (condition[person & ~dots] == 0).all()
    assert decode_mask(example["identity_face_mask"]).sum() < person.sum()
    assert example["identity_background"] != example["background"]


def test_the_same_pose_and_scene_variant_keeps_them():
    spec = SyntheticFacesSpec(resolution=64, seed=7, same_pose_and_scene=True)
    assert spec.name == "64px_2000x200_p4_a0.4_s7_same"
    example = synthetic_example(spec, "train", 5)
    factors = example["factors"]
    assert _pose_and_scene(factors, "identity") == _pose_and_scene(factors, "target")
    identity, target = decode_png(example["identity_image"]), decode_png(example["target_image"])
    scene = ~decode_mask(example["identity_person_mask"]) & ~decode_mask(example["target_person_mask"])
    np.testing.assert_array_equal(identity[scene], target[scene])
    default = synthetic_example(SyntheticFacesSpec(resolution=64, seed=7), "train", 5)
    assert default["identity_image"] == example["identity_image"]  # only the target changes


def test_resolutions_and_bad_specs():
    for size in (64, 512):
        example = synthetic_example(SyntheticFacesSpec(resolution=size), "test", 0)
        assert decode_png(example["background"]).shape == (size, size, 3)
    bad_specs = (
        {"resolution": 100},
        {"train_pairs": 0},
        {"pairs_per_identity": 0},
        {"au_active": 0},
        {"face_scale": 0.4},
        {"face_scale": 1.7},
    )
    for bad in bad_specs:
        with pytest.raises(MagicFaceError):
            SyntheticFacesSpec(**bad)
    assert SyntheticFacesSpec(resolution=64).name == "64px"
    assert SyntheticFacesSpec(resolution=64, train_pairs=8).name == "64px_8x200_p4_a0.4_s0"


def test_a_larger_face_scale_draws_the_same_pair_larger():
    default = synthetic_example(SyntheticFacesSpec(resolution=64, seed=3), "train", 2)
    spec = SyntheticFacesSpec(resolution=64, seed=3, face_scale=1.4)
    assert spec.name == "64px_2000x200_p4_a0.4_s3_f1.4"
    larger = synthetic_example(spec, "train", 2)
    for side in ("identity", "target"):
        ratio = larger["factors"][f"{side}_pose"]["scale"] / default["factors"][f"{side}_pose"]["scale"]
        assert ratio == pytest.approx(1.4)
        area = (
            decode_mask(larger[f"{side}_face_mask"]).sum() / decode_mask(default[f"{side}_face_mask"]).sum()
        )
        assert 1.6 < area < 2.3  # about 1.4²; the face may be cut by the image's edge
    np.testing.assert_array_equal(larger["target_aus"], default["target_aus"])  # only the size changes


def test_registered_and_custom_specs_both_make_builders(tmp_path):
    for spec in (SyntheticFacesSpec(resolution=512), SyntheticFacesSpec(resolution=512, seed=1)):
        builder = SyntheticFaces(config=builder_config(spec), data_dir=str(tmp_path))
        assert builder.spec == spec and builder.data_dir.endswith(f"synthetic_faces/{spec.name}/2.0.0")


def test_condition_blackens_exactly_the_person_and_follows_the_jaw():
    identity, pose, scene = _person(2, 128)
    closed = render_face(identity, pose, _aus(), scene)
    dropped = render_face(identity, pose, _aus(AU26=5), scene)
    condition = background_condition(dropped.image, dropped.person_mask, dropped.landmarks)
    dots = jaw_dot_layer(dropped.landmarks, 128).any(-1)
    keep = ~dropped.person_mask & ~dots
    np.testing.assert_array_equal(condition[keep], scene[keep])
    assert (condition[dropped.person_mask & ~dots] == 0).all()
    chin = jaw_dot_centres(dropped.landmarks)[8] - jaw_dot_centres(closed.landmarks)[8]
    assert np.hypot(*chin) > 5  # the jaw drop moves the chin's dot


def test_builds_and_reads_back_without_tensorflow(tmp_path):
    spec = SyntheticFacesSpec(resolution=64, train_pairs=6, test_pairs=3, pairs_per_identity=2, seed=1)
    builder = SyntheticFaces(config=SyntheticFacesConfig(spec), data_dir=str(tmp_path))
    builder.download_and_prepare()
    train = tfds.data_source(f"synthetic_faces/{spec.name}", split="train", data_dir=str(tmp_path))
    test = tfds.builder_from_directory(builder.data_dir).as_data_source("test")
    assert (len(train), len(test)) == (6, 3)
    train_people = {train[i]["identity_id"] for i in range(len(train))}
    test_people = {test[i]["identity_id"] for i in range(len(test))}
    assert len(train_people) == 3 and not train_people & test_people
    record = train[0]
    assert decode_png(record["identity_image"]).shape == (64, 64, 3)
    assert decode_mask(record["target_face_mask"]).dtype == bool
    assert -15 <= record["factors"]["target_pose"]["yaw"] <= 15 and record["factors"]["identity"][
        "skin"
    ].shape == (3,)
    expected = {synthetic_example(spec, "train", i)["identity_image"] for i in range(6)}
    assert {train[i]["identity_image"] for i in range(6)} == expected
