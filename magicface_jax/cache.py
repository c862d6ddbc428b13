"""Where the command-line tools keep generated files: the demo checkpoint, JAX's compilation cache and the
person segmentation model of the face preprocessing.

The root is `$MAGICFACE_JAX_CACHE`, else `$XDG_CACHE_HOME/magicface-jax`, else `~/.cache/magicface-jax`.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MAGICFACE_JAX_CACHE"
OFF = "off"
COMPILATION_CACHE_HELP = (
    f"JAX's persistent compilation cache, or '{OFF}' (default: JAX_COMPILATION_CACHE_DIR, else "
    f"<${CACHE_ENV} or ~/.cache/magicface-jax>/xla)"
)


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "magicface-jax"


def enable_compilation_cache(directory: str | Path | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache, so that a later run loads its programs instead of
    compiling them again; returns the directory in use, or None when off.

    `directory`: a folder, "off", or None for the folder JAX was already given (`JAX_COMPILATION_CACHE_DIR`)
    or else `<cache root>/xla`. Call it before the first compilation: JAX opens its cache only once.
    """
    import jax  # here, so that the cache root needs no JAX (the face preprocessing reads it)

    if directory == OFF:
        return None
    if directory is None:
        directory = jax.config.jax_compilation_cache_dir or cache_root() / "xla"
    jax.config.update("jax_compilation_cache_dir", str(directory))
    return str(directory)
