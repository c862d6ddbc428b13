"""The training run's configuration: typed, nested, read from YAML with `dotted.key=value` overrides.

    config = load_config("configs/tiny.yaml", ["train.steps=200", "mesh.fsdp=4"])

Every section is a frozen dataclass; loading walks them recursively, refuses an unknown key or a value of
the wrong type naming the key and what it accepts, and coerces override strings by the field's type.
What the model computes (the architecture, written into checkpoints) comes from `init_checkpoint` or
`model.preset`; how it computes (compute dtype, rematerialization, CPU kernels) is a run setting here.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from magicface_jax.errors import MagicFaceError

MODEL_PRESETS = ("nano", "tiny", "synthetic", "sd15")
DTYPES = ("float32", "bfloat16")
REMAT = ("none", "block", "full")
KERNELS = ("plain", "sampling")
SCHEDULES = ("constant", "cosine", "linear")
PREDICTION_TYPES = ("epsilon", "v_prediction")
# magicface: the paper's objective. unet: the identity encoder trained alone as a plain text-to-image UNet
# on the target latents, the synthetic world's SD1.5: its export starts a MagicFace as SD's UNet does.
OBJECTIVES = ("magicface", "unet")
EXPORT_WEIGHTS = ("ema", "raw")
MESH_AXES = ("data", "fsdp", "tensor")
# Logical axis -> mesh axis: FSDP over "fsdp" along the widest axes; attention heads and feed-forward
# width over "tensor". Convolution channels stay off "tensor": with a convolution's output channels on
# "tensor" and the batch on (data, fsdp), XLA 0.10.2's SPMD partitioner computed wrong kernel gradients on
# a (2, 2, 2) CPU mesh (up to 38% relative error in the resnets' conv1; (1, 2, 2) and (2, 1, 2) were
# exact), where the loss still agreed.
DEFAULT_RULES = (
    ("embed", "fsdp"),
    ("cross_embed", "fsdp"),
    ("conv_in", "fsdp"),
    ("time_embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("time_hidden", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    preset: str = "tiny"  # the architecture when there is no init_checkpoint: one of MODEL_PRESETS
    vae_checkpoint: str = ""  # a MagicFace checkpoint (its VAE, prompt embedding) or a VAE export, frozen
    init_seed: int = 0  # random initialisation of whatever no checkpoint provides
    dtype: str = "float32"  # compute dtype; parameters and optimizer state stay float32
    remat: str = "none"  # rematerialization of the UNets' blocks: none, block, full
    kernels: str = "plain"  # CPU kernels (plain: XLA's; sampling: the rewrites tuned for sampling)
    train_identity_encoder: bool = True
    train_denoiser: bool = True

    def check(self) -> None:
        _one_of("model.preset", self.preset, MODEL_PRESETS)
        _one_of("model.dtype", self.dtype, DTYPES)
        _one_of("model.remat", self.remat, REMAT)
        _one_of("model.kernels", self.kernels, KERNELS)
        if not (self.train_identity_encoder or self.train_denoiser):
            raise MagicFaceError("model.train_identity_encoder and model.train_denoiser are both false")


@dataclasses.dataclass(frozen=True)
class DataSettings:
    data_dir: str = ""  # where tfds builds live; empty: `dataset` is a dataset folder
    split: str = "train"
    eval_split: str = "test"
    latent_cache: str = ""  # a latent cache written by `train.py --cache-latents`: no VAE in the step
    seed: int = 0
    read_threads: int = 4
    prefetch_batches: int = 4
    workers: int = 0

    def check(self) -> None:
        _at_least("data.read_threads", self.read_threads, 0)
        _at_least("data.prefetch_batches", self.prefetch_batches, 0)
        _at_least("data.workers", self.workers, 0)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    steps: int = 1000
    batch_size: int = 8  # global, over every process and device
    grad_accum_steps: int = 1
    seed: int = 0
    au_dropout: float = 0.1  # probability that an example's AU vector is zeroed (for AU guidance)
    prediction_type: str = "epsilon"
    min_snr_gamma: float = 0.0  # > 0: min-SNR-γ loss weighting
    train_identity_features: bool = True  # false: the denoiser trains with zeroed identity features
    # A small VAE trained with a tiny KL weight can have a posterior noise larger than what an AU changes in
    # the latents: noise in the target the denoiser cannot predict (docs/evaluation.md).
    sample_posterior: bool = True  # the target latents: a posterior sample (SD's scripts); false: its mean
    objective: str = "magicface"  # or unet: the identity encoder alone as a plain UNet, an SD of its own

    def check(self) -> None:
        _at_least("train.steps", self.steps, 1)
        _at_least("train.batch_size", self.batch_size, 1)
        _at_least("train.grad_accum_steps", self.grad_accum_steps, 1)
        if self.batch_size % self.grad_accum_steps:
            raise MagicFaceError(
                f"train.batch_size={self.batch_size} does not split into train.grad_accum_steps="
                f"{self.grad_accum_steps} equal micro-batches"
            )
        if not 0 <= self.au_dropout <= 1:
            raise MagicFaceError(f"train.au_dropout={self.au_dropout}: expected a probability in [0, 1]")
        _one_of("train.prediction_type", self.prediction_type, PREDICTION_TYPES)
        _at_least("train.min_snr_gamma", self.min_snr_gamma, 0)
        _one_of("train.objective", self.objective, OBJECTIVES)


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    learning_rate: float = 1e-5
    schedule: str = "constant"  # after warmup: constant, cosine or linear decay to end_factor × rate
    warmup_steps: int = 0
    end_factor: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 1e-2
    grad_clip_norm: float = 1.0  # 0: no clipping
    ema_decay: float = 0.9999  # 0: no EMA (the export then takes the raw weights)
    au_embedding_lr_factor: float = 1.0  # the AU linear's step size, as a multiple of the others'

    def check(self) -> None:
        if not self.learning_rate > 0:
            raise MagicFaceError(f"optimizer.learning_rate={self.learning_rate}: expected > 0")
        _one_of("optimizer.schedule", self.schedule, SCHEDULES)
        _at_least("optimizer.warmup_steps", self.warmup_steps, 0)
        _at_least("optimizer.grad_clip_norm", self.grad_clip_norm, 0)
        if not 0 <= self.ema_decay < 1:
            raise MagicFaceError(f"optimizer.ema_decay={self.ema_decay}: expected a value in [0, 1)")
        if not self.au_embedding_lr_factor > 0:
            raise MagicFaceError(
                f"optimizer.au_embedding_lr_factor={self.au_embedding_lr_factor}: expected > 0 (1: no change)"
            )


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    data: int = -1  # -1: whatever the other axes leave
    fsdp: int = 1
    tensor: int = 1
    rules: tuple[tuple[str, str], ...] = DEFAULT_RULES  # logical axis name -> mesh axis

    def check(self) -> None:
        sizes = (self.data, self.fsdp, self.tensor)
        if sum(size == -1 for size in sizes) > 1 or any(size == 0 or size < -1 for size in sizes):
            raise MagicFaceError(
                f"mesh sizes data={self.data}, fsdp={self.fsdp}, tensor={self.tensor}: each must be ≥ 1, "
                "and at most one may be -1 (fill the rest)"
            )
        for logical, axis in self.rules:
            _one_of(f"mesh.rules entry for {logical!r}", axis, MESH_AXES)


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    every_steps: int = 1000
    keep: int = 3
    async_save: bool = True
    export_weights: str = "ema"  # what `--export` and the end of a run write: ema or raw

    def check(self) -> None:
        _at_least("checkpoint.every_steps", self.every_steps, 1)
        _at_least("checkpoint.keep", self.keep, 1)
        _one_of("checkpoint.export_weights", self.export_weights, EXPORT_WEIGHTS)


@dataclasses.dataclass(frozen=True)
class LoggingSettings:
    every_steps: int = 10
    tensorboard: bool = True
    progress: bool = True
    peak_tflops_per_device: float = 0.0  # for MFU; 0: from the device kind, or measured on a CPU

    def check(self) -> None:
        _at_least("logging.every_steps", self.every_steps, 1)


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    every_steps: int = 0  # 0: no validation grids during training
    num_pairs: int = 4
    edits: tuple[str, ...] = ("AU12=+4", "AU4=+4,AU1=+2", "AU25=+4,AU26=+4")
    steps: int = 20
    sampler: str = "unipc"
    guidance: float = 3.0

    def check(self) -> None:
        _at_least("evaluation.every_steps", self.every_steps, 0)
        _at_least("evaluation.num_pairs", self.num_pairs, 1)
        _at_least("evaluation.steps", self.steps, 1)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    output_dir: str = ""
    dataset: str = ""  # a tfds name under data.data_dir ("synthetic_faces/128px"), or a dataset folder
    init_checkpoint: str = ""  # a MagicFace checkpoint (e.g. `convert_weights.py --sd SD --out DIR`)
    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    train: TrainSettings = TrainSettings()
    optimizer: OptimizerSettings = OptimizerSettings()
    mesh: MeshSettings = MeshSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    logging: LoggingSettings = LoggingSettings()
    evaluation: EvaluationSettings = EvaluationSettings()

    def check(self) -> None:
        if not self.output_dir:
            raise MagicFaceError("output_dir is not set: give it in the config or as output_dir=DIR")
        if not self.dataset:
            raise MagicFaceError("dataset is not set: give it in the config or as dataset=NAME")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if dataclasses.is_dataclass(value):
                value.check()
        if self.train.objective == "unet" and not self.model.train_identity_encoder:
            raise MagicFaceError(
                "train.objective=unet trains the identity encoder as a plain UNet: set "
                "model.train_identity_encoder=true"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """The run config of a YAML file (or the defaults when `path` is None) with `key=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(Path(path))
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise MagicFaceError(f"override {override!r} is not of the form dotted.key=value")
        _set_dotted(data, key.strip().split("."), _Raw(value))
    config = build(RunConfig, data, "")
    config.check()
    return config


class _Raw(str):
    """An override's text, coerced by the type of the field it lands in."""


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MagicFaceError(
            f"config file {path} does not exist" + (" (it is a folder)" if path.is_dir() else "")
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise MagicFaceError(f"{path} is not valid YAML ({' '.join(str(err).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MagicFaceError(f"{path} must hold a mapping of config keys, not a {type(data).__name__}")
    return data


def _set_dotted(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for i, key in enumerate(keys[:-1]):
        child = data.setdefault(key, {})
        if not isinstance(child, dict):
            raise MagicFaceError(f"{'.'.join(keys[: i + 1])} is a value, not a section")
        data = child
    data[keys[-1]] = value


def build(cls, data: Any, where: str):
    """An instance of dataclass `cls` from a mapping, checking every key and value against the fields."""
    if not isinstance(data, Mapping):
        raise MagicFaceError(f"{where or 'the config'} must be a section (a mapping), got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise MagicFaceError(
            f"unknown config key {_join(where, unknown[0])}; {where or 'the top level'} accepts "
            f"{', '.join(fields)}"
        )
    values = {name: _coerce(hints[name], data[name], _join(where, name)) for name in data}
    return cls(**values)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(kind, value: Any, key: str):
    if dataclasses.is_dataclass(kind):
        return build(kind, value, key)
    if isinstance(value, Mapping):
        raise MagicFaceError(f"{key} is a value ({_describe(kind)}), not a section")
    if typing.get_origin(kind) is tuple:
        return _coerce_tuple(kind, value, key)
    if isinstance(value, _Raw):
        value = _parse_scalar(kind, str(value), key)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is str and isinstance(value, str):
        return value
    raise MagicFaceError(f"{key}={value!r}: expected {_describe(kind)}")


def _parse_scalar(kind, text: str, key: str):
    text = text.strip()
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in ("true", "yes", "1", "on"):
                return True
            if lowered in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise MagicFaceError(f"{key}={text!r}: expected {_describe(kind)}") from None
    return text


def _coerce_tuple(kind, value: Any, key: str) -> tuple:
    (item,) = {arg for arg in typing.get_args(kind) if arg is not Ellipsis}
    if isinstance(value, _Raw) and value.lstrip().startswith("["):  # YAML flow form: [a, "b,c"]
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise MagicFaceError(f"{key}={value!r}: expected {_describe(kind)}") from None
    if isinstance(value, _Raw):  # "a,b,c" or, for pairs, "embed:fsdp,mlp:tensor"
        parts = [part.strip() for part in str(value).split(",") if part.strip()]
        value = [part.split(":") for part in parts] if typing.get_origin(item) is tuple else parts
    if not isinstance(value, list | tuple):
        raise MagicFaceError(f"{key}={value!r}: expected {_describe(kind)}")
    if typing.get_origin(item) is tuple:
        width = len(typing.get_args(item))
        if any(not isinstance(v, list | tuple) or len(v) != width for v in value):
            raise MagicFaceError(f"{key}={value!r}: expected {_describe(kind)}")
        return tuple(
            tuple(
                _coerce(t, _Raw(x) if isinstance(x, str) else x, key)
                for t, x in zip(typing.get_args(item), v, strict=True)
            )
            for v in value
        )
    return tuple(_coerce(item, _Raw(v) if isinstance(v, str) else v, key) for v in value)


def _describe(kind) -> str:
    if typing.get_origin(kind) is tuple:
        (item,) = {arg for arg in typing.get_args(kind) if arg is not Ellipsis}
        if typing.get_origin(item) is tuple:
            return "a list of [logical axis, mesh axis] pairs (override form: embed:fsdp,mlp:tensor)"
        return f'a list of {_describe(item)} values (override form: a,b,c or [a, "b,c"])'
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        kind, getattr(kind, "__name__", str(kind))
    )


def _one_of(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise MagicFaceError(f"{key}={value!r}: expected one of {', '.join(allowed)}")


def _at_least(key: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise MagicFaceError(f"{key}={value}: expected at least {minimum}")
