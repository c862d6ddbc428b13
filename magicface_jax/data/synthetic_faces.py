"""`synthetic_faces`: pairs of procedural faces with exact ground truth, to train and measure MagicFace on a
CPU. A pair shows one person; as in the paper's training pairs, the target differs from the identity image in
pose, scene and AU intensities, so pose and scene can only come from the background condition (a spec option
keeps the identity image's pose and scene instead). Every factor of both images, their masks, their 68
landmarks and both background conditions are stored: the identity image's own condition is what an edit
of it takes at inference. Persons are numbered per split, so no person is in two splits.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from magicface_jax.data import face_params, features
from magicface_jax.data.backgrounds import render_scene
from magicface_jax.data.face_render import render_face
from magicface_jax.data.png import encode_png
from magicface_jax.errors import MagicFaceError
from magicface_jax.faces.jaw_dots import add_layer, jaw_dot_layer

RESOLUTIONS = (64, 128, 512)
SPLITS = ("train", "test")
MIN_VARIATION = 1.0  # the largest |target − identity| of a pair is at least this
FACE_SCALES = (0.5, 1.6)  # beyond 1.6 the face leaves the image
IDENTITY_BACKGROUND = "identity_background"  # the identity image's own background condition


@dataclasses.dataclass(frozen=True)
class SyntheticFacesSpec:
    """What a `synthetic_faces` build contains; equal specs build identical datasets."""

    resolution: int = 128
    train_pairs: int = 2000
    test_pairs: int = 200
    pairs_per_identity: int = 4
    au_active: float = 0.4  # probability that an AU is active in an image
    seed: int = 0
    same_pose_and_scene: bool = False  # True: the target keeps the identity image's pose and scene
    # The face's size in the image: 1 draws it about 0.46 of the image wide; larger faces give the brows,
    # lids and lips (where the AUs act) more pixels, at the cost of less visible scene.
    face_scale: float = 1.0

    def __post_init__(self):
        if self.resolution not in RESOLUTIONS:
            raise MagicFaceError(f"synthetic_faces resolution {self.resolution}: use one of {RESOLUTIONS}")
        if self.train_pairs < 1 or self.test_pairs < 0:
            raise MagicFaceError(
                f"synthetic_faces needs at least 1 train pair and no negative test pairs; got "
                f"{self.train_pairs} and {self.test_pairs}"
            )
        if self.pairs_per_identity < 1:
            raise MagicFaceError(f"pairs per identity must be at least 1, got {self.pairs_per_identity}")
        if not 0 < self.au_active <= 1:
            raise MagicFaceError(f"the AU activation probability must be in (0, 1], got {self.au_active}")
        if not FACE_SCALES[0] <= self.face_scale <= FACE_SCALES[1]:
            raise MagicFaceError(
                f"the face scale must be in [{FACE_SCALES[0]}, {FACE_SCALES[1]}], got {self.face_scale}"
            )
        if not 0 <= self.seed < 2**32:
            raise MagicFaceError(f"the seed must be in [0, 2**32), got {self.seed}")

    @property
    def name(self) -> str:
        """The tfds config name: `128px` for the defaults, every setting spelled out otherwise."""
        if self == SyntheticFacesSpec(resolution=self.resolution):
            return f"{self.resolution}px"
        return (
            f"{self.resolution}px_{self.train_pairs}x{self.test_pairs}_p{self.pairs_per_identity}"
            f"_a{self.au_active:g}_s{self.seed}{'_same' if self.same_pose_and_scene else ''}"
            f"{f'_f{self.face_scale:g}' if self.face_scale != 1 else ''}"
        )


class SyntheticFacesConfig(tfds.core.BuilderConfig):
    def __init__(self, spec: SyntheticFacesSpec):
        super().__init__(name=spec.name, description=str(spec))
        self.spec = spec


def builder_config(spec: SyntheticFacesSpec) -> str | SyntheticFacesConfig:
    """What to pass as `config=`: a registered config by name (tfds refuses a custom config that shares
    its name), a custom config for any other spec."""
    registered = {config.name for config in SyntheticFaces.BUILDER_CONFIGS}
    return spec.name if spec.name in registered else SyntheticFacesConfig(spec)


def _factor_features(cls) -> tfds.features.FeaturesDict:
    specs = {}
    for field in dataclasses.fields(cls):
        if field.type.startswith("tuple"):
            specs[field.name] = tfds.features.Tensor(shape=(3,), dtype=np.float32)
        elif field.type == "int":
            specs[field.name] = tfds.features.Tensor(shape=(), dtype=np.int64)
        else:
            specs[field.name] = tfds.features.Tensor(shape=(), dtype=np.float32)
    return tfds.features.FeaturesDict(specs)


def _factors(value) -> dict:
    return {k: np.asarray(v, np.int64 if isinstance(v, int) else np.float32) for k, v in vars(value).items()}


def background_condition(image: np.ndarray, person_mask: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The scene of uint8 (S, S, 3) `image` with the person (bool (S, S)) black and the 17 jaw dots added
    exactly as the face preprocessing draws them from the 68 landmarks."""
    scene = np.where(person_mask[..., None], np.uint8(0), image)
    return add_layer(scene, jaw_dot_layer(landmarks, image.shape[0]))


