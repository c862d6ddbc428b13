"""Read PyTorch checkpoints one tensor at a time.

A `TensorSource` lists its keys and shapes without loading anything and hands out one tensor at a time as a
numpy array, so conversion holds at most one source tensor besides what it has converted. Formats:
safetensors (the header, then each tensor by a positioned read), PyTorch pickles `.bin`/`.pt`/`.ckpt`
(memory-mapped where the file allows), diffusers' sharded weights (`*.index.json`), and views that rename
or adapt keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from magicface_jax.convert import safetensors_file
from magicface_jax.errors import MagicFaceError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _to_numpy(tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


class TensorSource:
    """Keys, shapes and tensors of a checkpoint. Subclasses implement `keys`, `shape` and `get`."""

    name: str = "checkpoint"

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def get(self, key: str) -> np.ndarray:
        raise NotImplementedError


class SafetensorsSource(TensorSource):
    """A `.safetensors` file read one tensor at a time with a positioned read into a new array.

    No memory map: the pages of a mapped file count towards the process's resident memory for as long as
    the file stays open, which would add the whole file to the converter's peak.
    """

    def __init__(self, path: Path):
        self.name = str(path)
        self._path = Path(path)
        try:
            self._entries = safetensors_file.read_header(self._path)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise MagicFaceError(f"{path} is not a readable safetensors checkpoint ({err})") from None

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key].shape

    def get(self, key: str) -> np.ndarray:
        try:
            return safetensors_file.read_tensor(self._path, self._entries[key])
        except OSError as err:
            raise MagicFaceError(f"{self.name}: cannot read {key} ({err})") from None


class TorchPickleSource(TensorSource):
    """`.bin`/`.pt`/`.ckpt`; an original-layout checkpoint keeps its tensors under 'state_dict'."""

    def __init__(self, path: Path):
        import torch

        self.name = str(path)
        try:
            try:
                state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise MagicFaceError(f"{path} is not a readable PyTorch checkpoint ({err})") from None
        if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise MagicFaceError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
        self._state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._state[key].shape)

    def get(self, key: str) -> np.ndarray:
        return _to_numpy(self._state[key])


class ArraySource(TensorSource):
    """An in-memory mapping of numpy arrays or torch tensors."""

    def __init__(self, arrays: Mapping, name: str = "arrays"):
        self._arrays = dict(arrays)
        self.name = name

    def keys(self) -> list[str]:
        return list(self._arrays)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._arrays[key].shape)

    def get(self, key: str) -> np.ndarray:
        value = self._arrays[key]
        return value if isinstance(value, np.ndarray) else _to_numpy(value.detach().cpu())


class UnionSource(TensorSource):
    """Several files read as one (diffusers' sharded weights)."""

    def __init__(self, sources: Iterable[TensorSource], name: str):
        self.name = name
        self._owner: dict[str, TensorSource] = {}
        for source in sources:
            for key in source.keys():
                self._owner[key] = source

    def keys(self) -> list[str]:
        return list(self._owner)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._owner[key].shape(key)

    def get(self, key: str) -> np.ndarray:
        return self._owner[key].get(key)


class MappedSource(TensorSource):
    """A view with new keys: `mapping[new_key] = (old_key, transform)`; `transform` maps the array."""

    def __init__(
        self,
        base: TensorSource,
        mapping: Mapping[str, tuple[str, Callable[[np.ndarray], np.ndarray] | None]],
        shapes: Mapping[str, tuple[int, ...]] | None = None,
    ):
        self.base, self.name = base, base.name
        self._mapping = dict(mapping)
        self._shapes = dict(shapes or {})

    def keys(self) -> list[str]:
        return list(self._mapping)

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self._shapes:
            return self._shapes[key]
        return self.base.shape(self._mapping[key][0])

    def get(self, key: str) -> np.ndarray:
        old, transform = self._mapping[key]
        array = self.base.get(old)
        return transform(array) if transform else array


def open_weights(path: Path) -> TensorSource:
    """One weights file, by its suffix."""
    path = Path(path)
    if not path.is_file():
        raise MagicFaceError(f"{path} does not exist or is not a file")
    if path.suffix == ".safetensors":
        return SafetensorsSource(path)
    if path.suffix in WEIGHT_SUFFIXES:
        return TorchPickleSource(path)
    raise MagicFaceError(f"{path}: unknown weights format; expected one of {', '.join(WEIGHT_SUFFIXES)}")


def open_model_folder(folder: Path, stem: str = "diffusion_pytorch_model") -> tuple[dict, TensorSource]:
    """A diffusers model folder: `config.json` and weights (safetensors or .bin, fp32 or fp16, sharded or
    not). Returns the config dictionary and the weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MagicFaceError(f"{folder} is missing: expected a diffusers model folder with config.json")
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise MagicFaceError(f"{config_path} is missing: {folder} is not a diffusers model folder") from None
    except json.JSONDecodeError as err:
        raise MagicFaceError(f"{config_path} is not valid JSON ({err})") from None
    candidates = [
        f"{stem}{variant}{suffix}" for suffix in (".safetensors", ".bin") for variant in ("", ".fp16")
    ]
    for name in candidates:
        if (folder / name).is_file():
            return config, open_weights(folder / name)
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return config, UnionSource((open_weights(folder / s) for s in shards), str(index))
    raise MagicFaceError(f"{folder} has no weights: expected one of {', '.join(candidates)}")
