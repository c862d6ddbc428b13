"""The person mask of the background condition, by the segmentation model and by GrabCut.

    python benchmarks/person_mask.py

On the authors' three examples: IoU of each method's black region against theirs (the pixels under their
jaw dots left out, as tests/test_faces_authors_examples.py does). On the shipped photos (no mask of theirs
exists): the share of the crop each method blacks out, and the IoU of the two. Needs the faces extra and
the model (`python -m magicface_jax.faces.person_model`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magicface_jax.assets import AUTHORS_EXAMPLES
from magicface_jax.cli import ArgumentParser, run
from magicface_jax.errors import MagicFaceError

EXAMPLES = ("00025", "00381", "00512")


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _photos() -> dict[str, np.ndarray]:
    from matplotlib import cbook
    from skimage import data

    with cbook.get_sample_data("grace_hopper.jpg") as file:
        grace_hopper = np.asarray(Image.open(file).convert("RGB"))
    return {"astronaut": data.astronaut(), "grace_hopper": grace_hopper}


def iou(a: np.ndarray, b: np.ndarray, ignore: np.ndarray | None = None) -> float:
    keep = np.ones(a.shape, bool) if ignore is None else ~ignore
    return float((a & b & keep).sum() / ((a | b) & keep).sum())


def their_black_region(face: np.ndarray, theirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(their black region, the pixels under their dots)."""
    from scipy import ndimage

    black = theirs.max(axis=-1) == 0
    dots = ndimage.binary_dilation((theirs != face).any(-1) & ~black, iterations=3)
    return black, dots


def main(argv=None) -> None:
    ArgumentParser(description=__doc__).parse_args(argv)
    from magicface_jax.faces import person_model
    from magicface_jax.faces.preprocess import build_background, preprocess_image
    from magicface_jax.faces.segment import grabcut_mask, model_person_mask

    if not person_model.is_installed():
        raise MagicFaceError(
            "the person segmentation model is not installed: python -m magicface_jax.faces.person_model"
        )

    print("| example | IoU GrabCut | IoU model | black: GrabCut / model / theirs |")
    print("| --- | --- | --- | --- |")
    for name in EXAMPLES:
        face, theirs = _rgb(AUTHORS_EXAMPLES / f"{name}.png"), _rgb(AUTHORS_EXAMPLES / f"{name}_bg.png")
        landmarks = build_background(face).landmarks
        before, after = grabcut_mask(face, landmarks, "person"), model_person_mask(face, landmarks)
        black, dots = their_black_region(face, theirs)
        print(
            f"| {name} | {iou(before, black, dots):.3f} | {iou(after, black, dots):.3f} | "
            f"{before.mean():.1%} / {after.mean():.1%} / {black.mean():.1%} |"
        )
    print()
    print("| photo | black: GrabCut / model | IoU GrabCut vs model |")
    print("| --- | --- | --- |")
    for name, photo in _photos().items():
        result = preprocess_image(photo)
        before = grabcut_mask(result.face, result.landmarks, "person")
        after = model_person_mask(result.face, result.landmarks)
        print(f"| {name} | {before.mean():.1%} / {after.mean():.1%} | {iou(before, after):.3f} |")


if __name__ == "__main__":
    sys.exit(run(main))
