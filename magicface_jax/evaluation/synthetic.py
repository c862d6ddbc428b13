"""The synthetic world's estimator: a small JAX CNN trained on `synthetic_faces` images to read back every
factor an evaluation needs: the 12 AU intensities, the identity factors (colours and face shape, the
identity embedding) and the head pose (yaw and in-plane roll; the synthetic world has no pitch, so pitch is
0 by construction and is returned as 0).

    config = RegressorConfig(input_size=64)
    estimator = train_estimator(config, spec, train_pairs=2000, test_pairs=200, steps=3000)
    estimator.save("runs/estimator");  estimator = SyntheticEstimator.load("runs/estimator")
    estimator.aus(images), estimator.embed(images), estimator.pose(images), estimator.held_out()

Targets are standardized by their training mean and standard deviation; the loss is the mean squared error
averaged within each group (AUs, identity, pose) and then over the groups, so that the 33 identity numbers
do not drown the 2 pose angles. The identity embedding is the standardized identity estimate: ID L2 is a
distance in standard deviations of the synthetic persons' factors. `held_out()` reports, on the test
split's persons (never seen in training), the AU MSE and pose RMSE against the truth, next to what a
constant predictor (the training mean) scores, and the embedding's distance between two images of one
person against that between different persons.

Every image an edit returns has been through the frozen VAE, which blurs what it does not drop. An
estimator trained on renderings alone misreads that blur (the round trip of an unedited face scores a
worse AU MSE than the face itself), so a world with a lossy VAE trains it on each image and its VAE
round trip alike (`with_reconstructions`), and reports its held-out errors on both.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from PIL import Image

from magicface_jax.atomic import atomic_directory
from magicface_jax.data import face_params, features
from magicface_jax.data.png import decode_png
from magicface_jax.errors import MagicFaceError
from magicface_jax.images import to_model_input

LABEL = "synthetic regressor"
CONFIG_FILE = "estimator.json"
PARAMS_FILE = "params.msgpack"
IDENTITY_FIELDS = tuple(
    f.name for f in dataclasses.fields(face_params.Identity) if f.type != "int"
)  # colours (3 each) and shape numbers; the hair style and seeds are categorical
POSE_FIELDS = ("yaw", "rotation")  # rotation is the in-plane roll
GROUPS = ("aus", "identity", "pose")


def face_crop(face_scale: float) -> tuple[float, float, float, float]:
    """The crop that holds every face of a `synthetic_faces` world drawn at `face_scale`, in the image."""
    centre_x, centre_y, half = 0.5, 0.57, 0.35 * face_scale
    box = (centre_x - half, centre_y - half, centre_x + half, centre_y + half)
    return tuple(round(min(1.0, max(0.0, v)), 4) for v in box)


@dataclasses.dataclass(frozen=True)
class RegressorConfig:
    # The network sees the box `crop` (left, top, right, bottom as fractions of the image) resized to
    # `input_size`²: every synthetic face lies inside it whatever its pose, and the face then fills most of
    # the input, so the small brow, lid and lip changes of the AUs span more pixels.
    crop: tuple[float, float, float, float] = face_crop(1.0)
    input_size: int = 64
    widths: tuple[int, ...] = (16, 32, 64, 128)  # one stride-2 convolution (and one plain one) per width
    hidden: int = 128
    shift: int = 3  # training images move by up to this many pixels, and half of them are mirrored
    learning_rate: float = 2e-3
    batch_size: int = 32
    seed: int = 0


def identity_vector(factors: dict) -> np.ndarray:
    """The continuous identity factors of a record's `factors["identity"]`, flattened (33,)."""
    return np.concatenate([np.ravel(np.asarray(factors[name], np.float32)) for name in IDENTITY_FIELDS])


def _pose_vector(pose: dict) -> np.ndarray:
    return np.array([pose[name] for name in POSE_FIELDS], np.float32)


@dataclasses.dataclass(frozen=True)
class LabelledImages:
    images: np.ndarray  # uint8 (N, S, S, 3)
    targets: dict[str, np.ndarray]  # "aus" (N, 12), "identity" (N, 33), "pose" (N, 2): yaw, roll in degrees
    person: np.ndarray  # (N,) str: who is shown


