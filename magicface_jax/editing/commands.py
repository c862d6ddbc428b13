"""The three things `sample.py` does, as functions: one edit, AU sweeps as a grid, a JSONL file of edits.

Each checks everything it was given (checkpoint, images, output paths) before it reads the weights, and
writes its outputs whole or not at all. Progress goes to `log`, remarks about the inputs to `note`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
from jax.sharding import Mesh

from magicface_jax import checkpoint
from magicface_jax.atomic import user_path
from magicface_jax.diffusion import NoiseSchedule, check_steps
from magicface_jax.editing import jsonl
from magicface_jax.editing.inputs import (
    EditImages,
    EditSettings,
    check_output,
    check_size,
    format_edit,
    load_images,
)
from magicface_jax.editing.runner import Editor, check_batch_size
from magicface_jax.editing.sweep import Sweep, check_grid, run_sweeps, sweep_grid
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces import aus
from magicface_jax.images import save_image
from magicface_jax.pipeline import MagicFacePipeline

Log = Callable[[str], None]


def print_note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def load_pipeline(
    directory: str | Path, dtype: str | None = None, mesh: Mesh | None = None
) -> MagicFacePipeline:
    return MagicFacePipeline.from_pretrained(directory, dtype=dtype, mesh=mesh)


def _check_checkpoint(
    directory: str | Path | None, settings: EditSettings, size: int | None
) -> tuple[Path, int]:
    """The checkpoint's path and image-size multiple, with the steps checked against its schedule and
    `size` against that multiple; an incomplete checkpoint fails here, before any image is read."""
    if directory is None:
        raise MagicFaceError("give --checkpoint DIR (a checkpoint made by convert_weights.py), or --demo")
    directory = user_path(directory)
    info = checkpoint.read_info(directory)
    check_steps(settings.steps, NoiseSchedule.from_diffusers(info.scheduler).num_train_timesteps)
    multiple = info.config.size_multiple
    check_size(size, multiple)
    return directory, multiple


def _open(directory: str | Path, settings: EditSettings, dtype: str | None, log: Log) -> Editor:
    start = time.perf_counter()
    pipe = load_pipeline(directory, dtype)
    log(
        f"loaded {directory} ({pipe.config.dtype}, {pipe.num_devices} device(s)) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return Editor(pipe, settings)


def _report(editor: Editor, count: int, log: Log) -> None:
    timing = editor.timing
    log(
        f"compiled {timing.compilations} program(s): traced in {timing.lower_seconds:.1f} s, compiled in "
        f"{timing.compile_seconds:.1f} s; "
        f"ran {count} edit(s) in {timing.run_seconds:.2f} s ({timing.run_seconds / count:.2f} s per edit)"
    )


def _describe(images: EditImages, settings: EditSettings, seed: int) -> str:
    height, width = images.source.shape[:2]
    sampling = f"{settings.steps} {settings.sampler} steps, guidance {settings.guidance}"
    return f"{width}x{height}, {sampling}, seed {seed}"


def _inputs(
    checkpoint_dir: str | Path | None,
    settings: EditSettings,
    image: str | Path,
    background: str | Path | None,
    out: str | Path,
    overwrite: bool,
    size: int | None,
    mask: str,
    note: Log,
) -> tuple[Path, Path, EditImages]:
    """The checkpoint, the output path and the images of one face, all checked before any weight is read."""
    checkpoint_dir, multiple = _check_checkpoint(checkpoint_dir, settings, size)
    out = check_output(out, (image, background, checkpoint_dir), overwrite)
    images = load_images(image, background, multiple=multiple, size=size, mask=mask)
    for message in images.notes:
        note(message)
    return checkpoint_dir, out, images


def edit_image(
    checkpoint_dir: str | Path | None,
    image: str | Path,
    background: str | Path | None,
    edit: Mapping[str, float],
    out: str | Path,
    settings: EditSettings,
    seed: int,
    *,
    dtype: str | None = None,
    size: int | None = None,
    mask: str = "person",
    overwrite: bool = False,
    log: Log = print,
    note: Log = print_note,
) -> Path:
    """One edit of a face crop; writes `out` (an existing one only if `overwrite`) and returns its path."""
    checkpoint_dir, out, images = _inputs(
        checkpoint_dir, settings, image, background, out, overwrite, size, mask, note
    )
    editor = _open(checkpoint_dir, settings, dtype, log)
    log(f"editing {image} ({_describe(images, settings, seed)}): {format_edit(edit)}")
    height, width = images.source.shape[:2]
    result = editor(
        images.source, images.background, aus.au_vector(edit)[None], editor.noise(seed, height, width)[None]
    )
    _report(editor, 1, log)
    save_image(result[0], out, overwrite)
    log(f"wrote {out}")
    return out


def edit_sweep(
    checkpoint_dir: str | Path | None,
    image: str | Path,
    background: str | Path | None,
    sweeps: Sequence[Sweep],
    base: Mapping[str, float],
    out: str | Path,
    settings: EditSettings,
    seed: int,
    *,
    batch_size: int | None = None,
    dtype: str | None = None,
    size: int | None = None,
    mask: str = "person",
    overwrite: bool = False,
    log: Log = print,
    note: Log = print_note,
) -> Path:
    """A grid of AU sweeps of one face (see `sweep.py`), each row in batches of `batch_size` (default: one
    per device); writes `out` (an existing one only if `overwrite`) and returns its path."""
    batch_size = check_batch_size(batch_size, jax.device_count())
    checkpoint_dir, out, images = _inputs(
        checkpoint_dir, settings, image, background, out, overwrite, size, mask, note
    )
    check_grid(sweeps, *images.source.shape[:2])
    editor = _open(checkpoint_dir, settings, dtype, log)
    on_top = f" on top of {format_edit(base)}" if base else ""
    names = ", ".join(f"{s.au} over {len(s.values)} values" for s in sweeps)
    log(f"sweeping {image} ({_describe(images, settings, seed)}): {names}{on_top}")
    rows = run_sweeps(editor, images, sweeps, base, seed, batch_size or editor.num_devices)
    _report(editor, sum(len(s.values) for s in sweeps), log)
    save_image(sweep_grid(images.source, sweeps, rows, base), out, overwrite)
    log(f"wrote {out} ({len(sweeps)} row(s): the source, then one column per intensity)")
    return out


def edit_file(
    checkpoint_dir: str | Path | None,
    edits: str | Path,
    settings: EditSettings,
    seed: int,
    *,
    batch_size: int | None = None,
    dtype: str | None = None,
    size: int | None = None,
    mask: str = "person",
    overwrite: bool = False,
    progress: bool = True,
    log: Log = print,
    note: Log = print_note,
) -> list[Path]:
    """Every edit of a JSONL file (see `jsonl.py`) in batches; returns the paths written. `batch_size`:
    edits per batch, rounded up to a multiple of the device count (default: one per device); existing
    outputs are replaced only if `overwrite`."""
    batch_size = check_batch_size(batch_size, jax.device_count())
    checkpoint_dir, multiple = _check_checkpoint(checkpoint_dir, settings, size)
    lines = jsonl.read_edits(edits, seed, overwrite, (checkpoint_dir,))
    images, notes = jsonl.load_edit_images(edits, lines, multiple=multiple, size=size, mask=mask)
    for message in notes:
        note(message)
    editor = _open(checkpoint_dir, settings, dtype, log)
    batch_size = batch_size or editor.num_devices
    log(
        f"editing {len(lines)} image(s) from {edits} ({settings.steps} {settings.sampler} steps, guidance "
        f"{settings.guidance}), up to {batch_size} per batch"
    )
    jsonl.run_edits(editor, edits, lines, images, batch_size, progress=progress, overwrite=overwrite)
    _report(editor, len(lines), log)
    log(f"wrote {len(lines)} image(s), as listed in {edits}")
    return [line.out for line in lines]
