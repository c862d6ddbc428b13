"""The editing service behind the page: prepares faces, runs edits and sweeps one at a time per device
with a bounded number waiting, and compiles the default program in the background at start-up.

A request that finds every device busy and `Limits.max_waiting` requests already waiting is refused at
once with `ServerBusy`, instead of queueing without end. Compiled programs are kept per device (the
most recent `Limits.max_programs`), shared by every sampling setting that compiles to the same program
(the guidance scale is an argument of the program, not part of it).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import jax
import numpy as np
from PIL import Image, UnidentifiedImageError

from magicface_jax.editing.inputs import EditImages, EditSettings, prepare_images
from magicface_jax.editing.runner import Editor
from magicface_jax.editing.sweep import Sweep, run_sweeps, sweep_grid
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces import aus
from magicface_jax.faces import preprocess as faces
from magicface_jax.images import load_image
from magicface_jax.parallel.mesh import data_mesh
from magicface_jax.pipeline import MagicFacePipeline

Progress = Callable[[str], None]
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Limits:
    max_waiting: int = 4  # requests waiting for a device, beyond those running
    max_pixels: int = 40_000_000  # of an uploaded image
    max_programs: int = 8  # compiled programs kept per device
    max_prepared: int = 8  # prepared photos kept, so that editing one again skips the face detection


class ServerBusy(MagicFaceError):
    """Every device is editing and the waiting line is full."""


class LRU(collections.OrderedDict):
    """A mapping that keeps its `capacity` most recently used entries."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def __getitem__(self, key):
        self.move_to_end(key)
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


@dataclasses.dataclass
class Device:
    """One device's pipeline and its compiled programs."""

    pipe: MagicFacePipeline
    executables: LRU
    compiled: LRU  # what has run here: (height, width, batch, steps, sampler, guided) -> True

    def editor(self, settings: EditSettings) -> Editor:
        return Editor(self.pipe, settings, executables=self.executables)

    def describe(self, settings: EditSettings, height: int, width: int, batch: int) -> str:
        """What the next run does: compile first (the first edit of its kind) or just sample."""
        what = f"{settings.steps} {settings.sampler} steps at {width}x{height}"
        if batch > 1:
            what += f", {batch} images"
        if self._key(settings, height, width, batch) in self.compiled:
            return f"sampling {what}"
        return f"compiling the program for {what} (the first edit of its kind; later ones are faster)"

    def ran(self, settings: EditSettings, height: int, width: int, batch: int) -> None:
        self.compiled[self._key(settings, height, width, batch)] = True

    @staticmethod
    def _key(settings: EditSettings, height: int, width: int, batch: int) -> tuple:
        return (height, width, batch, settings.steps, settings.sampler, settings.guidance != 1.0)


class DeviceSlots:
    """Hands out one device at a time to each request, with at most `max_waiting` requests waiting."""

    def __init__(self, devices: Sequence[Device], max_waiting: int):
        self._free: queue.Queue[Device] = queue.Queue()
        for device in devices:
            self._free.put(device)
        self._admitted = threading.BoundedSemaphore(len(devices) + max_waiting)
        self.max_waiting = max_waiting

    @contextlib.contextmanager
    def acquire(self) -> Iterator[Device]:
        if not self._admitted.acquire(blocking=False):
            raise ServerBusy(
                f"the server is busy: every device is editing and {self.max_waiting} edit(s) are waiting; "
                "try again in a moment"
            )
        try:
            device = self._free.get()
            try:
                yield device
            finally:
                self._free.put(device)
        finally:
            self._admitted.release()


def _content_key(path: Path, *extra: object) -> str:
    digest = hashlib.sha256(path.read_bytes())
    for item in extra:
        digest.update(repr(item).encode())
    return digest.hexdigest()


