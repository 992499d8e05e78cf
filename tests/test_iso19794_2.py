"""ISO/IEC 19794-2:2005 records: a byte-exact golden record, round trips, and hostile bytes."""

from __future__ import annotations

import contextlib
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biometrics.fingerprint.iso19794_2 import (
    MAX_RECORD_BYTES,
    TemplateFormatError,
    decode,
    encode,
)
from biometrics.fingerprint.types import FingerprintTemplate, Minutiae


def _template(points, width=256, height=360, dpi=500, quality=80, position=2) -> FingerprintTemplate:
    """points: (x, y, angle in degrees, kind, quality)."""
    arr = np.array(points, dtype=np.float64).reshape(-1, 5)
    return FingerprintTemplate(
        width=width,
        height=height,
        resolution_dpi=dpi,
        minutiae=Minutiae(
            x=arr[:, 0].astype(np.float32),
            y=arr[:, 1].astype(np.float32),
            angle=np.radians(arr[:, 2]).astype(np.float32),
            kind=arr[:, 3].astype(np.uint8),
            quality=arr[:, 4].astype(np.uint8),
        ),
        quality=quality,
        finger_position=position,
    )


GOLDEN_TEMPLATE = _template([(100, 200, 90.0, 1, 60), (255, 359, 180.0, 2, 100)])

# Computed by hand from the standard's layout (big-endian):
GOLDEN = bytes.fromhex(
    # -- record header, 24 bytes
    "464d5200"  # format identifier "FMR\0"
    "20323000"  # version " 20\0"
    "0000002a"  # record length: 24 + 4 + 2*6 + 2 = 42
    "0000"  # capture equipment: not certified, device type 0
    "0100"  # width 256
    "0168"  # height 360
    "00c5"  # x resolution: 500 dpi / 2.54 = 196.85 -> 197 px/cm
    "00c5"  # y resolution
    "01"  # one finger view
    "00"  # reserved
    # -- finger view header
    "02"  # finger position 2: right index
    "00"  # view number 0 (high nibble), impression type 0: live-scan plain
    "50"  # finger quality 80
    "02"  # two minutiae
    # -- minutia 1: ending (01) at x=100, y=200, 90 degrees = 64 units, quality 60
    "4064"  # 01 | 00000001100100
    "00c8"  # 00 | 00000011001000
    "40"  # 64 * 1.40625 = 90
    "3c"  # 60
    # -- minutia 2: bifurcation (10) at x=255, y=359, 180 degrees = 128 units, quality 100
    "80ff"  # 10 | 00000011111111
    "0167"  # 00 | 00000101100111
    "80"
    "64"
    # -- no extended data
    "0000"
)


def _with_ext(record: bytes, ext: bytes) -> bytes:
    """The one-view record with an extended data block appended and lengths fixed."""
    body = record[:-2] + struct.pack(">H", len(ext)) + ext
    return body[:8] + struct.pack(">I", len(body)) + body[12:]


def _set(record: bytes, offset: int, value: bytes) -> bytes:
    return record[:offset] + value + record[offset + len(value) :]


# ---------------------------------------------------------------- golden and round trips


def test_golden_record_is_byte_exact() -> None:
    assert encode(GOLDEN_TEMPLATE) == GOLDEN
    assert encode([GOLDEN_TEMPLATE]) == GOLDEN


def test_golden_record_decodes_to_its_fields() -> None:
    [t] = decode(GOLDEN)
    assert (t.width, t.height, t.resolution_dpi, t.quality, t.finger_position) == (256, 360, 500, 80, 2)
    np.testing.assert_array_equal(t.minutiae.x, [100, 255])
    np.testing.assert_array_equal(t.minutiae.y, [200, 359])
    np.testing.assert_allclose(t.minutiae.angle, [math.pi / 2, math.pi], atol=1e-6)
    np.testing.assert_array_equal(t.minutiae.kind, [1, 2])
    np.testing.assert_array_equal(t.minutiae.quality, [60, 100])


def test_angles_are_counter_clockwise_units_of_1_40625_degrees() -> None:
    t = _template([(1, 1, 1.40625 * 3, 1, 0), (2, 2, 359.5, 1, 0), (3, 3, -90.0, 2, 0)])
    record = encode(t)
    assert [record[28 + 6 * i + 4] for i in range(3)] == [3, 0, 192]


def test_several_views_number_each_finger_separately() -> None:
    a = _template([(10, 10, 0, 1, 50)], position=2)
    b = _template([], position=7, quality=0)
    c = _template([(20, 30, 45, 2, 70)], position=2)
    record = encode([a, b, c])
    views = decode(record)
    assert [v.finger_position for v in views] == [2, 7, 2]
    assert [len(v.minutiae) for v in views] == [1, 0, 1]
    # View bytes: position, (view number << 4) | impression type.
    assert record[24:26] == b"\x02\x00"
    assert record[24 + 4 + 6 + 2 : 24 + 4 + 6 + 2 + 2] == b"\x07\x00"
    assert record[24 + 2 * (4 + 2) + 6 : 24 + 2 * (4 + 2) + 6 + 2] == b"\x02\x10"