def _sample_pair_aus(rng: np.random.Generator, active: float) -> tuple[np.ndarray, np.ndarray]:
    source = face_params.sample_aus(rng, active)
    while True:
        target = face_params.sample_aus(rng, active)
        if np.abs(target - source).max() >= MIN_VARIATION:
            return source, target


def synthetic_example(spec: SyntheticFacesSpec, split: str, index: int) -> dict:
    """Example `index` of `split`: a pure function of the spec, the split and the index."""
    split_code = SPLITS.index(split)
    person = index // spec.pairs_per_identity
    identity = face_params.sample_identity(np.random.default_rng([spec.seed, split_code, person]))
    rng = np.random.default_rng([spec.seed, split_code, person, index])
    source_pose, source_scene = face_params.sample_pose(rng, spec.face_scale), face_params.sample_scene(rng)
    identity_aus, target_aus = _sample_pair_aus(rng, spec.au_active)
    if spec.same_pose_and_scene:
        target_pose, target_scene = source_pose, source_scene
    else:
        target_pose = face_params.sample_pose(rng, spec.face_scale)
        target_scene = face_params.sample_scene(rng)
    source = render_face(identity, source_pose, identity_aus, render_scene(source_scene, spec.resolution))
    target = render_face(identity, target_pose, target_aus, render_scene(target_scene, spec.resolution))
    return {
        features.IDENTITY_IMAGE: encode_png(source.image),
        features.TARGET_IMAGE: encode_png(target.image),
        features.BACKGROUND: encode_png(
            background_condition(target.image, target.person_mask, target.landmarks)
        ),
        IDENTITY_BACKGROUND: encode_png(
            background_condition(source.image, source.person_mask, source.landmarks)
        ),
        features.AU_VARIATION: target_aus - identity_aus,
        "identity_aus": identity_aus,
        "target_aus": target_aus,
        "identity_id": f"{split}-{person:06d}",
        "target_landmarks": target.landmarks,
        "identity_landmarks": source.landmarks,
        "identity_face_mask": encode_png(source.face_mask),
        "target_face_mask": encode_png(target.face_mask),
        "identity_person_mask": encode_png(source.person_mask),
        "target_person_mask": encode_png(target.person_mask),
        "factors": {
            "identity": _factors(identity),
            "identity_pose": _factors(source_pose),
            "identity_scene": _factors(source_scene),
            "target_pose": _factors(target_pose),
            "target_scene": _factors(target_scene),
        },
    }


def _example_task(task: tuple[SyntheticFacesSpec, str, int]) -> tuple[int, dict]:
    spec, split, index = task
    return index, synthetic_example(spec, split, index)


class SyntheticFaces(tfds.core.GeneratorBasedBuilder):
    """Pairs of procedural faces at 64², 128² or 512²; other specs: `config=SyntheticFacesConfig(spec)`."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {  # noqa: RUF012 (tfds reads a class attribute)
        "1.0.0": "First release.",
        "2.0.0": "Targets differ from the identity image in pose and scene; the identity image's background "
        "condition, person mask, pose and scene are stored.",
    }
    BUILDER_CONFIGS = [SyntheticFacesConfig(SyntheticFacesSpec(resolution=r)) for r in RESOLUTIONS]  # noqa: RUF012

    def __init__(self, *, workers: int = 1, **kwargs):
        """`workers` > 1 renders in that many processes; the dataset does not depend on it."""
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self._workers = workers

    @property
    def spec(self) -> SyntheticFacesSpec:
        return self.builder_config.spec

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.spec.resolution
        mask = f"bool ({size}, {size}) as 0/255"
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    **features.pair_features(size),
                    "identity_landmarks": features.landmarks("landmarks of the identity image"),
                    IDENTITY_BACKGROUND: features.png(
                        f"the identity image's own background condition, uint8 ({size}, {size}, 3): what an "
                        "edit of it takes at inference"
                    ),
                    "identity_face_mask": features.png(f"face of the identity image, {mask}"),
                    "target_face_mask": features.png(f"face of the target image, {mask}"),
                    "identity_person_mask": features.png(f"the whole person in the identity image, {mask}"),
                    "target_person_mask": features.png(f"the whole person in the target image, {mask}"),
                    "factors": tfds.features.FeaturesDict(
                        {
                            "identity": _factor_features(face_params.Identity),
                            "identity_pose": _factor_features(face_params.Pose),
                            "identity_scene": _factor_features(face_params.Scene),
                            "target_pose": _factor_features(face_params.Pose),
                            "target_scene": _factor_features(face_params.Scene),
                        }
                    ),
                }
            ),
            homepage="https://github.com/weimengting/MagicFace",
        )

    def _split_generators(self, dl_manager):
        counts = {"train": self.spec.train_pairs, "test": self.spec.test_pairs}
        return {split: self._generate_examples(split, n) for split, n in counts.items() if n > 0}

    def _generate_examples(self, split: str, count: int) -> Iterator[tuple[int, dict]]:
        tasks = ((self.spec, split, i) for i in range(count))
        if self._workers <= 1:
            yield from map(_example_task, tasks)
            return
        context = multiprocessing.get_context("spawn")  # the caller may run threads (JAX, grain)
        with concurrent.futures.ProcessPoolExecutor(self._workers, mp_context=context) as pool:
            yield from pool.map(_example_task, tasks, chunksize=8)
