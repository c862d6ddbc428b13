"""Every output's rules, in one place: checked before the work, never over an input, whole or not at all.

- An output that is, contains or lies inside one of the command's inputs is refused (`check_output`).
- An existing output is kept unless `overwrite`; even then a folder is replaced only when it is empty or an
  earlier output of ours, recognised by its manifest file and the format recorded in it (`Manifest`).
- One writer per output at a time: a lock file beside it; a second writer gets an error, not a mix.
- The output is written under a partial name beside it and renamed at the end. The rename never replaces a
  path that appeared while the command ran, unless `overwrite`; partial names left by a killed run are
  removed by the next run to the same output.
- Files and folders get the user's umask (not the 0600 / 0700 of `tempfile`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from magicface_jax.errors import MagicFaceError

OVERWRITE_HINT = "choose another output path or pass --overwrite"


def user_path(path: str | os.PathLike[str]) -> Path:
    """A path as the user means it: `~` expanded."""
    return Path(path).expanduser()


def _describe_overlap(output: Path, source: Path) -> str | None:
    out, src = output.resolve(), source.resolve()
    if out == src:
        return "is"
    if src in out.parents:
        return "lies inside"
    if out in src.parents:
        return "contains"
    return None


def check_not_an_input(output: Path, inputs: Sequence[str | os.PathLike[str] | None]) -> None:
    """Refuses an output that is, contains or lies inside one of `inputs`."""
    for source in inputs:
        if source is None:
            continue
        relation = _describe_overlap(output, user_path(source))
        if relation is not None:
            raise MagicFaceError(
                f"output {output} {relation} the input {source}: writing it could destroy the input; "
                "choose an output path outside every input"
            )


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The file that marks a folder as an earlier output of ours, and the `format` values it may hold: every
    version's that `overwrite` may replace."""

    name: str
    formats: tuple[str, ...]

    def marks(self, folder: Path) -> bool:
        try:
            data = json.loads((folder / self.name).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(data, dict) and data.get("format") in self.formats


def is_replaceable(path: Path, manifest: Manifest | None) -> bool:
    """An empty folder, or an earlier output of ours (a folder whose manifest names one of our formats)."""
    if not path.is_dir() or path.is_symlink():
        return False
    return not any(path.iterdir()) or (manifest is not None and manifest.marks(path))


def check_location(path: Path) -> None:
    """The nearest existing ancestor is a folder we may create things in."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise MagicFaceError(f"cannot create {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise MagicFaceError(f"cannot create {path}: no permission to write into {ancestor}")


def check_output(
    path: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str] | None] = (),
    *,
    overwrite: bool = False,
    folder: bool = False,
    manifest: Manifest | None = None,
) -> Path:
    """An output path checked before any work: not an input, the right kind, replaceable if it exists, its
    folder creatable and writable. `folder`: the output is a folder (else a file); `manifest`: what marks a
    folder as an earlier output of ours."""
    path = user_path(path)
    check_not_an_input(path, inputs)
    if path.exists():
        if folder and not path.is_dir():
            raise MagicFaceError(f"output {path} is a file: give a folder path")
        if not folder and path.is_dir():
            raise MagicFaceError(f"output {path} is a folder: give a file path")
        if not overwrite:
            raise MagicFaceError(f"{path} already exists: {OVERWRITE_HINT}")
        if folder and not is_replaceable(path, manifest):
            marker = manifest.name if manifest else "manifest"
            raise MagicFaceError(
                f"{path} is a folder of other files (not empty, no {marker} of an earlier output): "
                "--overwrite replaces only an empty folder or an earlier output; choose another path"
            )
    check_location(path)
    return path


def make_folder(path: Path) -> None:
    """Creates a folder and its parents (with the user's umask), or a one-line error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MagicFaceError(f"cannot create folder {path}: {err.strerror or err}") from None


# ---------------------------------------------------------------------------------- one writer at a time


def _lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Holds the lock of output `path` (a lock file beside it, removed on exit); a second one is refused."""
    lock = _lock_path(path)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MagicFaceError(
                f"another command is writing {path} right now: wait for it to finish, or choose another "
                "output path"
            ) from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break  # the lock file was not replaced between open and flock
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


# -------------------------------------------------------------------------------------- partial outputs


def _partial_prefix(path: Path) -> str:
    return f".{path.name}.partial-"


def _new_partial_name(path: Path) -> Path:
    return path.parent / f"{_partial_prefix(path)}{secrets.token_hex(4)}{path.suffix}"


def remove_leftovers(path: Path) -> list[Path]:
    """Removes the partial outputs a killed run left beside `path` (call it holding `exclusive(path)`)."""
    pattern = re.compile(rf"^{re.escape(_partial_prefix(path))}[0-9a-f]{{8}}{re.escape(path.suffix)}$")
    removed = []
    for entry in path.parent.iterdir() if path.parent.is_dir() else ():
        if pattern.match(entry.name):
            _remove(entry)
            removed.append(entry)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _appeared(path: Path) -> MagicFaceError:
    return MagicFaceError(
        f"{path} appeared while this command ran and was kept (this result was not written): {OVERWRITE_HINT}"
    )


def _publish_directory(partial: Path, path: Path, overwrite: bool, manifest: Manifest | None) -> None:
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise _appeared(path)
        if not is_replaceable(path, manifest):
            raise MagicFaceError(f"{path} is now a folder of other files: it was kept, nothing was written")
        previous = _new_partial_name(path)
        path.rename(previous)  # a partial name: removed below, or by the next run if this one is killed
        partial.rename(path)
        _remove(previous)
        return
    try:
        partial.rename(path)  # replaces nothing: renaming onto a non-empty folder fails
    except OSError as err:
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise _appeared(path) from None
        raise


def _publish_file(partial: Path, path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise MagicFaceError(f"{path} is now a folder: it was kept, nothing was written")
    if overwrite:
        os.replace(partial, path)
        return
    try:
        os.link(partial, path)  # fails if `path` exists, atomically
    except FileExistsError:
        raise _appeared(path) from None
    except OSError:  # a file system without hard links
        if path.exists():
            raise _appeared(path) from None
        os.replace(partial, path)


def _write_error(path: Path, err: OSError) -> MagicFaceError:
    return MagicFaceError(f"cannot write {path}: {err.strerror or err}; nothing of it was kept")


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str],
    overwrite: bool = False,
    *,
    manifest: Manifest | None = None,
    inputs: Sequence[str | os.PathLike[str] | None] = (),
) -> Iterator[Path]:
    """Yields a partial folder beside `path` that becomes `path` only if the block completes."""
    path = check_output(path, inputs, overwrite=overwrite, folder=True, manifest=manifest)
    make_folder(path.parent)
    with exclusive(path):
        remove_leftovers(path)
        partial = _new_partial_name(path)
        try:
            partial.mkdir()
            yield partial
            _publish_directory(partial, path, overwrite, manifest)
        except OSError as err:
            raise _write_error(path, err) from None
        finally:
            _remove(partial)


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str],
    overwrite: bool = False,
    *,
    inputs: Sequence[str | os.PathLike[str] | None] = (),
) -> Iterator[Path]:
    """Yields a partial file path beside `path` (same suffix) that becomes `path` only if the block
    completes."""
    path = check_output(path, inputs, overwrite=overwrite)
    make_folder(path.parent)
    with exclusive(path):
        remove_leftovers(path)
        partial = _new_partial_name(path)
        try:
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            yield partial
            _publish_file(partial, path, overwrite)
        except OSError as err:
            raise _write_error(path, err) from None
        finally:
            partial.unlink(missing_ok=True)