def test_coordinates_in_the_last_half_pixel_stay_inside_the_image() -> None:
    t = _template([(255.7, 359.6, 0, 1, 0)])
    [back] = decode(encode(t))
    assert (back.minutiae.x[0], back.minutiae.y[0]) == (255, 359)


@pytest.mark.parametrize("header_counted", [False, True])
def test_extended_data_areas_are_skipped_by_their_lengths(header_counted: bool) -> None:
    extra = 4 if header_counted else 0
    ext = (
        struct.pack(">HH", 0x0001, 7 + extra)
        + bytes([0, 0, 1, 3, 0, 1, 2])  # ridge counts
        + struct.pack(">HH", 0x0102, 2 + extra)
        + b"\xab\xcd"  # vendor area
    )
    views = decode(_with_ext(GOLDEN, ext))
    assert len(views) == 1
    np.testing.assert_array_equal(views[0].minutiae.x, [100, 255])


@pytest.mark.parametrize(
    "ext",
    [
        struct.pack(">HH", 1, 9) + b"\x00" * 3,  # area longer than the block
        struct.pack(">HH", 1, 0) + b"\x00",  # a dangling byte
        b"\x00\x01\x00",  # area header cut
        struct.pack(">HH", 0, 0),  # reserved type 0
    ],
)
def test_extended_data_that_lies_is_rejected(ext: bytes) -> None:
    with pytest.raises(TemplateFormatError, match="extended data"):
        decode(_with_ext(GOLDEN, ext))


def test_extended_block_length_past_the_record_is_rejected() -> None:
    with pytest.raises(TemplateFormatError, match="extended data length"):
        decode(_set(GOLDEN, 40, b"\x00\x10"))


# ---------------------------------------------------------------- malformed records


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: _set(r, 0, b"FIR\x00"), "format identifier"),
        (lambda r: _set(r, 4, b" 30\x00"), "version"),
        (lambda r: _set(r, 8, struct.pack(">I", 43)), "record length"),
        (lambda r: _set(r, 8, struct.pack(">I", 41)), "record length"),
        (lambda r: r + b"\x00", "record length"),
        (lambda r: _set(r, 14, b"\x00\x00"), "image size"),
        (lambda r: _set(r, 18, b"\x00\x00"), "resolution"),
        (lambda r: _set(r, 20, b"\x00\x00"), "resolution"),
        (lambda r: _set(r, 20, b"\x00\xc6"), "square pixels"),
        (lambda r: _set(r, 22, b"\x00"), "zero finger views"),
        (lambda r: _set(r, 22, b"\x02"), "view count overruns"),
        (lambda r: _set(r, 23, b"\x01"), "reserved"),
        (lambda r: _set(r, 24, b"\x0b"), "finger position"),
        (lambda r: _set(r, 25, b"\x09"), "impression type"),
        (lambda r: _set(r, 26, b"\x65"), "finger quality"),
        (lambda r: _set(r, 27, b"\x03"), "minutia count overruns"),
        (lambda r: _set(r, 27, b"\x01"), "extended data length"),
        (lambda r: _set(r + b"\x00\x00", 8, struct.pack(">I", 44)), "follow the last"),
        (lambda r: _set(r, 28, b"\xc0"), "type code 3"),
        (lambda r: _set(r, 28, b"\x41\x00"), "outside"),  # x = 256 = width
        (lambda r: _set(r, 30, b"\x01\x68"), "outside"),  # y = 360 = height
        (lambda r: _set(r, 30, b"\x40"), "reserved bits"),
        (lambda r: _set(r, 33, b"\x65"), "quality 101"),
        (lambda r: b"\x00" * (MAX_RECORD_BYTES + 1), "more than"),
    ],
)
def test_each_malformed_field_has_its_own_error(mutate, message: str) -> None:
    with pytest.raises(TemplateFormatError, match=message):
        decode(mutate(GOLDEN))


