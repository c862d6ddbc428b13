"""Data files that ship with the package."""

from pathlib import Path

# The authors' three example face crops and their background conditions (see its README.md).
AUTHORS_EXAMPLES = Path(__file__).parent / "authors_examples"
# The synthetic estimator for 64² synthetic_faces (docs/evaluation.md gives the command that made it).
SYNTHETIC_ESTIMATOR = Path(__file__).parent / "synthetic_estimator"
# The demo: a MagicFace trained on synthetic faces and portraits it never saw (magicface_jax.demo).
DEMO_MODEL = Path(__file__).parent / "demo_model"
DEMO_FACES = Path(__file__).parent / "demo_faces"
