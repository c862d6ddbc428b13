"""docs/training.md lists every training config key, generated from the config's dataclasses."""

import dataclasses

from docs import config_keys
from magicface_jax.training.config import RunConfig


def _leaf_keys(instance, prefix=""):
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if dataclasses.is_dataclass(value):
            yield from _leaf_keys(value, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}"


def test_the_doc_table_is_the_generated_one():
    section = config_keys.documented_section(config_keys.DOC.read_text())
    assert section == config_keys.generated_section(), "run: python docs/config_keys.py --write"


def test_every_key_is_listed_with_a_meaning():
    rows = config_keys.config_keys()
    assert [row[0] for row in rows] == list(_leaf_keys(RunConfig()))
    assert all(meaning for *_, meaning in rows)


def test_no_description_names_a_key_that_does_not_exist():
    keys = {row[0] for row in config_keys.config_keys()}
    assert set(config_keys.DESCRIPTIONS) <= keys