def test_bytearray_and_memoryview_are_accepted() -> None:
    assert len(decode(bytearray(GOLDEN))) == 1
    assert len(decode(memoryview(GOLDEN))) == 1
    with pytest.raises(TemplateFormatError, match="more than"):
        decode(memoryview(np.zeros(MAX_RECORD_BYTES // 4 + 1, np.uint32)))


def test_the_error_is_a_value_error_and_non_bytes_are_refused() -> None:
    assert issubclass(TemplateFormatError, ValueError)
    with pytest.raises(TemplateFormatError, match="bytes"):
        decode("FMR")  # type: ignore[arg-type]


def test_truncation_at_every_length_is_an_error() -> None:
    record = encode([GOLDEN_TEMPLATE, _template([(5, 6, 7, 0, 8)] * 3, position=3)])
    for n in range(len(record)):
        with pytest.raises(TemplateFormatError):
            decode(record[:n])
        # Even with the length field patched to agree, a cut record cannot decode.
        if n >= 12:
            cut = record[:8] + struct.pack(">I", n) + record[12:n]
            with pytest.raises(TemplateFormatError):
                decode(cut)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (_template([(256, 0, 0, 1, 0)]), "outside"),
        (_template([(-1, 0, 0, 1, 0)]), "outside"),
        (_template([(0, 0, 0, 3, 0)]), "kind"),
        (_template([(0, 0, 0, 1, 101)]), "quality"),
        (_template([], quality=101), "finger quality"),
        (_template([], position=11), "finger position"),
        (_template([], dpi=0), "resolution"),
        (_template([], width=0), "image size"),
        (_template([(0, 0, 0, 1, 0)] * 256), "at most 255"),
    ],
)
def test_templates_the_format_cannot_hold_are_refused(template, message: str) -> None:
    with pytest.raises(TemplateFormatError, match=message):
        encode(template)


def test_templates_of_different_geometry_cannot_share_a_record() -> None:
    with pytest.raises(TemplateFormatError, match="share"):
        encode([GOLDEN_TEMPLATE, _template([], width=300)])
    with pytest.raises(TemplateFormatError, match="at least one"):
        encode([])


# ---------------------------------------------------------------- properties


@st.composite
def template_lists(draw, max_views: int = 3) -> list[FingerprintTemplate]:
    """Valid templates sharing one geometry, as one record holds them."""
    width = draw(st.integers(1, 2000))
    height = draw(st.integers(1, 2000))
    ppcm = draw(st.integers(40, 800))
    out = []
    for _ in range(draw(st.integers(1, max_views))):
        n = draw(st.integers(0, 60))
        ints = st.lists(st.integers(0, 10**6), min_size=n, max_size=n)
        xs = np.array(draw(ints), np.int64) % width
        ys = np.array(draw(ints), np.int64) % height
        units = np.array(draw(ints), np.int64) % 256
        kinds = np.array(draw(ints), np.int64) % 3
        quals = np.array(draw(ints), np.int64) % 101
        out.append(
            FingerprintTemplate(
                width=width,
                height=height,
                resolution_dpi=round(ppcm * 2.54),
                minutiae=Minutiae(
                    x=xs.astype(np.float32),
                    y=ys.astype(np.float32),
                    angle=(units * (2 * np.pi / 256)).astype(np.float32),
                    kind=kinds.astype(np.uint8),
                    quality=quals.astype(np.uint8),
                ),
                quality=draw(st.integers(0, 100)),
                finger_position=draw(st.integers(0, 10)),
            )
        )
    return out


def templates() -> st.SearchStrategy[FingerprintTemplate]:
    return template_lists(max_views=1).map(lambda items: items[0])


def _same(a: FingerprintTemplate, b: FingerprintTemplate) -> None:
    assert (a.width, a.height, a.resolution_dpi, a.quality, a.finger_position) == (
        b.width,
        b.height,
        b.resolution_dpi,
        b.quality,
        b.finger_position,
    )
    for field in ("x", "y", "kind", "quality"):
        np.testing.assert_array_equal(getattr(a.minutiae, field), getattr(b.minutiae, field))
    np.testing.assert_allclose(a.minutiae.angle, b.minutiae.angle, atol=1e-5)


@settings(max_examples=150, deadline=None)
@given(template_lists())
def test_round_trip_of_any_valid_template(items: list[FingerprintTemplate]) -> None:
    record = encode(items)
    back = decode(record)
    assert len(back) == len(items)
    for a, b in zip(items, back, strict=True):
        _same(a, b)
    assert encode(back) == record


@settings(max_examples=100, deadline=None)
@given(templates(), st.floats(-100.0, 100.0, allow_nan=False))
def test_angles_come_back_within_half_a_unit(t: FingerprintTemplate, turn: float) -> None:
    m = t.minutiae
    shifted = Minutiae(m.x, m.y, np.mod(m.angle + np.float32(turn), 2 * np.pi).astype(np.float32), m.kind, m.quality)
    [back] = decode(encode(FingerprintTemplate(t.width, t.height, t.resolution_dpi, shifted)))
    diff = np.angle(np.exp(1j * (back.minutiae.angle.astype(np.float64) - shifted.angle)))
    assert np.all(np.abs(diff) <= math.radians(1.40625) / 2 + 1e-5)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_byte_string_decodes_or_raises_the_typed_error(data: bytes) -> None:
    for candidate in (data, GOLDEN[:24] + data, GOLDEN[:8] + struct.pack(">I", 12 + len(data)) + data):
        with contextlib.suppress(TemplateFormatError):
            decode(candidate)


@settings(max_examples=400, deadline=None)
@given(templates(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6))
def test_any_mutation_of_a_valid_record_decodes_or_raises_the_typed_error(t, edits) -> None:
    record = bytearray(encode(t))
    for where, value in edits:
        record[where % len(record)] = value
    try:
        views = decode(bytes(record))
    except TemplateFormatError:
        return
    for v in views:  # whatever decodes is a valid template: it encodes again
        assert len(v.minutiae) == 0 or (v.minutiae.x.max() < v.width and v.minutiae.y.max() < v.height)
        assert 0 <= v.quality <= 100
