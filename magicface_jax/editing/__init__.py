"""Editing portraits from files: checked inputs, batched runs, AU sweeps and JSONL files of edits.

`commands` holds what `sample.py` does; `inputs`, `runner`, `sweep` and `jsonl` the parts it is made of.
"""
