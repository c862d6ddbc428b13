"""The app's endpoints through `gradio_client` against a live server on 127.0.0.1: an edit, a sweep, the
photo preparation, every bad input (a readable error, the server still serving), 20 concurrent requests
(a result or "busy" each) and memory over 50 edits."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magicface_jax.app.service import Limits
from magicface_jax.assets import AUTHORS_EXAMPLES
from magicface_jax.editing.inputs import EditSettings
from magicface_jax.faces import aus
from tests.app_server import SIZE, STEPS, serving

gradio_client = pytest.importorskip("gradio_client")
AppError = gradio_client.exceptions.AppError
handle_file = gradio_client.handle_file

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("app")]
LIMITS = Limits(max_waiting=2, max_pixels=1_000_000)
FACE, BACKGROUND = AUTHORS_EXAMPLES / "00381.png", AUTHORS_EXAMPLES / "00381_bg.png"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app")
    with serving(folder, LIMITS) as (service, url):
        client = gradio_client.Client(
            url, verbose=False, analytics_enabled=False, download_files=folder / "downloads"
        )
        try:
            yield service, client
        finally:
            client.close()


def sliders(**edit) -> list[float]:
    return [float(edit.get(au, 0.0)) for au in aus.AU_NAMES]


def _file(path):
    return None if path is None else handle_file(str(path))


def call_edit(client, face=FACE, background=BACKGROUND, au=None, steps=STEPS, guidance=3.0, seed=0):
    au = sliders(AU12=4) if au is None else au
    return client.predict(
        _file(face), _file(background),
        *au, steps, guidance, "unipc", seed, api_name="/edit",
    )  # fmt: skip


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_edit_is_the_service_edit_of_the_slider_values(app):
    service, client = app
    result, background, status = call_edit(client, au=sliders(AU12=4, AU1=-2), seed=5)
    assert status == "done" and Path(result).suffix == ".png"
    assert not isinstance(background, str)  # no new file: the background given stays as it is
    images = service.prepare_pair(FACE, BACKGROUND)
    expected = service.edit(images, aus.au_vector({"AU12": 4, "AU1": -2}), EditSettings(steps=STEPS), 5)
    np.testing.assert_array_equal(read(result), expected)
    assert read(result).shape == (SIZE, SIZE, 3) and not np.array_equal(read(result), images.source)


def test_edit_computes_a_missing_background(app):
    _, client = app
    result, background, status = call_edit(client, background=None)
    assert "computed the background condition" in status and status.endswith("done")
    assert read(result).shape == read(background).shape == (SIZE, SIZE, 3)


def test_sweep_grid(app):
    _, client = app
    grid, _, status = client.predict(
        handle_file(str(FACE)), handle_file(str(BACKGROUND)), *sliders(AU4=2), "AU12", -4, 4, 3,
        STEPS, 3.0, "unipc", 0, api_name="/sweep",
    )  # fmt: skip
    assert status == "done" and read(grid).shape == (SIZE, (1 + 3) * SIZE, 3)


def test_prepare_a_photo_and_an_emotion_preset(app, tmp_path):
    _, client = app
    photo = tmp_path / "portrait.jpg"
    Image.open(FACE).convert("RGB").save(photo, quality=95)
    face, background, status = client.predict(handle_file(str(photo)), api_name="/prepare")
    assert read(face).shape == read(background).shape == (SIZE, SIZE, 3)
    assert "prepared" in status
    webp = tmp_path / "portrait.webp"
    Image.open(FACE).convert("RGB").save(webp, quality=95)
    assert "prepared" in client.predict(handle_file(str(webp)), api_name="/prepare")[2]
    turned = tmp_path / "turned.jpg"  # stored on its side, upright by its EXIF orientation
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.open(photo).transpose(Image.Transpose.ROTATE_90).save(turned, quality=95, exif=exif)
    upright, _, _ = client.predict(handle_file(str(turned)), api_name="/prepare")
    assert np.abs(read(upright).astype(int) - read(face)).mean() < 10
    preset = client.predict("happiness", 4, api_name="/preset")
    assert list(preset) == sliders(AU6=4, AU12=4)


def _not_an_image(tmp_path: Path) -> Path:
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    return path


def _plain(tmp_path: Path, size: int) -> Path:
    path = tmp_path / f"plain{size}.png"
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(path)
    return path


BAD_EDITS = {
    "not an image": (lambda t: {"face": _not_an_image(t)}, ["face crop is not an image"]),
    "over the size limit": (lambda t: {"face": _plain(t, 1024)}, ["1024x1024", "megapixels", "downscale"]),
    "no face given": (lambda t: {"face": None}, ["no face crop given"]),
    "slider above the range": (lambda t: {"au": sliders(AU12=10.5)}, ["AU12 is 10.5", "-10 to 10"]),
    "slider below the range": (lambda t: {"au": sliders(AU4=-50)}, ["AU4 is -50"]),
    "steps out of range": (lambda t: {"steps": 1000}, ["steps is 1000"]),
    "guidance out of range": (lambda t: {"guidance": -1.0}, ["guidance is -1"]),
}


@pytest.mark.parametrize("case", list(BAD_EDITS))
def test_bad_edit_gets_a_readable_error(app, tmp_path, case):
    _, client = app
    make, words = BAD_EDITS[case]
    with pytest.raises(AppError) as info:
        call_edit(client, **make(tmp_path))
    assert "Traceback" not in str(info.value)
    for word in words:
        assert word in str(info.value), info.value
    assert call_edit(client)[2] == "done"  # still serving


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (_not_an_image, ["photo is not an image"]),
        (lambda t: _plain(t, 256), ["no face found"]),
        (lambda t: _plain(t, 1024), ["1024x1024", "megapixels"]),
    ],
)
def test_bad_photo_gets_a_readable_error(app, tmp_path, make, words):
    _, client = app
    with pytest.raises(AppError) as info:
        client.predict(handle_file(str(make(tmp_path))), api_name="/prepare")
    for word in words:
        assert word in str(info.value), info.value


def test_concurrent_requests_get_a_result_or_busy(app):
    _, client = app
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(call_edit, client, seed=i) for i in range(20)]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=300)[2])
            except AppError as err:
                outcomes.append(str(err))
    done = outcomes.count("done")
    busy = sum("the server is busy" in outcome for outcome in outcomes)
    assert done + busy == 20, outcomes
    assert done >= 1 and busy >= 1  # at most 1 running + LIMITS.max_waiting admitted at a time
    assert call_edit(client)[2] == "done"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_memory_does_not_grow_over_50_edits(app):
    _, client = app
    for seed in range(5):  # caches and allocators settle first
        call_edit(client, seed=seed)
    before = _rss_bytes()
    for seed in range(50):
        assert call_edit(client, seed=seed)[2] == "done"
    after = _rss_bytes()
    assert after <= 1.10 * before, (before, after)
