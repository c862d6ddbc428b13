"""A web app for editing faces by AU: `python -m magicface_jax.app` (see docs/app.md).

`controls` says what the page's controls mean, `service` runs the edits (one at a time per device, a
bounded waiting line), `page` lays out the page, `server` starts it, `__main__` is the command line.
"""
