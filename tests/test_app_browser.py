"""The app in a real browser: `python -m magicface_jax.app` (the demo checkpoint, at a tiny size) driven
through headless Chromium (Debian's `chromium`) with Playwright: open the page, upload the shipped
portrait, pick "happiness", edit, and check the result is shown and differs from the input. Nothing may
be fetched from outside 127.0.0.1. `MAGICFACE_APP_SCREENSHOT=docs/app.png` keeps the screenshot."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magicface_jax.assets import AUTHORS_EXAMPLES
from magicface_jax.cache import CACHE_ENV
from tests.app_server import HOST, SIZE, STEPS, free_port

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("app-browser"),
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(), reason="needs Debian's chromium (apt-get install chromium)"
    ),
]
ROOT = Path(__file__).resolve().parents[1]
# Chromium as root needs --no-sandbox; the rest keep it from reaching out (the network may be closed).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 120_000


def _wait_until_up(url: str, server: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the app exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise AssertionError(f"the app did not answer at {url} within {seconds} s")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app-browser")
    port = free_port()
    env = {**os.environ, CACHE_ENV: str(folder / "cache"), "GRADIO_TEMP_DIR": str(folder / "gradio")}
    command = [sys.executable, "-m", "magicface_jax.app", "--host", HOST, "--port", str(port),
               "--size", str(SIZE), "--steps", str(STEPS), "--devices", "1"]  # fmt: skip
    log = (folder / "app.log").open("w")
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{port}/"
    try:
        _wait_until_up(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def _image(page, selector: str) -> np.ndarray:
    source = page.locator(f"{selector} img").first.get_attribute("src")
    response = page.request.get(urllib.parse.urljoin(page.url, source))
    assert response.ok, source
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))


def test_edit_in_a_browser(app_url, tmp_path):
    screenshot = Path(os.environ.get("MAGICFACE_APP_SCREENSHOT", tmp_path / "app.png"))
    outside: list[str] = []

    def local_only(route):
        if urllib.parse.urlsplit(route.request.url).hostname == HOST:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )  # fmt: skip
        try:
            context.route("**/*", local_only)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(app_url)
            page.locator("#photo input[type=file]").set_input_files(str(AUTHORS_EXAMPLES / "00381.png"))
            page.locator("#face img").first.wait_for()
            page.locator("#bg img").first.wait_for()
            page.locator("#emotion").get_by_text("happiness", exact=True).click()
            au12 = page.locator("#slider-AU12 input[type=number]")
            sync_api.expect(au12).to_have_value("4", timeout=TIMEOUT_MS)
            page.locator("#edit").click()
            page.locator("#result img").first.wait_for()
            sync_api.expect(page.locator("#status")).to_contain_text("done", timeout=TIMEOUT_MS)
            result, face = _image(page, "#result"), _image(page, "#face")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    assert result.shape == face.shape == (SIZE, SIZE, 3)
    assert not np.array_equal(result, face)
    assert screenshot.stat().st_size > 0
    assert outside == [], outside
