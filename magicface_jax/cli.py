"""Shared plumbing for the command-line entry points: one-line errors and exit code 2, one-line warnings."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence

from magicface_jax.errors import MagicFaceError

USAGE_ERROR = 2


class ArgumentParser(argparse.ArgumentParser):
    """An argument parser whose errors are `MagicFaceError`s, so that `run` prints them in one line."""

    def error(self, message: str):
        raise MagicFaceError(f"{message} (see {self.prog} --help)")


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


def run(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Runs `main(argv)`; a `MagicFaceError` becomes `error: <message>` on stderr and exit status 2, and a
    warning becomes `warning: <message>`."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _print_warning
            main(argv)
    except MagicFaceError as err:
        message = " ".join(str(err).split())
        print(f"error: {message}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
