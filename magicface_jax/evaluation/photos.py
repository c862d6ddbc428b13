"""Offline estimators for real photographs (the `faces` extra: dlib, OpenCV, face_recognition_models).

- Identity: dlib's 128-d face descriptor (`dlib_face_recognition_resnet_model_v1.dat`, a ResNet trained
  for face verification; two photos of one person lie under 0.6 apart) on the 68 landmarks of the largest
  face.
- Head pose: a PnP fit (OpenCV `solvePnP`) of six landmarks (nose tip, chin, outer eye corners, mouth
  corners) against a 3D mean face, with a pinhole camera of focal length = image width; yaw, pitch and
  roll in degrees.
- Face mask: the jaw line closed over the brows raised by a third of the face width, from the landmarks.
- AUs: no trained AU estimator installs offline. `OpenFaceAUs` reads the intensities OpenFace 2.0 wrote
  for each image (`FaceLandmarkImg -fdir DIR -aus` writes NAME.csv per image NAME.png); `LandmarkAUProxy`
  is a ridge regression from the aligned 68 landmarks to the 12 AUs, fitted on the synthetic faces' exact
  geometry: a proxy, labelled so wherever it is printed.

An image without a detectable face gets NaN rows; the metrics leave them out.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from magicface_jax.errors import MagicFaceError
from magicface_jax.faces import detect
from magicface_jax.faces.aus import NUM_AUS

# A 3D mean face in millimetres for landmarks 30 (nose tip), 8 (chin), 36 and 45 (outer eye corners), 48
# and 54 (mouth corners), in camera axes: x right, y down, z away from the camera.
PNP_LANDMARKS = (30, 8, 36, 45, 48, 54)
MEAN_FACE_3D = np.array(
    [
        (0.0, 0.0, 0.0),
        (0.0, 330.0, 65.0),
        (-225.0, -170.0, 135.0),
        (225.0, -170.0, 135.0),
        (-150.0, 150.0, 125.0),
        (150.0, 150.0, 125.0),
    ]
)
EMBEDDING_DIM = 128
_FOREHEAD = 1 / 3  # the face mask reaches this fraction of the face width above the brows


def camera_matrix(width: int, height: int) -> np.ndarray:
    return np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1]], np.float64)


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) · Ry(yaw) · Rx(pitch), angles in degrees (the convention `euler_angles` inverts)."""
    y, p, r = np.radians([yaw, pitch, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def euler_angles(rotation: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) in degrees of R = Rz(roll) · Ry(yaw) · Rx(pitch)."""
    yaw = np.arcsin(np.clip(-rotation[2, 0], -1, 1))
    pitch = np.arctan2(rotation[2, 1], rotation[2, 2])
    roll = np.arctan2(rotation[1, 0], rotation[0, 0])
    return np.degrees([yaw, pitch, roll])


def head_pose(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """(yaw, pitch, roll) in degrees from the 68 landmarks of a width × height image."""
    import cv2

    points = np.asarray(landmarks, np.float64)[list(PNP_LANDMARKS)]
    camera = camera_matrix(width, height)
    ok, rvec, _ = cv2.solvePnP(MEAN_FACE_3D, points, camera, np.zeros(4), flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return np.full(3, np.nan)
    return euler_angles(cv2.Rodrigues(rvec)[0])


def face_mask_from_landmarks(landmarks: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool (height, width): the jaw line (0–16) closed over the brows (26 back to 17) raised by a third
    of the face width along the face's up direction."""
    import cv2

    eyes = landmarks[42:48].mean(0) - landmarks[36:42].mean(0)
    up = np.array([eyes[1], -eyes[0]]) / max(np.linalg.norm(eyes), 1e-6)
    face_width = np.linalg.norm(landmarks[16] - landmarks[0])
    brows = landmarks[26:16:-1] + _FOREHEAD * face_width * up
    polygon = np.round(np.concatenate([landmarks[0:17], brows])).astype(np.int32)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [polygon], 1)
    return mask.astype(bool)


@functools.cache
def _face_recognizer():
    detect.require_face_dependencies()
    import dlib

    return dlib.face_recognition_model_v1(detect.model_file("dlib_face_recognition_resnet_model_v1.dat"))


def _descriptor(image: np.ndarray, face: detect.Face) -> np.ndarray:
    import dlib

    left, top, right, bottom = (round(float(v)) for v in face.box)
    parts = [dlib.point(round(float(x)), round(float(y))) for x, y in face.landmarks]
    shape = dlib.full_object_detection(dlib.rectangle(left, top, right, bottom), parts)
    return np.asarray(_face_recognizer().compute_face_descriptor(image, shape), np.float64)


class PhotoFaces:
    """The largest face of each photo, found once per image (dlib), as an `IdentityEmbedder` (dlib's 128-d
    descriptor), a `PoseEstimator` (PnP) and the source of face masks and landmarks."""

    label = "dlib"

    def __init__(self):
        detect.require_face_dependencies()
        self._faces: dict[bytes, detect.Face | None] = {}

    def face(self, image: np.ndarray) -> detect.Face | None:
        key = hashlib.sha256(image.tobytes()).digest()  # the digest, not the pixels, stays in memory
        if key not in self._faces:
            self._faces[key] = detect.largest_face(np.ascontiguousarray(image))[0]
        return self._faces[key]

    def landmarks(self, images: np.ndarray) -> np.ndarray:
        """(B, 68, 2); NaN for an image without a face."""
        rows = [self.face(x) for x in images]
        return np.stack([f.landmarks if f is not None else np.full((68, 2), np.nan) for f in rows])

    def embed(self, images: np.ndarray) -> np.ndarray:
        rows = []
        for image in images:
            face = self.face(image)
            rows.append(
                _descriptor(np.ascontiguousarray(image), face) if face else np.full(EMBEDDING_DIM, np.nan)
            )
        return np.stack(rows)

    def pose(self, images: np.ndarray) -> np.ndarray:
        height, width = images.shape[1:3]
        return np.stack(
            [
                head_pose(lm, width, height) if not np.isnan(lm).any() else np.full(3, np.nan)
                for lm in self.landmarks(images)
            ]
        )

    def face_masks(self, images: np.ndarray) -> np.ndarray:
        """bool (B, H, W); an image without a face gets an empty mask (its whole image counts)."""
        height, width = images.shape[1:3]
        return np.stack(
            [
                face_mask_from_landmarks(lm, height, width)
                if not np.isnan(lm).any()
                else np.zeros((height, width), bool)
                for lm in self.landmarks(images)
            ]
        )

    def held_out(self) -> dict[str, float]:
        return {}


def aligned_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks (..., 68, 2) moved by the similarity that puts the eye centres at (−1, 0) and (1, 0)."""
    left, right = landmarks[..., 36:42, :].mean(-2), landmarks[..., 42:48, :].mean(-2)
    centre, axis = (left + right) / 2, (right - left) / 2
    scale = np.linalg.norm(axis, axis=-1, keepdims=True)
    cos, sin = axis[..., :1] / scale, axis[..., 1:] / scale
    shifted = landmarks - centre[..., None, :]
    x = (shifted[..., 0] * cos + shifted[..., 1] * sin) / scale
    y = (-shifted[..., 0] * sin + shifted[..., 1] * cos) / scale
    return np.stack([x, y], -1)


@dataclasses.dataclass(frozen=True)
class LandmarkAUProxy:
    """AUs as a linear function of the aligned landmarks, fitted (ridge) on synthetic faces' exact
    landmarks; `landmarks_of` gives each image's 68 landmarks (a `PhotoFaces`)."""

    weights: np.ndarray  # (137, 12): aligned landmarks flattened, then 1
    fit_error: dict[str, float]
    landmarks_of: PhotoFaces | None = None
    label: str = "landmark-geometry AU proxy (not an AU estimator)"

    @classmethod
    def fit(cls, samples: int = 2000, seed: int = 0, ridge: float = 1e-3) -> LandmarkAUProxy:
        from magicface_jax.data import face_geometry, face_params

        rng = np.random.default_rng(seed)
        shapes, aus = [], []
        for _ in range(samples):
            identity, intensities = face_params.sample_identity(rng), face_params.sample_aus(rng)
            shapes.append(face_geometry.landmarks(identity, intensities))
            aus.append(intensities)
        design = _design(np.stack(shapes))
        aus = np.stack(aus).astype(np.float64)
        train, test = slice(0, samples * 4 // 5), slice(samples * 4 // 5, samples)
        gram = design[train].T @ design[train] + ridge * len(design[train]) * np.eye(design.shape[1])
        weights = np.linalg.solve(gram, design[train].T @ aus[train])
        error = {
            "au_mse_on_synthetic_landmarks": float(((design[test] @ weights - aus[test]) ** 2).mean()),
            "au_mse_constant": float(((aus[train].mean(0) - aus[test]) ** 2).mean()),
        }
        return cls(weights, error)

    def with_faces(self, faces: PhotoFaces) -> LandmarkAUProxy:
        return dataclasses.replace(self, landmarks_of=faces)

    def from_landmarks(self, landmarks: np.ndarray) -> np.ndarray:
        """(B, 68, 2) -> (B, 12) AU intensities clipped to [0, 5]; NaN rows stay NaN."""
        return np.clip(_design(landmarks) @ self.weights, 0, 5)

    def aus(self, images: np.ndarray, names: Sequence[str] = ()) -> np.ndarray:
        if self.landmarks_of is None:
            raise MagicFaceError("the landmark AU proxy needs a face finder: use with_faces(PhotoFaces())")
        return self.from_landmarks(self.landmarks_of.landmarks(images))

    def held_out(self) -> dict[str, float]:
        return dict(self.fit_error)


def _design(landmarks: np.ndarray) -> np.ndarray:
    flat = aligned_landmarks(np.asarray(landmarks, np.float64)).reshape(len(landmarks), -1)
    return np.concatenate([flat, np.ones((len(flat), 1))], -1)


class OpenFaceAUs:
    """AU intensities that OpenFace 2.0 wrote per image: `folder/NAME.csv` for the image named NAME (the
    first row with `success` 1; AU01_r … AU26_r). Every CSV is checked when the folder is opened."""

    label = "OpenFace 2.0"

    def __init__(self, folder: str | Path):
        from magicface_jax.data.labels import au_columns, read_rows

        folder = Path(folder)
        if not folder.is_dir():
            raise MagicFaceError(f"OpenFace folder {folder} does not exist")
        self._aus: dict[str, np.ndarray] = {}
        for path in sorted(folder.glob("*.csv")):
            header, rows = read_rows(path)
            columns = au_columns(header, path)
            good = [r for r in rows if r.get("success", "1") not in ("0", "0.0")]
            values = [float(good[0][c]) for c in columns] if good else [np.nan] * NUM_AUS
            self._aus[path.stem] = np.asarray(values, np.float64)
        if not self._aus:
            raise MagicFaceError(f"{folder} holds no OpenFace CSV files (NAME.csv for each image NAME)")

    def aus(self, images: np.ndarray, names: Sequence[str]) -> np.ndarray:
        return np.stack([self._aus.get(name, np.full(NUM_AUS, np.nan)) for name in names])

    def held_out(self) -> dict[str, float]:
        return {}
