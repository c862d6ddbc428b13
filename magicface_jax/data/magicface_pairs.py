"""`magicface_pairs`: (identity, target) pairs of the same person from a folder of images with AU labels.

The build runs in two passes. First each person's candidate pairs (same person, AUs far enough apart) are
drawn in seeded order and their images preprocessed (face crop, background condition) until the cap of
pairs is met; an image that cannot be read or has no face is skipped, counted, and never stops the build.
Then the kept pairs are written. A build report (`build_report.json`) lands next to the dataset files.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from magicface_jax.atomic import atomic_file
from magicface_jax.config import SD15_SIZE_MULTIPLE
from magicface_jax.data import features, pairing
from magicface_jax.data.labels import LabelledImage, read_labels
from magicface_jax.data.png import encode_png
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces.detect import require_face_dependencies
from magicface_jax.faces.preprocess import NoFaceError, preprocess_image
from magicface_jax.images import check_image_size, load_image

REPORT_NAME = "build_report.json"
MASKS = ("person", "face")
LISTED_PER_REASON = 1000  # the report lists at most this many files per reason; counts are exact
_log = logging.getLogger(__name__)

# `preprocess_image`'s contract: preprocess(image uint8 (H,W,3), size=..., mask=...) -> an object with .face,
# .background (uint8 (size, size, 3)) and .landmarks ((68, 2)); raises NoFaceError when there is no face.
Preprocess = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class PairsSpec:
    """What a `magicface_pairs` build reads and how it pairs."""

    images: str  # folder of images; a person per sub-folder unless the labels name them
    labels: str  # plain CSV (file,AU1,...,AU26) or a folder of OpenFace 2.0 CSVs
    identity_column: str | None = None
    resolution: int = 512
    mask: str = "person"  # what the background condition blacks out: the whole person, or the face parts
    pairing: pairing.PairingConfig = dataclasses.field(default_factory=pairing.PairingConfig)

    def __post_init__(self):
        check_image_size(self.resolution, self.resolution, SD15_SIZE_MULTIPLE, "resolution")
        if self.mask not in MASKS:
            raise MagicFaceError(f"mask {self.mask!r}: use one of {', '.join(MASKS)}")


class MagicfacePairsConfig(tfds.core.BuilderConfig):
    def __init__(self, spec: PairsSpec, name: str = "default"):
        super().__init__(name=name, description=str(spec))
        self.spec = spec


@dataclasses.dataclass(frozen=True)
class _PersonTask:
    identity: str
    split: str
    images: tuple[LabelledImage, ...]
    spec: PairsSpec
    cache: str
    preprocess: Preprocess


@dataclasses.dataclass(frozen=True)
class _PersonResult:
    identity: str
    split: str
    pairs: list[tuple[int, int]]  # indices into the task's images
    skipped: dict[str, list[dict[str, str]]]  # reason -> [{'file', 'error'}]
    preprocessed: int


def _cache_path(cache: str, identity_index: int, image_index: int) -> Path:
    return Path(cache) / f"{identity_index}_{image_index}.npz"


def _pair_person(args: tuple[int, _PersonTask]) -> _PersonResult:
    """Draws a person's candidate pairs in order and preprocesses their images until the cap is met."""
    index, task = args
    spec, config = task.spec, task.spec.pairing
    aus = np.stack([image.aus for image in task.images])
    status: dict[int, bool] = {}
    skipped: dict[str, list[dict[str, str]]] = {"unreadable": [], "no_face": []}

    def ready(i: int) -> bool:
        if i not in status:
            image = task.images[i]
            try:
                pixels = load_image(Path(spec.images) / image.file)
            except (MagicFaceError, Image.DecompressionBombError) as err:
                skipped["unreadable"].append({"file": image.file, "error": str(err)})
                status[i] = False
                return False
            try:
                result = task.preprocess(pixels, size=spec.resolution, mask=spec.mask)
            except NoFaceError as err:
                skipped["no_face"].append({"file": image.file, "error": str(err)})
                status[i] = False
                return False
            np.savez(
                _cache_path(task.cache, index, i),
                face=np.frombuffer(encode_png(np.asarray(result.face)), np.uint8),
                background=np.frombuffer(encode_png(np.asarray(result.background)), np.uint8),
                landmarks=np.asarray(result.landmarks, np.float32),
            )
            status[i] = True
        return status[i]

    pairs = []
    rng = pairing.identity_rng(task.identity, config.seed)
    for i, j in pairing.candidate_pairs(aus, config.min_au_change, rng):
        if ready(i) and ready(j):
            pairs.append((i, j))
            if len(pairs) == config.max_pairs_per_identity:
                break
    return _PersonResult(task.identity, task.split, pairs, skipped, sum(status.values()))


