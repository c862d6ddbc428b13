"""Many edits from a JSON Lines file, checked whole before the first one runs, then run as batches.

One JSON object per line (blank lines are skipped); paths are relative to the file's folder:

    {"image": "a.png", "background": "a_bg.png", "au": {"AU12": 4}, "out": "a_smile.png", "seed": 1}

    image       required  the face crop
    background  optional  its background condition; computed from the face when absent (faces extra)
    au          required  the AU variation: {"AU12": 4, "AU4": -2} or "AU12=+4,AU4=-2"
    out         required  the output image (.png, .jpg, ...); no two lines may write the same file
    seed        optional  the seed of the initial noise (default: the run's seed)

Edits of the same image size are batched together, over every device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from magicface_jax.editing.inputs import EditImages, check_output, prepare_images
from magicface_jax.editing.runner import Editor, batch_shape
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces import aus
from magicface_jax.images import load_image, save_image
from magicface_jax.pipeline import check_seed

FIELDS = ("image", "background", "au", "out", "seed")
REQUIRED = ("image", "au", "out")
LISTED_WRITTEN = 20  # outputs named in the error of a run that stopped


@dataclasses.dataclass(frozen=True)
class EditLine:
    """One edit of the file; `number` is its line number (from 1)."""

    number: int
    image: Path
    background: Path | None
    edit: dict[str, float]
    out: Path
    seed: int


@contextlib.contextmanager
def _at(path: Path, number: int) -> Iterator[None]:
    """Prefixes the message of a `MagicFaceError` raised in the block with the file and line."""
    try:
        yield
    except MagicFaceError as err:
        raise MagicFaceError(f"{path} line {number}: {err}") from None


def _path(value: object, field: str, folder: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise MagicFaceError(f'"{field}" must be a file path (a non-empty string), got {value!r}')
    return folder / Path(value).expanduser()


def _edit(value: object) -> dict[str, float]:
    if isinstance(value, str):
        return aus.parse_edit(value)
    if not isinstance(value, Mapping) or not value:
        raise MagicFaceError(
            f'"au" must be an object such as {{"AU12": 4}} or a string "AU12=+4", got {value!r}'
        )
    edit: dict[str, float] = {}
    for name, intensity in value.items():
        au = aus.canonical_au(name)
        if (
            isinstance(intensity, bool)
            or not isinstance(intensity, int | float)
            or not np.isfinite(intensity)
        ):
            raise MagicFaceError(f"intensity of {au}: {intensity!r} is not a number")
        if au in edit:
            raise MagicFaceError(f'"au" names {au} twice')
        edit[au] = float(intensity)
    return edit


def parse_line(
    text: str,
    number: int,
    folder: Path,
    default_seed: int,
    overwrite: bool = False,
    inputs: Sequence[Path | None] = (),
) -> EditLine:
    """One line's edit; `inputs`: the run's other inputs (the checkpoint), which no output may touch."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise MagicFaceError(f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise MagicFaceError('expected a JSON object such as {"image": ..., "au": ..., "out": ...}')
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise MagicFaceError(f"unknown field(s) {', '.join(unknown)}: the fields are {', '.join(FIELDS)}")
    missing = [field for field in REQUIRED if field not in record]
    if missing:
        raise MagicFaceError(f"missing field(s) {', '.join(missing)}")
    image = _path(record["image"], "image", folder)
    background = record.get("background")
    background = None if background is None else _path(background, "background", folder)
    return EditLine(
        number=number,
        image=image,
        background=background,
        edit=_edit(record["au"]),
        out=check_output(_path(record["out"], "out", folder), (image, background, *inputs), overwrite),
        seed=check_seed(record.get("seed", default_seed), '"seed"'),
    )


