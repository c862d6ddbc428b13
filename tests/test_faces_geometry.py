"""The crop geometry, the jaw dots' colours and drawing, and the optional-dependency boundary."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from magicface_jax.faces import crop, detect
from magicface_jax.faces.jaw_dots import (
    FIVE_POINT_TEMPLATE_256,
    JAW_COLOURS,
    add_layer,
    jaw_dot_centres,
    jaw_dot_layer,
    similarity,
)

needs_faces = pytest.mark.skipif(not detect.is_available(), reason="needs the faces extra")


def test_colours_are_matplotlibs_rainbow_with_red_and_blue_swapped():
    import matplotlib

    rainbow = (255 * matplotlib.colormaps["rainbow"](np.linspace(0, 1, 70))).astype(int)[:17, :3]
    np.testing.assert_array_equal(JAW_COLOURS, rainbow[:, ::-1])


def test_crop_maps_the_face_box_square_onto_80_432():
    landmarks = np.random.default_rng(0).uniform([300, 400], [500, 650], (68, 2))
    centre_x, centre_y, width = crop.face_box(landmarks)
    half = crop.CROP_RATIO * width / 2
    corners = np.array([[centre_x - half, centre_y - half], [centre_x + half, centre_y + half]])
    np.testing.assert_allclose(
        crop.transform_points(crop.crop_matrix(landmarks, 512), corners), [[80, 80], [432, 432]]
    )
    np.testing.assert_allclose(
        crop.transform_points(crop.crop_matrix(landmarks, 128), corners), [[20, 20], [108, 108]]
    )
    matrix = crop.crop_matrix(landmarks)
    assert matrix[0, 1] == matrix[1, 0] == 0  # no rotation
    # The box is as wide as the landmarks and sits above their middle.
    assert width == pytest.approx(np.ptp(landmarks[:, 0]))
    assert centre_y < landmarks[:, 1].mean()


def test_similarity_recovers_a_known_transform():
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = FIVE_POINT_TEMPLATE_256
    target = source @ rotation.T + shift
    np.testing.assert_allclose(similarity(source, target), np.hstack([rotation, shift[:, None]]), atol=1e-9)


def _face_landmarks(size: int) -> np.ndarray:
    """A plausible 68-point face: the five-point template scaled into a size² crop, jaw on an arc."""
    scale = size / 512 * 1.5
    points = np.zeros((68, 2))
    angles = np.linspace(np.pi * 0.95, np.pi * 0.05, 17)
    points[:17] = np.stack([128 + 90 * np.cos(angles), 110 + 120 * np.sin(angles)], 1)
    points[36:42] = FIVE_POINT_TEMPLATE_256[0]
    points[42:48] = FIVE_POINT_TEMPLATE_256[1]
    points[30] = FIVE_POINT_TEMPLATE_256[2]
    points[48] = FIVE_POINT_TEMPLATE_256[3]
    points[54] = FIVE_POINT_TEMPLATE_256[4]
    return points * scale + (size - 256 * scale) / 2


@needs_faces
@pytest.mark.parametrize("size", [512, 256])
def test_dot_layer_draws_17_small_dots_in_order(size):
    from scipy import ndimage

    landmarks = _face_landmarks(size)
    layer = jaw_dot_layer(landmarks, size)
    labels, count = ndimage.label(layer.max(-1) > 0)
    assert count == 17
    # About 7-8 px across at 512² (a radius-2 circle of the 256² frame, scaled by 1.5), half at 256².
    extents = [np.ptp(np.nonzero(labels == i)[1]) + 1 for i in range(1, 18)]
    assert all(6 * size / 512 <= e <= 10 * size / 512 + 1 for e in extents), extents
    for (x, y), colour in zip(np.round(jaw_dot_centres(landmarks)).astype(int), JAW_COLOURS, strict=True):
        assert np.abs(layer[y, x].astype(int) - colour).max() <= (0 if size == 512 else 60)


def test_add_layer_saturates():
    image = np.array([[[250, 10, 0]]], np.uint8)
    layer = np.array([[[10, 10, 0]]], np.uint8)
    np.testing.assert_array_equal(add_layer(image, layer), [[[255, 20, 0]]])


def test_importing_the_face_modules_loads_no_optional_dependency():
    code = (
        "import sys, magicface_jax.faces, magicface_jax.faces.preprocess, magicface_jax.preprocess\n"
        "loaded = [m for m in ('dlib', 'cv2', 'face_recognition_models', 'scipy') if m in sys.modules]\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_dependencies_give_an_install_hint(monkeypatch):
    from magicface_jax.faces.preprocess import FaceDependencyError, is_available, preprocess_image

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "dlib" else real(name, *a)
    )
    assert not is_available()
    with pytest.raises(FaceDependencyError, match=r"needs dlib.*pip install 'magicface-jax\[faces\]'"):
        preprocess_image(np.zeros((64, 64, 3), np.uint8))
