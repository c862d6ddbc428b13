"""`preprocess_image` on photographs that ship inside packages, and on inputs it must refuse."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from magicface_jax.errors import MagicFaceError
from magicface_jax.faces.jaw_dots import JAW_COLOURS, jaw_dot_centres
from magicface_jax.faces.preprocess import (
    NoFaceError,
    Preprocessed,
    build_background,
    is_available,
    preprocess_image,
)

pytestmark = [
    pytest.mark.skipif(not is_available(), reason="needs the faces extra: pip install '.[faces]'"),
    pytest.mark.xdist_group("faces"),
]


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as file:
        return np.asarray(Image.open(file).convert("RGB"))


PHOTOS = {"astronaut": astronaut, "grace_hopper": grace_hopper}


@pytest.fixture(scope="module")
def results() -> dict[str, Preprocessed]:
    return {name: preprocess_image(load()) for name, load in PHOTOS.items()}


def check_condition(result: Preprocessed, size: int) -> None:
    """The invariants of every result: shapes, landmarks in the crop, person black, dots drawn."""
    assert result.face.shape == result.background.shape == (size, size, 3)
    assert result.face.dtype == result.background.dtype == np.uint8
    assert result.person_mask.shape == (size, size) and result.person_mask.dtype == bool
    assert result.landmarks.shape == (68, 2)
    assert (result.landmarks >= 0).all() and (result.landmarks < size).all()
    # The face itself (eyes, nose, mouth) is blacked out, the top corners (scene) are not.
    inner = np.round(result.landmarks[27:68]).astype(int)
    assert result.person_mask[inner[:, 1], inner[:, 0]].all()
    corner = size // 16
    assert not result.person_mask[:corner, :corner].any() and not result.person_mask[:corner, -corner:].any()
    # Every jaw dot is drawn: at its centre, over black, the pixel has the dot's colour.
    for (x, y), colour in zip(
        np.round(jaw_dot_centres(result.landmarks)).astype(int), JAW_COLOURS, strict=True
    ):
        pixel = result.background[y, x].astype(int)
        if result.person_mask[y, x]:
            assert np.abs(pixel - colour).max() <= 40 * 512 // size, (x, y, pixel, colour)
        else:
            assert (pixel >= result.face[y, x]).all() and (pixel > result.face[y, x]).any()


@pytest.mark.parametrize("name", PHOTOS)
def test_photo(results, name):
    result = results[name]
    check_condition(result, 512)
    assert 0.3 < result.person_mask.mean() < 0.85
    # Outside the person and the dots, the background is the crop.
    ys, xs = np.mgrid[0:512, 0:512]
    near_dot = np.zeros((512, 512), bool)
    for x, y in jaw_dot_centres(result.landmarks):
        near_dot |= (xs - x) ** 2 + (ys - y) ** 2 <= 8**2
    scene = ~result.person_mask & ~near_dot
    np.testing.assert_array_equal(result.background[scene], result.face[scene])


def test_face_sits_where_the_authors_put_it(results):
    """The face box (cheek to cheek) spans about [80, 432] / 1.5 around the middle of the crop."""
    for result in results.values():
        width = np.ptp(result.landmarks[:, 0])
        assert 352 / 1.5 * 0.9 < width < 352 / 1.5 * 1.1
        assert abs(result.landmarks[:, 0].min() + result.landmarks[:, 0].max() - 512) / 2 < 10


def test_other_size_scales_everything(results):
    small = preprocess_image(astronaut(), size=256)
    check_condition(small, 256)
    np.testing.assert_allclose(small.landmarks, (results["astronaut"].landmarks + 0.5) / 2 - 0.5, atol=2.0)


def test_face_mask_keeps_hair_and_clothes(results):
    person = results["grace_hopper"]
    face = preprocess_image(grace_hopper(), mask="face")
    check_condition(face, 512)
    assert face.person_mask.sum() < 0.6 * person.person_mask.sum()
    # Below the chin (neck, collar) nothing is blacked out.
    chin_y = int(face.landmarks[8, 1]) + 20
    assert not face.person_mask[chin_y:].any()


def test_grayscale_and_rgba_photos():
    gray = Image.fromarray(astronaut()).convert("L")
    result = preprocess_image(gray)
    check_condition(result, 512)
    assert (result.face[..., 0] == result.face[..., 1]).all()
    rgba = Image.fromarray(astronaut()).convert("RGBA")
    check_condition(preprocess_image(rgba), 512)


def test_several_faces_uses_the_largest(results):
    """The astronaut (a face 90 px wide) beside a smaller Grace Hopper: the astronaut is chosen."""
    other = np.asarray(Image.fromarray(grace_hopper()).resize((192, 225)))
    canvas = np.full((512, 512 + 192, 3), 128, np.uint8)
    canvas[:, :512] = astronaut()
    canvas[:225, 512:] = other
    result = preprocess_image(canvas)
    assert any("2 faces" in note and "largest" in note for note in result.notes), result.notes
    np.testing.assert_allclose(result.landmarks, results["astronaut"].landmarks, atol=3.0)


def test_face_at_the_edge_is_padded_not_blacked_out():
    photo = astronaut()[60:]  # the top of the head at the photo's top edge
    result = preprocess_image(photo)
    assert any("edge" in note for note in result.notes), result.notes
    padding_rows = (result.face == 0).all(axis=(1, 2))
    assert padding_rows[:50].all()
    assert not result.person_mask[padding_rows].any()
    assert result.person_mask[~padding_rows].mean() > 0.3


def test_build_background_on_a_crop_matches_the_full_pipeline(results):
    crop = results["grace_hopper"]
    again = build_background(crop.face)
    np.testing.assert_array_equal(again.face, crop.face)
    assert np.abs(again.landmarks - crop.landmarks).mean() < 3.0
    inter = (again.person_mask & crop.person_mask).sum()
    assert inter / (again.person_mask | crop.person_mask).sum() > 0.9


def test_build_background_of_a_small_crop(results):
    small = np.asarray(Image.fromarray(results["astronaut"].face).resize((128, 128), Image.LANCZOS))
    result = build_background(small)
    check_condition(result, 128)


def test_no_face_is_refused():
    from skimage import data

    with pytest.raises(NoFaceError, match="no face found"):
        preprocess_image(data.coffee()[::2, ::2])
    with pytest.raises(NoFaceError, match="no face found"):
        build_background(np.full((256, 256, 3), 200, np.uint8))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 500}, "multiples of 64"),
        ({"size": 0}, "multiples of 64"),
        ({"size": 512.0}, "whole number"),
        ({"mask": "hair"}, "not one of person, face"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(MagicFaceError, match=message):
        preprocess_image(np.zeros((64, 64, 3), np.uint8), **kwargs)


def test_bad_images():
    with pytest.raises(MagicFaceError, match="dtype float32"):
        preprocess_image(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(MagicFaceError, match="shape"):
        preprocess_image(np.zeros((4, 64, 64, 3), np.uint8))
    with pytest.raises(MagicFaceError, match="PIL image or a uint8"):
        preprocess_image("photo.jpg")
    with pytest.raises(MagicFaceError, match="square"):
        build_background(np.zeros((64, 96, 3), np.uint8))
