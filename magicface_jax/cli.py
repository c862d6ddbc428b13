"""Shared plumbing for the command-line entry points: one-line errors and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from magicface_jax.errors import MagicFaceError

USAGE_ERROR = 2


def run(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Runs `main(argv)`; a `MagicFaceError` becomes `error: <message>` on stderr and exit status 2."""
    try:
        main(argv)
    except MagicFaceError as err:
        message = " ".join(str(err).split())
        print(f"error: {message}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
