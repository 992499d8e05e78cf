"""The face template on the wire: a named embedding, versioned, checked on decode.

A face template is the embedding the device made, never an image. It travels,
like a fingerprint record, as ``{"format": FORMAT, "data": base64(record)}``; the
record is self-describing so a verifier can refuse what it cannot compare:

    offset  size   field
    0       4      magic b"FEMB"
    4       1      version (1)
    5       1      n, length of the model name (1..64)
    6       n      model name, ASCII [a-z0-9.-] (e.g. "sface-2021dec-int8bq")
    6+n     2      dim, little-endian unsigned
    8+n     4*dim  the embedding, little-endian IEEE-754 float32

The record must be exactly that long. Decoding checks, in order: magic, version,
name, model known (:data:`MODELS`: name -> dimension), dimension equal to the
model's, length, every value finite, Euclidean norm 1 within
:data:`NORM_TOLERANCE`. Each failure is its own subclass of
:class:`FaceTemplateError` whose message names the fix; :func:`encode` applies
the same checks, so no malformed record is ever made. Pure: struct and math.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from protocol.wire import NotBase64Error, b64decode_strict

FORMAT = "face-embedding"
MAGIC = b"FEMB"
VERSION = 1
MODELS: dict[str, int] = {"sface-2021dec-int8bq": 128}  # the models a verifier can compare, and their dimension
NORM_TOLERANCE = 1e-3
MAX_NAME = 64
MAX_RECORD_BYTES = 4 + 1 + 1 + MAX_NAME + 2 + 4 * max(MODELS.values())
_NAME = re.compile(rb"[a-z0-9][a-z0-9.-]*")
_HEADER = struct.Struct("<4sBB")


class FaceTemplateError(ValueError):
    """A face template record that is not protocol v1; subclasses say which check failed.

    ``item`` is the record's place in a body (``faces[1]``) when the error is about one.
    """

    def __init__(self, message: str, item: str = "") -> None:
        super().__init__(message)
        self.item = item


class FaceTemplateTruncated(FaceTemplateError):
    """The record is shorter or longer than its header says."""


class FaceTemplateBadMagic(FaceTemplateError):
    """The record does not start with b"FEMB"."""


class FaceTemplateVersion(FaceTemplateError):
    """A record version this side does not read."""


class FaceTemplateUnknownModel(FaceTemplateError):
    """The model name is malformed or not one this side can compare."""


class FaceTemplateDimension(FaceTemplateError):
    """The dimension is not the model's."""


class FaceTemplateNotFinite(FaceTemplateError):
    """A value is NaN or infinite."""


class FaceTemplateNorm(FaceTemplateError):
    """The embedding is not a unit vector."""


_FIX = "make the template again with the agent's face pipeline"


@dataclass(frozen=True, slots=True)
class FaceTemplate:
    """A decoded, checked face template: the model that made it and its unit-norm values."""

    model: str
    values: tuple[float, ...]

    @property
    def dim(self) -> int:
        return len(self.values)


def _check_model(name: str) -> int:
    raw = name.encode("ascii", "replace") if isinstance(name, str) else b""
    if not 1 <= len(raw) <= MAX_NAME or not _NAME.fullmatch(raw):
        raise FaceTemplateUnknownModel(
            f"model name {name!r} is not 1..{MAX_NAME} characters of [a-z0-9.-]; {_FIX}"
        )
    if name not in MODELS:
        raise FaceTemplateUnknownModel(
            f"face model {name!r} is not one this verifier compares ({', '.join(sorted(MODELS))}); "
            "update the agent or the verifier so both run the same model"
        )
    return MODELS[name]


def _check_values(values: Sequence[float]) -> None:
    if not all(math.isfinite(v) for v in values):
        raise FaceTemplateNotFinite(f"the embedding holds NaN or infinite values; {_FIX}")
    norm = math.sqrt(math.fsum(v * v for v in values))
    if abs(norm - 1.0) > NORM_TOLERANCE:
        raise FaceTemplateNorm(f"the embedding's norm is {norm:.6g}, not 1 (L2-normalise it); {_FIX}")


def encode(model: str, values: Sequence[float]) -> bytes:
    """The record of an embedding (rounded to float32), after the same checks decode applies."""
    dim = _check_model(model)
    if isinstance(values, str | bytes) or len(values) != dim:
        raise FaceTemplateDimension(f"model {model!r} makes {dim} values, got {len(values)}; {_FIX}")
    try:
        packed = struct.pack(f"<{dim}f", *values)
    except (struct.error, TypeError, OverflowError):
        raise FaceTemplateNotFinite(f"the embedding holds values that are not float32 numbers; {_FIX}") from None
    _check_values(struct.unpack(f"<{dim}f", packed))
    name = model.encode("ascii")
    return _HEADER.pack(MAGIC, VERSION, len(name)) + name + struct.pack("<H", dim) + packed


