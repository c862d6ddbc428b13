"""Outputs that appear whole or not at all: write under a temporary name, rename at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from magicface_jax.errors import MagicFaceError


def check_new_output(path: Path, overwrite: bool) -> None:
    """Refuses an existing output (unless overwriting) before any work is done."""
    if path.exists() and not overwrite:
        raise MagicFaceError(f"{path} already exists: choose another output path or pass --overwrite")


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary sibling directory; it becomes `path` only if the block completes."""
    path = Path(path)
    check_new_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield partial
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        partial.rename(path)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yields a temporary sibling file path (same suffix); it replaces `path` only if the block completes."""
    path = Path(path)
    check_new_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.partial-", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    partial = Path(name)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
