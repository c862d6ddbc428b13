"""Starts the page on a local address, with nothing fetched from the network."""

from __future__ import annotations

from magicface_jax.app.page import build_page, gr
from magicface_jax.app.service import EditService
from magicface_jax.assets import AUTHORS_EXAMPLES, DEMO_FACES

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_FILE_SIZE = "25mb"  # an upload beyond it is refused by the server before it reaches the service


def launch(
    service: EditService,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    notice: str | None = None,
    block: bool = True,
) -> gr.Blocks:
    """Serves the page at http://host:port/ (blocking unless `block` is False); the running Blocks."""
    page = build_page(service, notice)
    page.queue(default_concurrency_limit=None)
    page.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(AUTHORS_EXAMPLES), str(DEMO_FACES)],
        ssr_mode=False,
        mcp_server=False,
        share=False,
        quiet=not block,
        show_error=False,
    )
    return page