class EditService:
    """Edits faces at `size` × `size` with one pipeline per device."""

    def __init__(
        self,
        pipes: Sequence[MagicFacePipeline],
        size: int,
        default_settings: EditSettings,
        limits: Limits = Limits(),
        mask: str = "person",
    ):
        if not pipes:
            raise MagicFaceError("the app needs at least one device")
        self.size = size
        self.default_settings = default_settings
        self.limits = limits
        self.mask = mask
        self.multiple = pipes[0].config.size_multiple
        self.devices = [Device(pipe, LRU(limits.max_programs), LRU(limits.max_programs)) for pipe in pipes]
        self.slots = DeviceSlots(self.devices, limits.max_waiting)
        self._prepared = LRU(limits.max_prepared)
        self._prepared_lock = threading.Lock()

    @classmethod
    def from_checkpoint(
        cls,
        directory: str | Path,
        size: int,
        default_settings: EditSettings | None = None,
        *,
        num_devices: int | None = None,
        dtype: str | None = None,
        limits: Limits = Limits(),
    ) -> EditService:
        """Loads the checkpoint once and places a copy on each of the first `num_devices` local devices
        (default: all). `default_settings`: the page's starting values (default: the checkpoint's
        measured steps, or the authors' 50)."""
        devices = jax.local_devices()
        if num_devices is not None:
            if not 1 <= num_devices <= len(devices):
                raise MagicFaceError(f"--devices {num_devices}: this machine has {len(devices)} device(s)")
            devices = devices[:num_devices]
        first = MagicFacePipeline.from_pretrained(directory, dtype=dtype, mesh=data_mesh(devices[:1]))
        pipes = [first] + [
            MagicFacePipeline(
                first.config,
                first.params,
                first.prompt_embeds,
                first.schedule,
                data_mesh([d]),
                first.default_steps,
            )
            for d in devices[1:]
        ]
        return cls(pipes, size, default_settings or EditSettings(steps=first.default_steps), limits)

    # ------------------------------------------------------------------------------------------ inputs

    def read_image(self, path: str | Path | None, what: str) -> np.ndarray:
        """An uploaded image as uint8 (H, W, 3), EXIF orientation applied; refused over `max_pixels`."""
        if path is None:
            raise MagicFaceError(f"no {what} given: upload one")
        path = Path(path)
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
            raise MagicFaceError(
                f"the {what} is not an image this app can read: give a JPEG, PNG or WebP"
            ) from None
        if width * height > self.limits.max_pixels:
            raise MagicFaceError(
                f"the {what} is {width}x{height} ({width * height / 1e6:.1f} megapixels): the limit is "
                f"{self.limits.max_pixels / 1e6:g} megapixels; downscale it"
            )
        try:
            return load_image(path)
        except MagicFaceError:
            raise MagicFaceError(f"the {what} is damaged or not an image: give a JPEG, PNG or WebP") from None

    def prepare_photo(self, path: str | Path | None) -> EditImages:
        """A photo's face crop and background condition at the service's size (the largest face)."""
        photo = self.read_image(path, "photo")
        key = _content_key(Path(path), self.size, self.mask)
        with self._prepared_lock:
            if key in self._prepared:
                return self._prepared[key]
        result = faces.preprocess_image(photo, size=self.size, mask=self.mask)
        images = EditImages(result.face, result.background, result.notes)
        with self._prepared_lock:
            self._prepared[key] = images
        return images

    def prepare_pair(self, face: str | Path | None, background: str | Path | None) -> EditImages:
        """A prepared face crop and its background condition (computed when None), resized to the
        service's size."""
        source = self.read_image(face, "face crop")
        condition = None if background is None else self.read_image(background, "background condition")
        for image, what in ((source, "face crop"), (condition, "background condition")):
            if image is not None and image.shape[0] != image.shape[1]:
                raise MagicFaceError(
                    f"the {what} is {image.shape[1]}x{image.shape[0]}: a prepared face crop and its "
                    "background are square; upload the photo instead to crop it"
                )
        return prepare_images(source, condition, multiple=self.multiple, size=self.size, mask=self.mask)

    # ------------------------------------------------------------------------------------------- edits

    def edit(
        self,
        images: EditImages,
        au: np.ndarray,
        settings: EditSettings,
        seed: int,
        progress: Progress = lambda _: None,
    ) -> np.ndarray:
        """One edit: uint8 (H, W, 3)."""
        height, width = images.source.shape[:2]
        progress("waiting for a free device")
        with self.slots.acquire() as device:
            editor = device.editor(settings)
            progress(device.describe(settings, height, width, 1))
            noise = editor.noise(seed, height, width)[None]
            result = editor(images.source, images.background, au[None], noise)[0]
            device.ran(settings, height, width, 1)
        return result

    def sweep(
        self,
        images: EditImages,
        sweep: Sweep,
        base: Mapping[str, float],
        settings: EditSettings,
        seed: int,
        progress: Progress = lambda _: None,
    ) -> np.ndarray:
        """A row of edits with one AU at each of the sweep's values on top of `base`: the grid image."""
        height, width = images.source.shape[:2]
        batch = len(sweep.values)
        progress("waiting for a free device")
        with self.slots.acquire() as device:
            editor = device.editor(settings)
            progress(device.describe(settings, height, width, batch))
            rows = run_sweeps(editor, images, [sweep], base, seed, editor.num_devices)
            device.ran(settings, height, width, batch)
        return sweep_grid(images.source, [sweep], rows, base)

    def warm_up(self) -> threading.Thread:
        """Compiles the program of a default edit on every device, in the background; the thread."""

        def run():
            blank = np.zeros((self.size, self.size, 3), np.uint8)
            images = EditImages(blank, blank)
            zero = np.zeros(aus.NUM_AUS, np.float32)
            try:
                for _ in self.devices:
                    self.edit(images, zero, self.default_settings, 0)
            except Exception:  # the server goes on; the first edit compiles instead
                log.exception("compiling the default program at start-up failed")

        thread = threading.Thread(target=run, name="magicface-warm-up", daemon=True)
        thread.start()
        return thread
