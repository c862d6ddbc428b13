"""The project's own exception for user errors.

A `MagicFaceError` says what was wrong, where, and what to do about it. Command-line entry points print
its message on one line and exit with status 2 (see `magicface_jax.cli.run`).
"""


class MagicFaceError(Exception):
    """A problem with what the user gave us (a path, a flag, a checkpoint), not a bug in the library."""
