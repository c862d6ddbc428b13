"""The model checkpoint: a directory of orbax checkpoints and a JSON manifest.

    CKPT/
      magicface.json       format, model config, scheduler config, prompt, parameter dtype, provenance,
                           the sampling steps measured for it (optional)
      prompt_embeds/       orbax: {"prompt_embeds": (1, 77, D)}
      identity_encoder/    orbax: Flax parameters (plain arrays)
      denoiser/            orbax
      vae/                 orbax

One orbax checkpoint per network lets conversion write each as soon as it is built, so only one network is
in memory at a time. The directory appears only when complete: it is written under a temporary name and
renamed at the end.

The manifest records a SHA-256 of every file of each orbax folder; reading a network verifies them (hashing
in threads while orbax reads), so a bit-flipped, truncated or zeroed file is refused with the network's name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from magicface_jax import atomic
from magicface_jax.config import MagicFaceConfig
from magicface_jax.diffusion import check_steps
from magicface_jax.errors import MagicFaceError
from magicface_jax.models.magicface import COMPONENTS

MANIFEST = "magicface.json"
FORMAT = "magicface-jax/2"  # 2: per-file checksums
BEFORE_CHECKSUMS = "magicface-jax/1"
CHECKSUM = "sha256"
# What marks a folder as an earlier checkpoint, which `overwrite` may replace: any version's manifest.
EARLIER_CHECKPOINT = atomic.Manifest(MANIFEST, (FORMAT, BEFORE_CHECKSUMS))
PROMPT_EMBEDS = "prompt_embeds"
AUTHORS_STEPS = 50  # the authors' script's UniPC steps: the default of a checkpoint measured for none


@dataclasses.dataclass(frozen=True)
class SamplingDefault:
    """The UniPC steps measured to edit as well as the authors' 50 with this checkpoint, and how that was
    measured; what `sample.py`, the app and the pipeline use unless given steps."""

    steps: int
    measured: str

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "measured": self.measured}

    @classmethod
    def from_json(cls, data: Any, where: Path) -> SamplingDefault:
        steps = data.get("steps") if isinstance(data, dict) else None
        try:
            steps = check_steps(steps)
        except MagicFaceError as err:
            fix = "fix or remove the sampling entry"
            raise MagicFaceError(f"{where}: sampling.steps: {err}; {fix}") from None
        return cls(steps, str(data.get("measured", "")))


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    config: MagicFaceConfig
    scheduler: dict[str, Any]
    param_dtype: str = "float32"
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    # folder -> {file path inside it: hex digest}; filled by `CheckpointWriter.finish`
    checksums: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    sampling: SamplingDefault | None = None  # None: not measured, the authors' steps apply

    @property
    def default_steps(self) -> int:
        return AUTHORS_STEPS if self.sampling is None else self.sampling.steps

    def to_json(self) -> dict[str, Any]:
        found = {
            "format": FORMAT,
            "model": self.config.to_dict(),
            "scheduler": self.scheduler,
            "param_dtype": self.param_dtype,
            "source": self.source,
            "checksums": {CHECKSUM: self.checksums},
        }
        return found if self.sampling is None else found | {"sampling": self.sampling.to_json()}


def steps_behind(source: Mapping[str, Any]) -> int:
    """The training steps behind a checkpoint of this project: its run's (`trained_steps`) and those of
    the checkpoint that run started from (`steps_before`); 0 for a converted one."""
    return int(source.get("trained_steps", 0)) + int(source.get("steps_before", 0))


def _file_digest(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, CHECKSUM).hexdigest()


def folder_checksums(folder: Path, files: list[str] | None = None) -> dict[str, str]:
    """The digest of each file under `folder` (or of `files`, paths relative to it), hashed in parallel
    threads (hashlib releases the GIL)."""
    if files is None:
        files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    with ThreadPoolExecutor(max(1, min(len(files), os.cpu_count() or 1))) as pool:
        digests = list(pool.map(lambda name: _file_digest(folder / name), files))
    return dict(zip(files, digests, strict=True))


def _refuse_damage(path: Path, problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MagicFaceError(
            f"checkpoint network {path.name!r} in {path.parent} is damaged: {problems[0]}{more}; "
            "convert it again"
        )


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.PyTreeCheckpointer()


def _writing_checkpointer():
    """A checkpointer that holds no more than the arrays it is given while it writes them.

    orbax's defaults would add two transient copies of the network: its numpy handler deep-copies every
    host array (a guard against changes during an asynchronous save; ours are synchronous and nothing
    changes the arrays), and compressing all arrays at once holds their compressed copies (zstd gains
    nothing on random weights and little on float32 weights in general). Uncompressed checkpoints read
    the same way.
    """
    import jax
    import orbax.checkpoint as ocp
    from orbax.checkpoint import type_handlers

    registry = type_handlers.create_type_handler_registry(
        (np.ndarray, type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, type_handlers.get_type_handler(jax.Array)),
    )
    # The arrays are host copies held by the one process that writes (in a multi-process run, process 0 of
    # a training export): orbax must not wait for the other processes at its barriers.
    this_process = jax.process_index()
    alone = ocp.options.MultiprocessingOptions(primary_host=this_process, active_processes={this_process})
    handler = ocp.PyTreeCheckpointHandler(
        type_handler_registry=registry, use_compression=False, multiprocessing_options=alone
    )
    return ocp.Checkpointer(handler, multiprocessing_options=alone)


def check_output(directory: str | Path, overwrite: bool = False, inputs: Sequence = ()) -> Path:
    """Where a checkpoint will be written, checked before any work (see `atomic.check_output`); an earlier
    checkpoint (`EARLIER_CHECKPOINT`) is replaceable with `overwrite`."""
    return atomic.check_output(
        directory, inputs, overwrite=overwrite, folder=True, manifest=EARLIER_CHECKPOINT
    )


@contextlib.contextmanager
def writing_checkpoint(
    directory: str | Path, overwrite: bool = False, inputs: Sequence = ()
) -> Iterator[CheckpointWriter]:
    """Yields a writer into a partial directory that becomes `directory` only if the block succeeds."""
    with atomic.atomic_directory(directory, overwrite, manifest=EARLIER_CHECKPOINT, inputs=inputs) as partial:
        writer = CheckpointWriter(partial)
        yield writer
        if not writer.finished:
            raise RuntimeError("checkpoint writer closed without finish()")


class CheckpointWriter:
    def __init__(self, root: Path):
        self.root = Path(root).absolute()  # orbax writes absolute paths only
        self.finished = False
        self.checksums: dict[str, dict[str, str]] = {}

    def write_params(self, name: str, params: Mapping) -> None:
        _writing_checkpointer().save(self.root / name, dict(params))
        self.checksums[name] = folder_checksums(self.root / name)

    def write_prompt_embeds(self, prompt_embeds: np.ndarray) -> None:
        self.write_params(PROMPT_EMBEDS, {PROMPT_EMBEDS: np.asarray(prompt_embeds, np.float32)})

    def copy_from(self, source: str | Path, replaced: Mapping[str, Mapping] | None = None) -> None:
        """Every network and the prompt embedding of the checkpoint `source` (verified on reading), but the
        networks named in `replaced`, whose parameters are written instead."""
        replaced = replaced or {}
        for name in COMPONENTS:
            self.write_params(name, replaced[name] if name in replaced else read_params(source, name))
        self.write_prompt_embeds(read_prompt_embeds(source))

    def finish(self, info: CheckpointInfo) -> None:
        for name in (*COMPONENTS, PROMPT_EMBEDS):
            if not (self.root / name).is_dir():
                raise RuntimeError(f"checkpoint is missing {name}/")
        info = dataclasses.replace(info, checksums=self.checksums)
        (self.root / MANIFEST).write_text(json.dumps(info.to_json(), indent=2))
        self.finished = True


def read_info(directory: str | Path) -> CheckpointInfo:
    directory = Path(directory).expanduser()
    manifest = directory / MANIFEST
    if directory.is_file():
        raise MagicFaceError(
            f"checkpoint {directory} is a file: give the folder that convert_weights.py wrote "
            f"(it holds {MANIFEST})"
        )
    if not directory.is_dir():
        raise MagicFaceError(f"checkpoint {directory} does not exist: make one with convert_weights.py")
    try:
        data = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise MagicFaceError(
            f"{directory} is not a MagicFace checkpoint (no {MANIFEST}): make one with convert_weights.py"
        ) from None
    except json.JSONDecodeError as err:
        raise MagicFaceError(f"{manifest} is not valid JSON ({err})") from None
    if data.get("format") == BEFORE_CHECKSUMS:
        raise MagicFaceError(
            f"{directory} was written by an earlier version, before checkpoints recorded checksums "
            f"(format {BEFORE_CHECKSUMS!r}): convert it again with convert_weights.py"
        )
    if data.get("format") != FORMAT:
        raise MagicFaceError(f"{manifest} has format {data.get('format')!r}; this version reads {FORMAT!r}")
    checksums = data.get("checksums", {}).get(CHECKSUM, {})
    missing = [
        name
        for name in (*COMPONENTS, PROMPT_EMBEDS)
        if not (directory / name).is_dir() or name not in checksums
    ]
    if missing:
        raise MagicFaceError(
            f"checkpoint {directory} is incomplete: missing {', '.join(missing)}; convert it again"
        )
    return CheckpointInfo(
        config=MagicFaceConfig.from_dict(data["model"]),
        scheduler=data.get("scheduler", {}),
        param_dtype=data.get("param_dtype", "float32"),
        source=data.get("source", {}),
        checksums=checksums,
        sampling=None if "sampling" not in data else SamplingDefault.from_json(data["sampling"], manifest),
    )


def verify_network(directory: str | Path, name: str) -> None:
    """Refuses a network whose files are missing or do not match the manifest's checksums (for readers
    that restore the arrays themselves, such as training's restore into shards)."""
    path = atomic.user_path(directory).absolute() / name  # orbax reads absolute paths only
    expected = read_info(directory).checksums[name]
    files = sorted(expected)
    _refuse_damage(path, [f"{file} is missing" for file in files if not (path / file).is_file()])
    found = folder_checksums(path, files)
    _refuse_damage(
        path, [f"{file} does not match its checksum" for file in files if found[file] != expected[file]]
    )


