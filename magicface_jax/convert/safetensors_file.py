"""The safetensors format read and written one tensor at a time, with numpy only.

A file is an 8-byte little-endian header length, a JSON header (`{key: {"dtype", "shape", "data_offsets"}}`
plus optional `"__metadata__"` strings) and the tensors' bytes, back to back. The `safetensors` package
reads or writes a whole state dict at once (its writer first copies every tensor into one buffer); here
the peak is one tensor.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

# safetensors dtype names <-> numpy dtype names ("bfloat16" comes from ml_dtypes).
DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
_CODES = {name: code for code, name in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 2**20
_ALIGNMENT = 8  # the header is padded with spaces so that the data starts 8-byte aligned


def numpy_dtype(code: str) -> np.dtype:
    """The numpy dtype of a safetensors dtype code (`ValueError` if there is none)."""
    if code not in DTYPES:
        raise ValueError(f"unsupported dtype {code}")
    if DTYPES[code] == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(DTYPES[code])


def dtype_code(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in _CODES:
        raise ValueError(f"safetensors cannot store {name}")
    return _CODES[name]


TensorSpec = tuple[np.dtype, tuple[int, ...]]  # dtype, shape


@dataclasses.dataclass(frozen=True)
class Entry:
    """Where one tensor lies in the file (absolute byte offsets)."""

    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def read_header(path: Path) -> dict[str, Entry]:
    """The tensors of a file, checked against its size (`ValueError`/`OSError` if it is not safetensors)."""
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if not 2 <= length <= min(size - 8, MAX_HEADER_BYTES):
            raise ValueError(f"header length {length} does not fit a {size}-byte file")
        header = json.loads(f.read(length))
    data_start = 8 + length
    entries = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        dtype = numpy_dtype(entry["dtype"])
        shape = tuple(int(n) for n in entry["shape"])
        begin, end = (data_start + int(n) for n in entry["data_offsets"])
        if end - begin != dtype.itemsize * int(np.prod(shape)) or end > size:
            raise ValueError(f"{key} has inconsistent data offsets")
        entries[key] = Entry(dtype, shape, begin, end)
    return entries


def read_tensor(path: Path, entry: Entry) -> np.ndarray:
    """One tensor by a positioned read into a new array (`OSError` if the file is shorter)."""
    array = np.empty(entry.shape, entry.dtype)
    with open(path, "rb") as f:
        f.seek(entry.begin)
        read = f.readinto(memoryview(array.reshape(-1).view(np.uint8)))
    if read != entry.end - entry.begin:
        raise OSError(f"truncated: {read} of {entry.end - entry.begin} bytes")
    return array


def write_safetensors(
    path: Path,
    specs: Mapping[str, TensorSpec],
    tensor: Callable[[str], np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Writes `specs` (key -> dtype and shape, in file order), asking `tensor(key)` for one array at a
    time."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key, (dtype, shape) in specs.items():
        size = np.dtype(dtype).itemsize * int(np.prod(shape))
        code = dtype_code(dtype)
        header[key] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % _ALIGNMENT)
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for key, (dtype, shape) in specs.items():
            array = np.ascontiguousarray(tensor(key))
            if array.dtype != np.dtype(dtype) or array.shape != tuple(shape):
                expected = f"{np.dtype(dtype)}{tuple(shape)}"
                raise ValueError(f"{key}: got {array.dtype}{array.shape}, the header says {expected}")
            f.write(memoryview(array.reshape(-1).view(np.uint8)))
