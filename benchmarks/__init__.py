"""Benchmarks (not tests): run them as scripts, e.g. `python benchmarks/model.py`."""