def read_params(directory: str | Path, name: str, dtype: Any = None) -> dict:
    """One network's parameters as numpy arrays (cast to `dtype` when given), its files verified against
    the manifest's checksums while orbax reads them."""
    path = atomic.user_path(directory).absolute() / name  # orbax reads absolute paths only
    expected = read_info(directory).checksums[name]
    # Files the manifest does not list are ignored: orbax reads only what its own (checksummed) metadata
    # names, and a stray file (a desktop's .DS_Store) is no damage.
    files = sorted(expected)
    _refuse_damage(path, [f"{file} is missing" for file in files if not (path / file).is_file()])
    with ThreadPoolExecutor(1) as pool:
        checking = pool.submit(folder_checksums, path, files)
        try:
            params, failure = _checkpointer().restore(path), None
        except Exception as err:  # orbax raises assorted errors for damaged directories
            params, failure = None, err
        found = checking.result()  # damage, when found, explains a failure best
    _refuse_damage(
        path, [f"{file} does not match its checksum" for file in files if found[file] != expected[file]]
    )
    if failure is not None:
        raise MagicFaceError(
            f"cannot read {path} ({type(failure).__name__}: {failure}); convert it again"
        ) from None
    if dtype is not None:
        params = _map_arrays(lambda a: np.asarray(a, dtype), params)
    return params


def read_prompt_embeds(directory: str | Path) -> np.ndarray:
    return read_params(directory, PROMPT_EMBEDS, np.float32)[PROMPT_EMBEDS]


def _map_arrays(fn, tree):
    if isinstance(tree, Mapping):
        return {k: _map_arrays(fn, v) for k, v in tree.items()}
    return fn(tree)