def labelled_images(records) -> LabelledImages:
    """Both images of each `synthetic_faces` record (a pair) with their ground truth."""
    images, targets, people = [], {group: [] for group in GROUPS}, []
    for record in records:
        factors = record["factors"]
        for image, aus, pose in (
            (features.IDENTITY_IMAGE, "identity_aus", "identity_pose"),
            (features.TARGET_IMAGE, "target_aus", "target_pose"),
        ):
            images.append(decode_png(record[image]))
            targets["aus"].append(np.asarray(record[aus], np.float32))
            targets["identity"].append(identity_vector(factors["identity"]))
            targets["pose"].append(_pose_vector(factors[pose]))
            people.append(str(record["identity_id"]))
    return LabelledImages(np.stack(images), {k: np.stack(v) for k, v in targets.items()}, np.array(people))


def with_reconstructions(data: LabelledImages, reconstruct: Callable[[np.ndarray], np.ndarray]):
    """`data` followed by its images' reconstructions (`reconstruct`: uint8 images -> uint8 images, such
    as a VAE's round trip), with the same truth and persons."""
    return LabelledImages(
        np.concatenate([data.images, reconstruct(data.images)]),
        {group: np.concatenate([v, v]) for group, v in data.targets.items()},
        np.concatenate([data.person, data.person]),
    )


def rendered_records(spec, split: str, count: int) -> list[dict]:
    from magicface_jax.data.synthetic_faces import synthetic_example

    return [synthetic_example(spec, split, i) for i in range(count)]


class Regressor(nn.Module):
    config: RegressorConfig
    outputs: int

    @nn.compact
    def __call__(self, x):
        for width in self.config.widths:
            x = nn.gelu(nn.Conv(width, (3, 3), strides=2)(x))
            x = nn.gelu(nn.Conv(width, (3, 3))(x))
        # Averaged over positions, not flattened: a flattened map let the dense layer memorise the training
        # persons (held-out AU and identity errors no better than a constant's).
        x = nn.gelu(nn.Dense(self.config.hidden)(x.mean((1, 2))))
        return nn.Dense(self.outputs)(x)


def augment(images: np.ndarray, targets: dict[str, np.ndarray], shift: int, rng: np.random.Generator):
    """Random shifts of up to `shift` pixels and mirroring of half the images; a mirror negates the yaw
    and the roll (AUs and identity factors are symmetric)."""
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    size = images.shape[1]
    offsets = rng.integers(0, 2 * shift + 1, size=(len(images), 2))
    moved = np.stack([p[dy : dy + size, dx : dx + size] for p, (dy, dx) in zip(padded, offsets, strict=True)])
    mirror = rng.uniform(size=len(images)) < 0.5
    moved[mirror] = moved[mirror, :, ::-1]
    pose = targets["pose"].copy()
    pose[mirror] *= -1
    return moved, {**targets, "pose": pose}


def network_input(images: np.ndarray, config: RegressorConfig) -> np.ndarray:
    """uint8 images (N, S, S, 3) -> the crop the network sees, resized, uint8 (N, input, input, 3)."""
    size = images.shape[1]
    box = tuple(round(f * size) for f in config.crop)
    target = (config.input_size, config.input_size)
    return np.stack(
        [np.asarray(Image.fromarray(x).resize(target, Image.Resampling.BILINEAR, box=box)) for x in images]
    )


