"""The app's editing service without a server: one pipeline per device, and its checks of uploads."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from PIL import Image

from magicface_jax.app.service import EditService, Limits
from magicface_jax.checkpoint import AUTHORS_STEPS, SamplingDefault
from magicface_jax.editing.inputs import EditSettings
from magicface_jax.errors import MagicFaceError
from tests.random_checkpoint import write_random_checkpoint

pytestmark = pytest.mark.slow  # loads a checkpoint onto two devices


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    checkpoint = write_random_checkpoint(tmp_path_factory.mktemp("service") / "random")
    return EditService.from_checkpoint(
        checkpoint, 64, EditSettings(steps=2), num_devices=2, limits=Limits(max_pixels=10_000)
    )


def test_one_pipeline_per_device(service):
    assert len(service.devices) == 2
    for device, expected in zip(service.devices, jax.local_devices()[:2], strict=True):
        assert device.pipe.mesh.devices.tolist() == [expected]
        leaf = jax.tree.leaves(device.pipe.params)[0]
        assert leaf.devices() == {expected}


def test_the_page_starts_at_the_steps_measured_for_the_checkpoint(tmp_path):
    measured = write_random_checkpoint(tmp_path / "measured", sampling=SamplingDefault(7, "on 8 pairs"))
    service = EditService.from_checkpoint(measured, 64, num_devices=1)
    assert service.default_settings.steps == service.devices[0].pipe.default_steps == 7
    plain = EditService.from_checkpoint(write_random_checkpoint(tmp_path / "plain"), 64, num_devices=1)
    assert plain.default_settings.steps == AUTHORS_STEPS  # measured for none: the authors' 50


def _save(path, width, height):
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(path)
    return path


def test_uploads_are_checked(service, tmp_path):
    with pytest.raises(MagicFaceError, match=r"the photo is 200x100 .* the limit is 0.01 megapixels"):
        service.read_image(_save(tmp_path / "big.png", 200, 100), "photo")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(MagicFaceError, match="the face crop is not an image"):
        service.read_image(tmp_path / "text.png", "face crop")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_save(tmp_path / "whole.png", 64, 64).read_bytes()[:100])
    with pytest.raises(MagicFaceError, match="damaged or not an image"):
        service.read_image(truncated, "face crop")
    with pytest.raises(MagicFaceError, match=r"background condition is 64x48: .* square"):
        service.prepare_pair(tmp_path / "whole.png", _save(tmp_path / "wide.png", 64, 48))


def test_a_prepared_pair_is_resized_to_the_service_size(service, tmp_path):
    images = service.prepare_pair(_save(tmp_path / "f.png", 96, 96), _save(tmp_path / "b.png", 96, 96))
    assert images.source.shape == images.background.shape == (64, 64, 3)