def read_edits(
    path: str | Path, default_seed: int, overwrite: bool = False, inputs: Sequence[Path | None] = ()
) -> list[EditLine]:
    """Every edit of a JSONL file; any bad line raises `MagicFaceError` naming its line number. An output
    that exists already is refused unless `overwrite`; `inputs`: the run's other inputs (the checkpoint)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MagicFaceError(f"edits file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise MagicFaceError(f"cannot read edits file {path}: {err}") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            with _at(path, number):
                lines.append(parse_line(line, number, path.parent, default_seed, overwrite, (path, *inputs)))
    if not lines:
        raise MagicFaceError(f"edits file {path} has no edits: write one JSON object per line")
    _check_outputs(path, lines)
    return lines


def _check_outputs(path: Path, lines: Sequence[EditLine]) -> None:
    inputs = {p.resolve() for line in lines for p in (line.image, line.background) if p is not None}
    written: dict[Path, int] = {}
    for line in lines:
        out = line.out.resolve()
        if out in written:
            raise MagicFaceError(f"{path} line {line.number}: writes {line.out} as line {written[out]} does")
        if out in inputs:
            raise MagicFaceError(
                f"{path} line {line.number}: output {line.out} is an input image of this file"
            )
        written[out] = line.number


def load_edit_images(
    path: str | Path,
    lines: Sequence[EditLine],
    *,
    multiple: int,
    size: int | None = None,
    mask: str = "person",
) -> tuple[list[EditImages], list[str]]:
    """Every line's images, read and checked (backgrounds computed where missing), and their notes.
    An image used by several lines is read once."""
    files: dict[Path, np.ndarray] = {}
    prepared: dict[tuple[Path, Path | None], EditImages] = {}
    images, notes = [], []
    for line in lines:
        key = (line.image.resolve(), None if line.background is None else line.background.resolve())
        with _at(Path(path), line.number):
            if key not in prepared:
                for file in (line.image, line.background):
                    if file is not None and file.resolve() not in files:
                        files[file.resolve()] = load_image(file)
                background = None if key[1] is None else files[key[1]]
                prepared[key] = prepare_images(
                    files[key[0]], background, multiple=multiple, size=size, mask=mask
                )
                notes += [f"{path} line {line.number}: {note}" for note in prepared[key].notes]
        images.append(prepared[key])
    return images, notes


def plan_batches(
    images: Sequence[EditImages], batch_size: int, num_devices: int
) -> list[tuple[list[int], int]]:
    """(line indices, batch size to run them at) per batch. Lines of one image size share batches of one
    size, a multiple of the device count, so that each size compiles once (a short batch is padded)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, pair in enumerate(images):
        groups.setdefault(pair.source.shape, []).append(index)
    plan = []
    for indices in groups.values():
        size = batch_shape(len(indices), batch_size, num_devices)
        plan += [(indices[i : i + size], size) for i in range(0, len(indices), size)]
    return plan


def _written(paths: Sequence[Path]) -> str:
    if not paths:
        return "nothing was written"
    listed = ", ".join(map(str, paths[:LISTED_WRITTEN]))
    more = f" and {len(paths) - LISTED_WRITTEN} more" if len(paths) > LISTED_WRITTEN else ""
    return f"{len(paths)} image(s) were written before it: {listed}{more}"


def run_edits(
    editor: Editor,
    path: str | Path,
    lines: Sequence[EditLine],
    images: Sequence[EditImages],
    batch_size: int,
    progress: bool = True,
    overwrite: bool = False,
) -> None:
    """Runs every edit in batches and writes each output (atomically) as soon as its batch is done. A write
    that fails stops the run with an error naming the line and listing what was written before it."""
    written: list[Path] = []
    with tqdm(total=len(lines), unit="edit", disable=not progress) as bar:
        for indices, size in plan_batches(images, batch_size, editor.num_devices):
            padded = indices + [indices[-1]] * (size - len(indices))
            height, width = images[indices[0]].source.shape[:2]
            result = editor(
                np.stack([images[i].source for i in padded]),
                np.stack([images[i].background for i in padded]),
                np.stack([aus.au_vector(lines[i].edit) for i in padded]),
                np.stack([editor.noise(lines[i].seed, height, width) for i in padded]),
            )
            for i, image in zip(indices, result, strict=False):
                try:
                    save_image(image, lines[i].out, overwrite)
                except MagicFaceError as err:
                    raise MagicFaceError(
                        f"{path} line {lines[i].number}: {err}; {_written(written)}"
                    ) from None
                written.append(lines[i].out)
            bar.update(len(indices))
