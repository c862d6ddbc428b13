"""Per-image AU intensities and identities for `magicface_pairs`, from one of two label layouts.

- A plain CSV with a `file` column (paths relative to the image folder) and one column per AU, spelled any
  accepted way (AU1, AU01, au12, or OpenFace's AU01_r); an optional identity column.
- A folder of OpenFace 2.0 CSVs (`FeatureExtraction -f video.mp4 -aus` or `-fdir frames/`): `NAME.csv`
  labels the frames in the image sub-folder `NAME/`, sorted by file name, row `frame` = k-th frame
  (1-based). Rows with `success` 0 carry no labels. The identity is NAME.

Without an identity column, a person is the first sub-folder of an image's path.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import math
from pathlib import Path

import numpy as np

from magicface_jax.errors import MagicFaceError
from magicface_jax.faces.aus import AU_NAMES, canonical_au, openface_column

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class LabelledImage:
    file: str  # relative to the image folder, '/'-separated
    identity: str
    aus: np.ndarray  # float32 (12,), ordered as AU_NAMES


@dataclasses.dataclass(frozen=True)
class Labels:
    images: tuple[LabelledImage, ...]
    unlabelled: tuple[str, ...]  # images without an AU row (or with a failed OpenFace row)
    missing_files: tuple[str, ...]  # label rows naming no image


def list_images(root: Path) -> list[str]:
    """Image files under `root`, relative and sorted."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, skipinitialspace=True)
            rows = list(reader)
            header = [name.strip() for name in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MagicFaceError(f"cannot read the label file {path}: {err}") from None
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]
    return header, rows


def au_columns(header: list[str], path: Path) -> list[str]:
    """The column of each AU in AU_NAMES order."""
    found: dict[str, str] = {}
    for name in header:
        base = name[:-2] if name.lower().endswith("_r") else name
        try:
            found.setdefault(canonical_au(base), name)
        except MagicFaceError:
            continue  # not an AU intensity (OpenFace's AU01_c presence columns are not either)
    missing = [au for au in AU_NAMES if au not in found]
    if missing:
        raise MagicFaceError(
            f"{path} has no column for {', '.join(missing)}: it needs one intensity column per AU "
            f"({', '.join(AU_NAMES)}; AU01 or {openface_column('AU1')} spellings work too)"
        )
    return [found[au] for au in AU_NAMES]


def _intensities(row: dict[str, str], columns: list[str]) -> np.ndarray | None:
    try:
        values = [float(row[c]) for c in columns]
    except (KeyError, ValueError):
        return None
    return np.asarray(values, np.float32) if all(math.isfinite(v) for v in values) else None


def _identity_of(file: str, row: dict[str, str], identity_column: str | None, path: Path) -> str:
    if identity_column:
        return row.get(identity_column, "")
    parts = file.split("/")
    if len(parts) < 2:
        raise MagicFaceError(
            f"{file} in {path} is not inside a sub-folder and no identity column was given: put each "
            "person's images in their own folder, or name the identity column (--identity-column)"
        )
    return parts[0]


def _labels(images: list[LabelledImage], on_disk: list[str], missing: list[str]) -> Labels:
    labelled = {image.file for image in images}
    if len(labelled) != len(images):
        counts = collections.Counter(image.file for image in images)
        duplicates = sorted(file for file, n in counts.items() if n > 1)[:5]
        raise MagicFaceError(f"images labelled twice: {', '.join(duplicates)}: keep one row per image")
    unlabelled = tuple(f for f in on_disk if f not in labelled)
    return Labels(tuple(images), unlabelled, tuple(missing))


def read_plain_csv(path: Path, root: Path, identity_column: str | None = None) -> Labels:
    header, rows = read_rows(path)
    if "file" not in header:
        raise MagicFaceError(f"{path} has no 'file' column: write it as file,AU1,AU2,...,AU26")
    if identity_column and identity_column not in header:
        raise MagicFaceError(
            f"{path} has no identity column {identity_column!r}; its columns: {', '.join(header)}"
        )
    columns = au_columns(header, path)
    on_disk = list_images(root)
    known = set(on_disk)
    images, missing = [], []
    for row in rows:
        file = row["file"].replace("\\", "/").removeprefix("./")
        if file not in known:
            missing.append(file)
            continue
        aus = _intensities(row, columns)
        identity = _identity_of(file, row, identity_column, path)
        if aus is not None and identity:
            images.append(LabelledImage(file, identity, aus))
    return _labels(images, on_disk, missing)


def read_openface_dir(folder: Path, root: Path) -> Labels:
    csvs = sorted(folder.glob("*.csv"))
    if not csvs:
        raise MagicFaceError(
            f"{folder} holds no OpenFace CSV files (NAME.csv for the frames in {root}/NAME/)"
        )
    on_disk = list_images(root)
    by_folder: dict[str, list[str]] = {}
    for file in on_disk:
        folder_name, _, rest = file.partition("/")
        if rest and "/" not in rest:
            by_folder.setdefault(folder_name, []).append(file)
    images, missing = [], []
    for path in csvs:
        header, rows = read_rows(path)
        if "frame" not in header:
            raise MagicFaceError(
                f"{path} has no 'frame' column: is it an OpenFace 2.0 FeatureExtraction output?"
            )
        columns = au_columns(header, path)
        name = path.stem
        by_frame: dict[int, np.ndarray | None] = {}
        for row in rows:
            try:
                frame = int(float(row["frame"]))
            except ValueError:
                continue
            ok = row.get("success", "1") not in ("0", "0.0")
            by_frame[frame] = _intensities(row, columns) if ok else None
        for k, file in enumerate(by_folder.pop(name, []), start=1):
            aus = by_frame.pop(k, None)
            if aus is not None:
                images.append(LabelledImage(file, name, aus))
        missing += [f"{name}/frame {k}" for k in sorted(by_frame)]
    return _labels(images, on_disk, missing)


def read_labels(labels: Path, root: Path, identity_column: str | None = None) -> Labels:
    """AU labels for the images under `root`, from a plain CSV or a folder of OpenFace CSVs."""
    labels, root = Path(labels), Path(root)
    if not root.is_dir():
        raise MagicFaceError(f"image folder {root} does not exist")
    if labels.is_dir():
        if identity_column:
            raise MagicFaceError(
                "--identity-column applies to a plain CSV; OpenFace CSVs name the person by file"
            )
        return read_openface_dir(labels, root)
    if not labels.is_file():
        raise MagicFaceError(
            f"label file {labels} does not exist: give a CSV file or a folder of OpenFace CSVs"
        )
    return read_plain_csv(labels, root, identity_column)