class BuildReport:
    """Counts of what a build used and skipped, written as JSON next to the dataset."""

    def __init__(self, name: str, found: int, unlabelled: list[str], label_rows_without_image: list[str]):
        self.name = name
        self.found = found
        self.unlabelled = unlabelled
        self.label_rows_without_image = label_rows_without_image
        self.skipped: dict[str, list[dict[str, str]]] = {"unreadable": [], "no_face": []}
        self.preprocessed = 0
        self.persons: dict[str, int] = {}
        self.persons_without_pairs: list[str] = []
        self.pairs: dict[str, int] = {}

    def add(self, result: _PersonResult) -> None:
        for reason, entries in result.skipped.items():
            self.skipped[reason] += entries
        self.preprocessed += result.preprocessed
        self.persons[result.split] = self.persons.get(result.split, 0) + 1
        self.pairs[result.split] = self.pairs.get(result.split, 0) + len(result.pairs)
        if not result.pairs:
            self.persons_without_pairs.append(result.identity)

    def as_dict(self) -> dict:
        def listed(entries):
            return entries[:LISTED_PER_REASON]

        return {
            "dataset": self.name,
            "images_found": self.found,
            "images_preprocessed": self.preprocessed,
            "pairs": self.pairs,
            "persons": self.persons,
            "persons_without_pairs": len(self.persons_without_pairs),
            "skipped": {
                "no_au_labels": len(self.unlabelled),
                **{reason: len(entries) for reason, entries in self.skipped.items()},
            },
            "label_rows_without_image": len(self.label_rows_without_image),
            "listed": {
                "no_au_labels": listed(self.unlabelled),
                **{reason: listed(entries) for reason, entries in self.skipped.items()},
                "label_rows_without_image": listed(self.label_rows_without_image),
                "persons_without_pairs": listed(self.persons_without_pairs),
            },
        }

    def summary(self) -> str:
        pairs = " + ".join(f"{n} {split}" for split, n in sorted(self.pairs.items())) or "0"
        skipped = ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in self.skipped.items())
        return (
            f"{self.name}: {pairs} pairs from {sum(self.persons.values())} persons; {self.found} images "
            f"found, {self.preprocessed} preprocessed; skipped {skipped}, "
            f"{len(self.unlabelled)} without AU labels"
        )

    def write(self, directory: Path) -> Path:
        path = Path(directory) / REPORT_NAME
        with atomic_file(path, overwrite=True) as partial:
            partial.write_text(json.dumps(self.as_dict(), indent=1) + "\n")
        return path


