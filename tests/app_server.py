"""A live app server for the tests: a tiny checkpoint with random weights, at a tiny size, on
127.0.0.1 and a free port, in this process (so that its memory can be measured)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from magicface_jax.app.server import launch
from magicface_jax.app.service import EditService, Limits
from magicface_jax.editing.inputs import EditSettings
from tests.random_checkpoint import write_random_checkpoint

HOST = "127.0.0.1"
SIZE = 64
STEPS = 2
GRADIO_TEMP_DIR = "GRADIO_TEMP_DIR"
NOTICE = "a tiny checkpoint with random weights: the edits are noise"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(folder: Path, limits: Limits) -> Iterator[tuple[EditService, str]]:
    """The service and its page's URL, the default program compiled. Gradio keeps its files in `folder`
    (not the temporary folder every Gradio server and client of the machine shares by default)."""
    saved = os.environ.get(GRADIO_TEMP_DIR)
    os.environ[GRADIO_TEMP_DIR] = str(folder / "gradio")
    checkpoint = write_random_checkpoint(folder / "random")
    service = EditService.from_checkpoint(
        checkpoint, SIZE, EditSettings(steps=STEPS), num_devices=1, limits=limits
    )
    service.warm_up().join()
    port = free_port()
    page = launch(service, HOST, port, notice=NOTICE, block=False)
    try:
        yield service, f"http://{HOST}:{port}/"
    finally:
        page.close()
        if saved is None:
            del os.environ[GRADIO_TEMP_DIR]
        else:
            os.environ[GRADIO_TEMP_DIR] = saved
