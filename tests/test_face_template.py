"""The face template on the wire (protocol/face_template.py): a golden record, round trips, a typed error for
every malformed input, and hypothesis fuzzing as for the ISO fingerprint codec."""

from __future__ import annotations

import contextlib
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import face_template as ft
from protocol.face_template import (
    FaceTemplateBadMagic,
    FaceTemplateDimension,
    FaceTemplateError,
    FaceTemplateNorm,
    FaceTemplateNotFinite,
    FaceTemplateTruncated,
    FaceTemplateUnknownModel,
    FaceTemplateVersion,
    decode,
    encode,
)

MODEL = "sface-2021dec-int8bq"
BASIS = [1.0] + [0.0] * 127  # a unit vector whose float32 bytes are known by hand


def unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=128)
    return [float(x) for x in (v / np.linalg.norm(v)).astype(np.float32)]


def test_golden_record_is_byte_exact() -> None:
    expected = (
        b"FEMB"  # magic
        + b"\x01"  # version 1
        + b"\x14"  # model name: 20 bytes
        + b"sface-2021dec-int8bq"
        + b"\x80\x00"  # dim 128, little-endian
        + b"\x00\x00\x80\x3f"  # 1.0f little-endian
        + b"\x00\x00\x00\x00" * 127
    )
    assert encode(MODEL, BASIS) == expected
    t = decode(expected)
    assert (t.model, t.dim, t.values[0], t.values[1]) == (MODEL, 128, 1.0, 0.0)


def test_the_protocol_knows_the_model_the_pipeline_runs() -> None:
    """Both ends must name the embedding the same way: biometrics.face's model is one the protocol knows."""
    from biometrics.face.embed import DIM, MODEL_NAME

    assert ft.MODELS[MODEL_NAME] == DIM


def test_a_real_embedding_survives_the_wire(face_pipeline, att_faces) -> None:
    import cv2

    analysis = face_pipeline.analyse(cv2.imread(str(att_faces / "s3" / "1.pgm")))
    record = encode(face_pipeline.embedder.model_name, analysis.embedding.tolist())
    back = np.array(decode(record).values, np.float32)
    assert np.array_equal(back, analysis.embedding)


def _good() -> bytearray:
    return bytearray(encode(MODEL, unit(1)))


def _set_float(rec: bytearray, index: int, value: float) -> bytearray:
    struct.pack_into("<f", rec, 28 + 4 * index, value)
    return rec


MALFORMED = [
    (lambda r: r[:3], FaceTemplateTruncated, "header"),
    (lambda r: r[:20], FaceTemplateTruncated, "header"),
    (lambda r: r[:-1], FaceTemplateTruncated, "540 bytes"),
    (lambda r: r + b"\x00", FaceTemplateTruncated, "540 bytes"),
    (lambda r: b"FMR\x00" + r[4:], FaceTemplateBadMagic, "not a face template"),
    (lambda r: r[:4] + b"\x02" + r[5:], FaceTemplateVersion, "version 2"),
    (lambda r: r[:5] + b"\x00" + r[6:], FaceTemplateUnknownModel, "a-z0-9"),
    (lambda r: r[:6] + b"SFACE" + r[11:], FaceTemplateUnknownModel, "a-z0-9"),
    (lambda r: r[:6] + b"arcface-r100-int8bq." + r[26:], FaceTemplateUnknownModel, "same model"),
    (lambda r: r[:26] + b"\x00\x02" + r[28:], FaceTemplateDimension, "record says 512"),
    (lambda r: _set_float(r, 5, math.nan), FaceTemplateNotFinite, "NaN"),
    (lambda r: _set_float(r, 0, math.inf), FaceTemplateNotFinite, "NaN or infinite"),
    (lambda r: _set_float(r, 0, 0.9), FaceTemplateNorm, "norm"),
]


@pytest.mark.parametrize(("mutate", "error", "message"), MALFORMED)
def test_each_malformed_field_has_its_own_error(mutate, error, message: str) -> None:
    with pytest.raises(error, match=message):
        decode(bytes(mutate(_good())))


def test_a_scaled_embedding_is_refused_but_rounding_is_not() -> None:
    v = np.array(unit(2), np.float64)
    with pytest.raises(FaceTemplateNorm):
        encode(MODEL, (v * 1.01).tolist())
    assert decode(encode(MODEL, (v * (1 + 5e-4)).tolist())).dim == 128


@pytest.mark.parametrize(
    ("model", "values", "error"),
    [
        ("nope", BASIS, FaceTemplateUnknownModel),
        ("Sface", BASIS, FaceTemplateUnknownModel),
        ("", BASIS, FaceTemplateUnknownModel),
        (MODEL, BASIS[:127], FaceTemplateDimension),
        (MODEL, [math.nan, *BASIS[1:]], FaceTemplateNotFinite),
        (MODEL, [1e+39, *BASIS[1:]], FaceTemplateNotFinite),
        (MODEL, ["1", *BASIS[1:]], FaceTemplateNotFinite),
        (MODEL, [0.0] * 128, FaceTemplateNorm),
    ],
)
def test_encode_never_makes_a_record_decode_would_refuse(model, values, error) -> None:
    with pytest.raises(error):
        encode(model, values)


def test_non_bytes_are_refused_and_buffers_accepted() -> None:
    with pytest.raises(FaceTemplateError, match="bytes"):
        decode("FEMB")
    rec = _good()
    assert decode(memoryview(rec)) == decode(bytes(rec))
    assert issubclass(FaceTemplateError, ValueError)


def test_truncation_at_every_length_is_an_error() -> None:
    rec = bytes(_good())
    for n in range(len(rec)):
        with pytest.raises(FaceTemplateError):
            decode(rec[:n])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=128, max_size=128))
def test_round_trip_of_any_unit_vector(raw: list[float]) -> None:
    v = np.array(raw, np.float64)
    norm = np.linalg.norm(v)
    if norm < 1e-6:
        return
    values = (v / norm).astype(np.float32)
    t = decode(encode(MODEL, values.tolist()))
    assert np.array_equal(np.array(t.values, np.float32), values)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=700))
def test_any_byte_string_decodes_or_raises_the_typed_error(data: bytes) -> None:
    with contextlib.suppress(FaceTemplateError):
        decode(data)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 2**16), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6))
def test_any_mutation_of_a_valid_record_decodes_or_raises_the_typed_error(seed: int, edits) -> None:
    rec = bytearray(encode(MODEL, unit(seed)))
    for pos, byte in edits:
        rec[pos % len(rec)] = byte
    try:
        t = decode(bytes(rec))
    except FaceTemplateError:
        return
    assert t.model in ft.MODELS
    assert all(math.isfinite(x) for x in t.values)
    assert abs(math.sqrt(sum(x * x for x in t.values)) - 1.0) <= ft.NORM_TOLERANCE