class MagicfacePairs(tfds.core.GeneratorBasedBuilder):
    """Pairs of one person's images with the AU variation between them; build with `config=
    MagicfacePairsConfig(PairsSpec(...), name)`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}  # noqa: RUF012 (tfds reads a class attribute)

    def __init__(self, *, preprocess: Preprocess | None = None, workers: int = 1, **kwargs):
        """`preprocess` replaces the face preprocessing (the contract of `preprocess_image`); `workers`
        > 1 preprocesses persons in that many processes (`preprocess` must then be picklable)."""
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self._preprocess = preprocess
        self._workers = workers
        self.report: BuildReport | None = None

    @property
    def spec(self) -> PairsSpec:
        return self.builder_config.spec

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    **features.pair_features(self.builder_config.spec.resolution),
                    "identity_file": tfds.features.Text(
                        doc="the identity image, relative to the image folder"
                    ),
                    "target_file": tfds.features.Text(doc="the target image, relative to the image folder"),
                }
            ),
            homepage="https://github.com/weimengting/MagicFace",
        )

    def _download_and_prepare(self, dl_manager, download_config):
        with tempfile.TemporaryDirectory(prefix="magicface_pairs_cache_", dir=self.data_dir_root) as cache:
            self._cache = cache
            super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
        path = self.report.write(self.data_path)  # the unfinished dataset folder, renamed with it
        _log.info("%s; report: %s", self.report.summary(), path)

    def _split_generators(self, dl_manager):
        spec = self.spec
        labels = read_labels(Path(spec.labels), Path(spec.images), spec.identity_column)
        if not labels.images:
            raise MagicFaceError(
                f"no image under {spec.images} has AU labels in {spec.labels}: check that the label file "
                "names the images by their path relative to the image folder"
            )
        preprocess = self._preprocess
        if preprocess is None:
            require_face_dependencies()  # before any work: one clear error, not every image skipped
            preprocess = preprocess_image
        by_person: dict[str, list[LabelledImage]] = {}
        for image in labels.images:
            by_person.setdefault(image.identity, []).append(image)
        found = len(labels.images) + len(labels.unlabelled)
        self.report = BuildReport(
            f"magicface_pairs/{self.builder_config.name}",
            found,
            list(labels.unlabelled),
            list(labels.missing_files),
        )
        pairable = sorted(person for person, images in by_person.items() if len(images) > 1)
        self.report.persons_without_pairs += sorted(set(by_person) - set(pairable))
        if not pairable:
            raise MagicFaceError(f"no person has two labelled images under {spec.images}: nothing to pair")
        tasks = [
            _PersonTask(person, split, tuple(by_person[person]), spec, self._cache, preprocess)
            for split, people in pairing.split_identities(pairable, spec.pairing).items()
            for person in people
        ]
        plan: dict[str, list[tuple[int, _PersonTask, tuple[int, int]]]] = {}
        for index, result in enumerate(self._run(tasks)):
            self.report.add(result)
            plan.setdefault(result.split, []).extend((index, tasks[index], pair) for pair in result.pairs)
        if not any(plan.values()):
            raise MagicFaceError(
                f"no pairs could be made: {self.report.summary()}. Lower --min-au-change, or check the "
                "images and labels"
            )
        return {split: self._generate_examples(pairs) for split, pairs in plan.items() if pairs}

    def _run(self, tasks: list[_PersonTask]) -> Iterator[_PersonResult]:
        if self._workers <= 1:
            yield from map(_pair_person, enumerate(tasks))
            return
        context = multiprocessing.get_context("spawn")  # the caller may run threads (JAX, grain)
        with concurrent.futures.ProcessPoolExecutor(self._workers, mp_context=context) as pool:
            yield from pool.map(_pair_person, enumerate(tasks))

    def _generate_examples(self, pairs) -> Iterator[tuple[str, dict]]:
        for index, task, (i, j) in pairs:
            source, target = task.images[i], task.images[j]
            with (
                np.load(_cache_path(task.cache, index, i)) as a,
                np.load(_cache_path(task.cache, index, j)) as b,
            ):
                yield (
                    f"{task.identity}/{source.file}->{target.file}",
                    {
                        features.IDENTITY_IMAGE: a["face"].tobytes(),
                        features.TARGET_IMAGE: b["face"].tobytes(),
                        features.BACKGROUND: b["background"].tobytes(),
                        features.AU_VARIATION: target.aus - source.aus,
                        "identity_aus": source.aus,
                        "target_aus": target.aus,
                        "identity_id": task.identity,
                        "target_landmarks": b["landmarks"],
                        "identity_file": source.file,
                        "target_file": target.file,
                    },
                )