@dataclasses.dataclass(frozen=True)
class Normalization:
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    @classmethod
    def fit(cls, targets: dict[str, np.ndarray]) -> Normalization:
        return cls(
            {k: v.mean(0) for k, v in targets.items()},
            {k: np.maximum(v.std(0), 1e-3) for k, v in targets.items()},
        )

    def flatten(self, targets: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([(targets[g] - self.mean[g]) / self.std[g] for g in GROUPS], -1)

    def sizes(self) -> list[int]:
        return [len(self.mean[g]) for g in GROUPS]

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Standardized outputs (N, D) -> standardized groups."""
        bounds = np.cumsum(self.sizes())[:-1]
        return dict(zip(GROUPS, np.split(flat, bounds, axis=-1), strict=True))

    def to_json(self) -> dict:
        return {
            "mean": {k: v.tolist() for k, v in self.mean.items()},
            "std": {k: v.tolist() for k, v in self.std.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> Normalization:
        return cls(
            {k: np.asarray(v, np.float32) for k, v in data["mean"].items()},
            {k: np.asarray(v, np.float32) for k, v in data["std"].items()},
        )


def _group_loss(sizes: list[int]) -> Callable:
    bounds = np.cumsum(sizes)[:-1].tolist()

    def loss(pred, target):
        squared = (pred - target) ** 2
        return jnp.mean(jnp.stack([part.mean() for part in jnp.split(squared, bounds, axis=-1)]))

    return loss


@functools.cache
def _predictor(config: RegressorConfig, outputs: int) -> Callable:
    model = Regressor(config, outputs)
    return jax.jit(lambda params, x: model.apply({"params": params}, x))


class SyntheticEstimator:
    """The trained regressor as an `AUEstimator`, `IdentityEmbedder` and `PoseEstimator` at once."""

    label = LABEL

    def __init__(self, config: RegressorConfig, params, normalization: Normalization, held_out: dict):
        self.config = config
        self.params = params
        self.normalization = normalization
        self._held_out = held_out
        self._apply = _predictor(config, sum(normalization.sizes()))

    def standardized(self, images: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
        images = network_input(np.asarray(images, np.uint8), self.config)
        flat = np.concatenate(
            [
                np.asarray(self._apply(self.params, to_model_input(images[i : i + batch])))
                for i in range(0, len(images), batch)
            ]
        )
        return self.normalization.split(flat)

    def _natural(self, images: np.ndarray, group: str) -> np.ndarray:
        n = self.normalization
        return self.standardized(images)[group] * n.std[group] + n.mean[group]

    def aus(self, images: np.ndarray, names: Sequence[str] = ()) -> np.ndarray:
        return self._natural(images, "aus")

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self.standardized(images)["identity"]

    def pose(self, images: np.ndarray) -> np.ndarray:
        yaw_roll = self._natural(images, "pose")
        return np.stack([yaw_roll[:, 0], np.zeros(len(yaw_roll)), yaw_roll[:, 1]], -1)

    def held_out(self) -> dict[str, float]:
        return dict(self._held_out)

    def save(self, directory: str | Path, overwrite: bool = False) -> None:
        with atomic_directory(directory, overwrite) as partial:
            self.write_files(partial)

    def write_files(self, folder: Path) -> None:
        """The estimator's two files into the existing `folder` (`save` writes a whole folder safely)."""
        meta = {
            "config": dataclasses.asdict(self.config),
            "normalization": self.normalization.to_json(),
            "held_out": self._held_out,
        }
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=1))
        (folder / PARAMS_FILE).write_bytes(serialization.msgpack_serialize(jax.device_get(self.params)))

    @classmethod
    def load(cls, directory: str | Path) -> SyntheticEstimator:
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / PARAMS_FILE).is_file():
            raise MagicFaceError(
                f"{directory} holds no synthetic estimator ({CONFIG_FILE} and {PARAMS_FILE}): train one with "
                "python -m magicface_jax.evaluation.train_estimator"
            )
        meta = json.loads((directory / CONFIG_FILE).read_text())
        config = RegressorConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
        )
        params = serialization.msgpack_restore((directory / PARAMS_FILE).read_bytes())
        return cls(config, params, Normalization.from_json(meta["normalization"]), meta["held_out"])


