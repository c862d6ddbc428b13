"""Each rule lives in one place, so the same mistake gets the same message everywhere; the installed package
needs no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from magicface_jax import checkpoint
from magicface_jax.config import tiny_magicface_config
from magicface_jax.diffusion import SD15_SCHEDULER_CONFIG, NoiseSchedule, make_sampler
from magicface_jax.editing.inputs import EditSettings
from magicface_jax.errors import MagicFaceError
from magicface_jax.models import magicface
from magicface_jax.pipeline import initial_noise

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = NoiseSchedule.from_diffusers(SD15_SCHEDULER_CONFIG)


def message(call) -> str:
    with pytest.raises(MagicFaceError) as err:
        call()
    return str(err.value)


@pytest.mark.parametrize(("steps", "sampler"), [(0, "unipc"), (2.5, "ddim"), (True, "euler"), (3, "plms")])
def test_steps_and_sampler_get_one_message_at_the_edge_and_in_the_library(steps, sampler):
    at_the_edge = message(lambda: EditSettings(steps=steps, sampler=sampler))
    in_the_library = message(lambda: make_sampler(sampler, SCHEDULE, steps))
    if steps == 0:  # only the library knows the schedule's length
        assert at_the_edge == "num_inference_steps=0: expected at least 1"
        assert in_the_library.startswith("num_inference_steps=0: expected between 1 and")
    else:
        assert at_the_edge == in_the_library


def test_initial_noise_is_drawn_from_the_config():
    vae = tiny_magicface_config().vae
    noise = initial_noise(vae, 3, 2, 64, 32)
    f = vae.downsample_factor
    assert noise.shape == (2, 64 // f, 32 // f, vae.latent_channels) and noise.dtype == np.float32
    np.testing.assert_array_equal(noise, initial_noise(vae, 3, 2, 64, 32))
    with pytest.raises(MagicFaceError, match="seed"):
        initial_noise(vae, -1, 1, 64, 64)


def test_components_are_named_once():
    assert checkpoint.COMPONENTS is magicface.COMPONENTS


def test_the_package_imports_without_torch():
    """torch is hidden from a fresh interpreter: the package, its commands and the pipeline still import."""
    script = (
        "import sys\n"
        "sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import magicface_jax, magicface_jax.pipeline, magicface_jax.editing.commands\n"
        "import magicface_jax.convert.convert, magicface_jax.preprocess, magicface_jax.data.build\n"
        "import sample, convert_weights\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert not (ROOT / "magicface_jax" / "torch_reference.py").exists()


def test_a_venv_link_is_ignored(tmp_path):
    """.gitignore names `.venv` itself, so a `.venv` that is a link to a virtualenv elsewhere is ignored."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, timeout=30)
    (repo / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    (tmp_path / "elsewhere").mkdir()
    (repo / ".venv").symlink_to(tmp_path / "elsewhere")
    done = subprocess.run(["git", "check-ignore", "-q", ".venv"], cwd=repo, timeout=30)
    assert done.returncode == 0
