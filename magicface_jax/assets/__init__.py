"""Data files that ship with the package."""

from pathlib import Path

# The authors' three example face crops and their background conditions (see its README.md).
AUTHORS_EXAMPLES = Path(__file__).parent / "authors_examples"