def held_out_errors(
    estimator: SyntheticEstimator, test: LabelledImages, train_mean: dict
) -> dict[str, float]:
    """The estimator's errors on `test`, with a constant predictor's (the training mean) beside them."""
    predicted = estimator.standardized(test.images)
    n = estimator.normalization
    aus = predicted["aus"] * n.std["aus"] + n.mean["aus"]
    pose = predicted["pose"] * n.std["pose"] + n.mean["pose"]
    embedding = predicted["identity"]
    same, different = _embedding_distances(embedding, test.person)
    truth = (test.targets["identity"] - n.mean["identity"]) / n.std["identity"]
    return {
        "au_mse": float(((aus - test.targets["aus"]) ** 2).mean()),
        "au_mse_constant": float(((train_mean["aus"] - test.targets["aus"]) ** 2).mean()),
        "pose_rmse_degrees": float(np.sqrt(((pose - test.targets["pose"]) ** 2).mean())),
        "pose_rmse_degrees_constant": float(
            np.sqrt(((train_mean["pose"] - test.targets["pose"]) ** 2).mean())
        ),
        "identity_mse_std": float(((embedding - truth) ** 2).mean()),
        "identity_mse_std_constant": float(
            (((train_mean["identity"] - n.mean["identity"]) / n.std["identity"] - truth) ** 2).mean()
        ),
        "id_l2_same_person": same,
        "id_l2_different_persons": different,
        "images": len(test.images),
    }


def _embedding_distances(embedding: np.ndarray, person: np.ndarray) -> tuple[float, float]:
    """Mean distance between embeddings of one person's images, and of different persons' images."""
    distance = np.linalg.norm(embedding[:, None] - embedding[None], axis=-1)
    same = person[:, None] == person[None]
    off_diagonal = ~np.eye(len(person), dtype=bool)
    return float(distance[same & off_diagonal].mean()), float(distance[~same].mean())


def train_estimator(
    config: RegressorConfig,
    train: LabelledImages,
    test: LabelledImages,
    steps: int,
    log: Callable[[str], None] = print,
    log_every: int = 100,
    reconstruct: Callable[[np.ndarray], np.ndarray] | None = None,
) -> SyntheticEstimator:
    """Fits the regressor on `train` with AdamW for `steps` steps and measures it on `test`. With
    `reconstruct` (a VAE's round trip), it trains on `train` and its reconstructions alike, and the
    held-out errors on `test`'s reconstructions are reported too, under the same names ending in
    `_vae_round_trip`."""
    if steps < 1:
        raise MagicFaceError(f"steps must be ≥ 1, got {steps}")
    if reconstruct is not None:
        train = with_reconstructions(train, reconstruct)
    normalization = Normalization.fit(train.targets)
    images = network_input(train.images, config)
    model = Regressor(config, sum(normalization.sizes()))
    example = jnp.zeros((1, config.input_size, config.input_size, 3))
    params = jax.jit(model.init)(jax.random.key(config.seed), example)["params"]
    tx = optax.adamw(optax.cosine_decay_schedule(config.learning_rate, steps, 0.05), weight_decay=1e-4)
    loss_of = _group_loss(normalization.sizes())

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: loss_of(model.apply({"params": p}, x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    order = np.random.default_rng(config.seed)
    start = time.perf_counter()
    for i in range(steps):
        batch = order.integers(len(images), size=config.batch_size)
        x, y = augment(images[batch], {g: v[batch] for g, v in train.targets.items()}, config.shift, order)
        y = normalization.flatten(y).astype(np.float32)
        params, opt_state, loss = step(params, opt_state, to_model_input(x), y)
        if (i + 1) % log_every == 0 or i + 1 == steps:
            log(f"estimator step {i + 1}: loss {float(loss):.4f} ({time.perf_counter() - start:.0f} s)")
    estimator = SyntheticEstimator(config, params, normalization, {})
    train_mean = {g: train.targets[g].mean(0) for g in GROUPS}
    held_out = held_out_errors(estimator, test, train_mean)
    if reconstruct is not None:
        round_trip = LabelledImages(reconstruct(test.images), test.targets, test.person)
        found = held_out_errors(estimator, round_trip, train_mean)
        held_out |= {f"{name}_vae_round_trip": value for name, value in found.items() if name != "images"}
    return SyntheticEstimator(config, params, normalization, held_out)
