"""Runs batches of edits through a `MagicFacePipeline`, one compiled program per batch shape, and times
compilation apart from running."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import MutableMapping
from typing import Any

import jax
import numpy as np

from magicface_jax.editing.inputs import EditSettings
from magicface_jax.errors import MagicFaceError
from magicface_jax.images import to_uint8
from magicface_jax.parallel.mesh import to_host
from magicface_jax.pipeline import MagicFacePipeline, initial_noise

# Edits per device in one batch: SD1.5 at 512² with guidance stays within an accelerator's memory.
MAX_BATCH_PER_DEVICE = 16


def check_batch_size(batch_size: object, num_devices: int) -> int | None:
    """Edits per batch, at most `MAX_BATCH_PER_DEVICE` per device; None (one per device) stays None."""
    if batch_size is None:
        return None
    most = MAX_BATCH_PER_DEVICE * num_devices
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= most:
        raise MagicFaceError(
            f"batch size must be a whole number from 1 to {most} ({MAX_BATCH_PER_DEVICE} per device on "
            f"{num_devices} device(s)), got {batch_size!r}"
        )
    return batch_size


def batch_shape(count: int, batch_size: int, num_devices: int) -> int:
    """The batch size that `count` edits of one image size run at: `batch_size` rounded up to a multiple of
    the device count, or fewer when fewer edits are left (a short last batch is padded to it)."""
    per_batch = -(-batch_size // num_devices) * num_devices
    return min(per_batch, -(-count // num_devices) * num_devices)


@dataclasses.dataclass
class Timing:
    lower_seconds: float = 0.0  # tracing the model and lowering it to XLA (every run)
    compile_seconds: float = 0.0  # compiling, or loading from the persistent compilation cache
    run_seconds: float = 0.0  # running the compiled programs, outputs brought back to the host
    compilations: int = 0


class Editor:
    """Edits with one pipeline and one set of sampling settings. `executables`: where compiled programs
    are kept, to share them between editors of one pipeline (default: this editor's own)."""

    def __init__(
        self,
        pipe: MagicFacePipeline,
        settings: EditSettings,
        executables: MutableMapping[Any, Any] | None = None,
    ):
        self.pipe = pipe
        self.settings = settings
        self.sampler = pipe.make_sampler(settings.sampler, settings.steps, settings.guidance)
        self.timing = Timing()
        self._executables = {} if executables is None else executables

    @property
    def num_devices(self) -> int:
        return self.pipe.num_devices

    def noise(self, seed: int, height: int, width: int) -> np.ndarray:
        """The initial noise (h, w, C) of one edit of a height × width image: what the pipeline draws for a
        single edit with this seed, so an edit gives the same result alone, in a batch or in a sweep."""
        return initial_noise(self.pipe.config.vae, seed, 1, height, width)[0]

    def __call__(
        self, sources: np.ndarray, backgrounds: np.ndarray, au: np.ndarray, noise: np.ndarray
    ) -> np.ndarray:
        """A batch of edits: uint8 sources and backgrounds (B, H, W, 3) or one (H, W, 3) for all, AU
        variations (B, 12), initial noise (B, h, w, C) -> uint8 images (B, H, W, 3)."""
        request = self.pipe.prepare(sources, backgrounds, au, latents=noise)
        program, args = self.pipe.compiled(request, self.sampler, self.settings.guidance)
        executable = self._executable(program, args)
        start = time.perf_counter()
        images = to_host(executable(*args))[: request.batch]
        self.timing.run_seconds += time.perf_counter() - start
        return to_uint8(images)

    def _executable(self, program, args):
        leaves, treedef = jax.tree.flatten(args)
        key = (id(program), treedef, tuple((np.shape(leaf), getattr(leaf, "dtype", None)) for leaf in leaves))
        if key not in self._executables:
            start = time.perf_counter()
            lowered = program.lower(*args)
            lowered_at = time.perf_counter()
            self._executables[key] = lowered.compile()
            self.timing.lower_seconds += lowered_at - start
            self.timing.compile_seconds += time.perf_counter() - lowered_at
            self.timing.compilations += 1
        return self._executables[key]
