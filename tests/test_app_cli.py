"""`python -m magicface_jax.app`: bad flags get one line and exit status 2, before anything is loaded."""

from __future__ import annotations

import pytest

from magicface_jax.app import __main__ as app_cli
from magicface_jax.cli import run


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--size", "96"], ["--size 96", "multiple of 64"]),
        (["--port", "70000"], ["--port 70000"]),
        (["--steps", "0"], ["--steps 0", "1 to 100"]),
        (["--max-waiting", "-1"], ["--max-waiting", "≥ 0"]),
        (["--port", "web"], ["--port", "'web'"]),
        (["--checkpoint", "nowhere", "--devices", "999"], ["--devices 999", "device(s)"]),
        (["--checkpoint", "nowhere"], ["nowhere"]),
    ],
)
def test_bad_flags(capsys, tmp_path, argv, words):
    argv = [a.replace("nowhere", str(tmp_path / "nowhere")) for a in argv]
    assert run(app_cli.main, argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for word in words:
        assert word in lines[0], lines[0]