def decode(record: bytes) -> FaceTemplate:
    """The template a record holds, or the :class:`FaceTemplateError` subclass of its first defect."""
    if not isinstance(record, bytes | bytearray | memoryview):
        raise FaceTemplateError(f"a face template record is bytes, got {type(record).__name__}")
    data = bytes(record)
    if len(data) > MAX_RECORD_BYTES:
        raise FaceTemplateTruncated(f"record of {len(data)} bytes exceeds {MAX_RECORD_BYTES}; {_FIX}")
    if len(data) < _HEADER.size:
        raise FaceTemplateTruncated(f"record of {len(data)} bytes is shorter than its {_HEADER.size}-byte header")
    magic, version, n = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FaceTemplateBadMagic(f"record starts with {magic!r}, not {MAGIC!r}: not a face template")
    if version != VERSION:
        raise FaceTemplateVersion(f"face template version {version}; this side reads version {VERSION}: update it")
    if len(data) < _HEADER.size + n + 2:
        raise FaceTemplateTruncated(f"record of {len(data)} bytes ends inside its header; {_FIX}")
    raw_name = data[_HEADER.size : _HEADER.size + n]
    if not 1 <= n <= MAX_NAME or not _NAME.fullmatch(raw_name):
        raise FaceTemplateUnknownModel(f"model name {raw_name!r} is not 1..{MAX_NAME} characters of [a-z0-9.-]")
    model = raw_name.decode("ascii")
    expected = _check_model(model)
    (dim,) = struct.unpack_from("<H", data, _HEADER.size + n)
    if dim != expected:
        raise FaceTemplateDimension(f"model {model!r} makes {expected} values, the record says {dim}; {_FIX}")
    start = _HEADER.size + n + 2
    if len(data) != start + 4 * dim:
        raise FaceTemplateTruncated(
            f"record of {len(data)} bytes; a {model} template is {start + 4 * dim} bytes; {_FIX}"
        )
    values = struct.unpack_from(f"<{dim}f", data, start)
    _check_values(values)
    return FaceTemplate(model, values)


# ---------------------------------------------------------------- in a request body
FACES = "faces"  # the body field beside "templates": a list of face template envelopes
LIVENESS = "liveness"  # the body field naming the liveness challenge the device ran (face requests only)
MAX_FACES = 5  # face templates per request
FINGER = "finger"  # the two factors: a modality's name in sessions, decisions, audit events and policies
FACE = "face"
FACTORS = (FINGER, FACE)
ACR_FACE = FACE  # RFC 9470 acr_values naming a face as the factor asked for
ACR_FINGER = FINGER  # ... and a finger, when a face came first and the policy needs both
# The steps a liveness challenge is made of (biometrics.face.liveness: each a prompt code), in the wire's words.
LIVENESS_STEPS = ("turn_head_left", "turn_head_right", "look_at_camera")
MAX_LIVENESS_STEPS = 16


def wire_faces(records: Sequence[bytes]) -> list[dict[str, str]]:
    """The ``faces`` list of a request: each record in the same envelope as a fingerprint template."""
    return [{"format": FORMAT, "data": base64.b64encode(r).decode("ascii")} for r in records]


def face_records_of(items: object) -> list[bytes]:
    """The records of a ``faces`` list, each decoded and checked; a :class:`FaceTemplateError` names the item."""
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_FACES:
        raise FaceTemplateError(f"the body's {FACES!r} needs 1 to {MAX_FACES} face templates")
    records = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or item.get("format") != FORMAT or not isinstance(item.get("data"), str):
            raise FaceTemplateError(f"faces[{index}] is not a {FORMAT} template", f"faces[{index}]")
        try:
            record = b64decode_strict(item["data"])
        except NotBase64Error:
            raise FaceTemplateError(f"faces[{index}]: the data is not base64", f"faces[{index}]") from None
        try:
            decode(record)
        except FaceTemplateError as exc:
            raise type(exc)(f"faces[{index}]: {exc}", f"faces[{index}]") from None
        records.append(record)
    return records


def wire_liveness(steps: Sequence[str]) -> dict[str, object]:
    """The ``liveness`` field: the challenge the device ran (derived from the nonce) and that it passed."""
    return {"steps": list(steps), "result": "passed"}


def liveness_steps_of(value: object) -> tuple[str, ...]:
    """The steps a ``liveness`` field claims were passed; :class:`FaceTemplateError` when it is malformed."""
    if not isinstance(value, dict) or set(value) != {"steps", "result"}:
        raise FaceTemplateError('a face request needs "liveness": {"steps": [...], "result": "passed"}')
    steps = value["steps"]
    if not isinstance(steps, list) or not 1 <= len(steps) <= MAX_LIVENESS_STEPS:
        raise FaceTemplateError(f"liveness steps are 1 to {MAX_LIVENESS_STEPS} prompt codes")
    # Only the challenge's words: a step was any string of any length, audited whole when it was not the nonce's.
    unknown = sum(1 for s in steps if not isinstance(s, str) or s not in LIVENESS_STEPS)
    if unknown:
        raise FaceTemplateError(f"{unknown} of the {len(steps)} liveness steps are no step of a challenge; "
                                f"each is one of {', '.join(LIVENESS_STEPS)}")
    if value["result"] != "passed":
        raise FaceTemplateError("only a passed liveness challenge is sent; the device refuses the others itself")
    return tuple(steps)
