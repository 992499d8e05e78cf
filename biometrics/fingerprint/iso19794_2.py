"""ISO/IEC 19794-2:2005 finger minutiae records ("FMR\\0", version " 20\\0").

The wire format of fingerprint templates (DESIGN.md): the agent encodes, the
verifier decodes bytes that arrived over the network, so :func:`decode` treats
its input as hostile. Every malformed record raises :class:`TemplateFormatError`
(a ``ValueError``) whose message says what is wrong and what to do; no other
exception escapes, whatever the bytes.

Layout (big-endian throughout; offsets in bytes)::

    record header, 24 bytes
      0  4  format identifier  "FMR\\0"  (0x464D5200)
      4  4  version            " 20\\0"  (0x20323000)
      8  4  record length, header included (ISO uses 4 bytes always; the
            2-or-6-byte rule belongs to ANSI INCITS 378-2004)
     12  2  capture equipment: 4 bits certification flags, 12 bits device type ID
     14  2  image width in pixels
     16  2  image height in pixels
     18  2  x resolution, pixels per centimetre
     20  2  y resolution, pixels per centimetre
     22  1  number of finger views
     23  1  reserved, 0
    per finger view, 4 bytes + 6 per minutia + 2 + extended data
      0  1  finger position (0 unknown, 1..10 right thumb .. left little)
      1  1  view number (high 4 bits), impression type (low 4 bits, 0..8)
      2  1  finger quality 0..100
      3  1  number of minutiae
            per minutia, 6 bytes:
              2 bits type (00 other, 01 ridge ending, 10 bifurcation) + 14 bits x
              2 bits reserved (0) + 14 bits y
              1 byte angle, units of 360/256 = 1.40625 degrees
              1 byte quality 0..100
      .  2  extended data block length (0: none), then that many bytes of areas:
            2 bytes type code, 2 bytes area length, area data

Angles: ISO measures the minutia direction counter-clockwise from the
horizontal axis pointing right, as the image is seen (origin top-left, y down).
That is exactly the convention of :mod:`biometrics.fingerprint.types`, so the
conversion is a pure unit change: ``iso = round(angle * 256 / 2pi) mod 256`` and
back ``angle = iso * 2pi / 256`` (quantisation error at most 0.70 degrees).

Extended data areas: the 2005 text counts only the area's data in its length
field (FingerprintIO reads it so), while NIST's NBIS code counts the 4 header
bytes too (the rule of the 2011 edition). We write one area, and only for a
template that carries an orientation field (the 2005 rule); when
decoding we accept a block whose areas tile it exactly under either rule, and
reject one that tiles under neither. The block as a whole is always skipped by
its own 2-byte length, so a view's end never depends on that choice.

The orientation field (:class:`~biometrics.fingerprint.types.OrientationField`,
which the matcher compares under its minutiae alignment) travels in a
vendor-defined area (type codes 0x0100 to 0xFFFF are the vendors'), type
``ORIENTATION_AREA_TYPE`` = 0x4F46 ("OF"): 1 byte format version (1), 1 byte
block side in pixels at 500 dpi, 1 byte rows, 1 byte columns, then rows x
columns bytes of doubled angle (units of 2pi/256) and as many of coherence
(0 = background), row-major. The block side must be the matcher's (16), and the
grid no larger than the record's image at its resolution allows (at most 64
blocks a side, :func:`field_limits`): a gallery stores and compares each
template's field at its own size, so the limit bounds what one record costs
(memory and comparison time of its own). Other readers skip it by its length; a template
without a field is written byte for byte as before (no extended data), and a
record without the area decodes to a template without a field, which still
matches (:mod:`biometrics.fingerprint.orientation_field`). An area of this
type whose length or header is wrong is refused with TemplateFormatError.

Resolution: ISO stores pixels per centimetre, templates carry dots per inch;
500 dpi is written as 197 px/cm and 197 px/cm reads back as 500 dpi.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from biometrics.fingerprint.errors import TemplateError
from biometrics.fingerprint.orientation_field import BLOCK as FIELD_BLOCK
from biometrics.fingerprint.types import FingerprintTemplate, Minutiae, OrientationField

FORMAT_ID = b"FMR\x00"
VERSION = b" 20\x00"
HEADER_LENGTH = 24
VIEW_HEADER_LENGTH = 4
MINUTIA_LENGTH = 6
EXTENDED_LENGTH_FIELD = 2
EXTENDED_AREA_HEADER = 4

MAX_COORDINATE = 0x3FFF  # 14 bits
MAX_MINUTIAE_PER_VIEW = 255
MAX_FINGER_POSITION = 10
MAX_IMPRESSION_TYPE = 8
MAX_VIEW_NUMBER = 15
# Larger input is refused before it is parsed (a record that big is an attack or a bug): the
# verifier's largest request view (150 minutiae, a 640x480 sensor's orientation field) is
# about 3.3 KB, so ten views take about 33 KB.
MAX_RECORD_BYTES = 128 * 1024
ORIENTATION_AREA_TYPE = 0x4F46  # vendor-defined extended data area: the coarse orientation field ("OF")
ORIENTATION_AREA_VERSION = 1
ORIENTATION_AREA_HEADER = 4  # version, block side, rows, columns
MAX_FIELD_BLOCKS = 64  # rows or columns: 1,024 pixels at 500 dpi, above any finger sensor's image
REFERENCE_DPI = 500.0

ANGLE_UNIT = 2.0 * math.pi / 256.0  # radians per ISO angle unit (1.40625 degrees)
CM_PER_INCH = 2.54

_HEADER = struct.Struct(">4s4sIHHHHHBB")
_VIEW = struct.Struct(">BBBB")
_MINUTIA = np.dtype([("tx", ">u2"), ("ry", ">u2"), ("angle", "u1"), ("quality", "u1")])
assert _HEADER.size == HEADER_LENGTH and _MINUTIA.itemsize == MINUTIA_LENGTH


class TemplateFormatError(TemplateError):
    """A byte string is not a valid ISO/IEC 19794-2:2005 record, or a template cannot be encoded as one."""


# ---------------------------------------------------------------- encoding


def dpi_to_ppcm(dpi: int) -> int:
    """Pixels per centimetre written for a resolution in dots per inch."""
    return round(dpi / CM_PER_INCH)


def ppcm_to_dpi(ppcm: int) -> int:
    """Dots per inch reported for a resolution in pixels per centimetre."""
    return round(ppcm * CM_PER_INCH)


def angle_to_iso(angle: np.ndarray) -> np.ndarray:
    """Radians (counter-clockwise, y down) to ISO angle units 0..255."""
    units = np.rint(np.asarray(angle, np.float64) / ANGLE_UNIT)
    return np.mod(units, 256).astype(np.uint8)


def iso_to_angle(units: np.ndarray) -> np.ndarray:
    """ISO angle units to radians in [0, 2pi)."""
    return (np.asarray(units, np.float64) * ANGLE_UNIT).astype(np.float32)


def _check_geometry(t: FingerprintTemplate) -> None:
    if not (1 <= t.width <= 0xFFFF and 1 <= t.height <= 0xFFFF):
        raise TemplateFormatError(
            f"image size {t.width}x{t.height} does not fit the record (1..65535 pixels each): "
            "pass the capture's real size"
        )
    ppcm = dpi_to_ppcm(t.resolution_dpi) if t.resolution_dpi > 0 else 0
    if not 1 <= ppcm <= 0xFFFF:
        raise TemplateFormatError(
            f"resolution {t.resolution_dpi} dpi cannot be written in pixels per cm: set the sensor's real resolution"
        )


def _minutiae_bytes(t: FingerprintTemplate) -> bytes:
    m = t.minutiae
    n = len(m)
    if n > MAX_MINUTIAE_PER_VIEW:
        raise TemplateFormatError(
            f"{n} minutiae in one view; the format holds at most {MAX_MINUTIAE_PER_VIEW}: keep the best ones"
        )
    x = np.asarray(m.x, np.float64)
    y = np.asarray(m.y, np.float64)
    if n and not (np.isfinite(x).all() and np.isfinite(y).all() and np.isfinite(np.asarray(m.angle)).all()):
        raise TemplateFormatError("minutia coordinates and angles must be finite numbers")
    if n and (x.min() < 0 or y.min() < 0 or x.max() >= t.width or y.max() >= t.height):
        raise TemplateFormatError(
            f"a minutia lies outside the {t.width}x{t.height} image: drop it or fix the template's size"
        )
    # Rounding may push a coordinate in the last half pixel onto the border: keep it inside.
    xi = np.minimum(np.rint(x), t.width - 1).astype(np.int64)
    yi = np.minimum(np.rint(y), t.height - 1).astype(np.int64)
    if n and max(int(xi.max()), int(yi.max())) > MAX_COORDINATE:
        raise TemplateFormatError(f"minutia coordinates above {MAX_COORDINATE} do not fit 14 bits: use a smaller image")
    kind = np.asarray(m.kind, np.int64)
    if n and (kind.min() < 0 or kind.max() > 2):
        raise TemplateFormatError("minutia kind must be 0 (other), 1 (ending) or 2 (bifurcation)")
    quality = np.asarray(m.quality, np.int64)
    if n and (quality.min() < 0 or quality.max() > 100):
        raise TemplateFormatError("minutia quality must be 0..100")
    rec = np.empty(n, _MINUTIA)
    rec["tx"] = (kind << 14) | xi
    rec["ry"] = yi
    rec["angle"] = angle_to_iso(np.asarray(m.angle))
    rec["quality"] = quality
    return rec.tobytes()


def encode(templates: Sequence[FingerprintTemplate] | FingerprintTemplate, *, impression_type: int = 0) -> bytes:
    """One ISO/IEC 19794-2:2005 record holding one finger view per template.

    All templates must share the image size and resolution (the record header
    holds them once). View numbers count the views of each finger position
    0, 1, 2... in the given order. ``impression_type`` 0 is live-scan plain.
    """
    items = [templates] if isinstance(templates, FingerprintTemplate) else list(templates)
    if not items:
        raise TemplateFormatError("a record needs at least one finger view: pass one template or more")
    if len(items) > 255:
        raise TemplateFormatError(f"{len(items)} views; a record holds at most 255: split them")
    if not all(isinstance(t, FingerprintTemplate) for t in items):
        raise TemplateFormatError("encode takes FingerprintTemplate objects")
    if not 0 <= impression_type <= MAX_IMPRESSION_TYPE:
        raise TemplateFormatError(f"impression type {impression_type} is not 0..{MAX_IMPRESSION_TYPE}")
    first = items[0]
    for t in items:
        if (t.width, t.height, t.resolution_dpi) != (first.width, first.height, first.resolution_dpi):
            raise TemplateFormatError(
                "templates in one record must share image size and resolution: encode them in separate records"
            )
    _check_geometry(first)
    ppcm = dpi_to_ppcm(first.resolution_dpi)
    views: list[bytes] = []
    seen: dict[int, int] = {}
    for t in items:
        if not 0 <= t.finger_position <= MAX_FINGER_POSITION:
            raise TemplateFormatError(f"finger position {t.finger_position} is not 0..{MAX_FINGER_POSITION}")
        if not 0 <= t.quality <= 100:
            raise TemplateFormatError(f"finger quality {t.quality} is not 0..100")
        view_number = seen.get(t.finger_position, 0)
        if view_number > MAX_VIEW_NUMBER:
            raise TemplateFormatError(f"more than {MAX_VIEW_NUMBER + 1} views of one finger: split them")
        seen[t.finger_position] = view_number + 1
        body = _minutiae_bytes(t)
        views.append(
            _VIEW.pack(t.finger_position, (view_number << 4) | impression_type, t.quality, len(t.minutiae))
            + body
            + _extended_block(t)
        )
    length = HEADER_LENGTH + sum(len(v) for v in views)
    if length > MAX_RECORD_BYTES:
        raise TemplateFormatError(f"record of {length} bytes exceeds {MAX_RECORD_BYTES}: send fewer views")
    header = _HEADER.pack(FORMAT_ID, VERSION, length, 0, first.width, first.height, ppcm, ppcm, len(views), 0)
    return header + b"".join(views)


def _extended_block(t: FingerprintTemplate) -> bytes:
    """The view's extended data block with its 2-byte length: empty without an orientation field."""
    field = t.orientation
    if field is None:
        return b"\x00\x00"  # no extended data
    rows, cols = field.angle.shape
    most_rows, most_cols = field_limits(t.width, t.height, t.resolution_dpi)
    if rows > most_rows or cols > most_cols or field.block != FIELD_BLOCK:
        raise TemplateFormatError(
            f"orientation field of {rows}x{cols} blocks of {field.block} pixels does not fit a {t.width}x{t.height} "
            f"image at {t.resolution_dpi} dpi ({most_rows}x{most_cols} blocks of {FIELD_BLOCK} at most): "
            "extract the field from this template's own image (the verifier refuses a view without one)"
        )
    data = (
        bytes([ORIENTATION_AREA_VERSION, field.block, rows, cols])
        + np.ascontiguousarray(field.angle, np.uint8).tobytes()
        + np.ascontiguousarray(field.coherence, np.uint8).tobytes()
    )
    area = struct.pack(">HH", ORIENTATION_AREA_TYPE, len(data)) + data  # the 2005 rule: data bytes only
    return struct.pack(">H", len(area)) + area


# ---------------------------------------------------------------- decoding


def _areas_tile(block: bytes, header_counted: bool) -> bool:
    """Do the extended data areas fill ``block`` exactly, with lengths read one way or the other?"""
    pos, end = 0, len(block)
    while pos < end:
        if end - pos < EXTENDED_AREA_HEADER:
            return False
        type_code, length = struct.unpack_from(">HH", block, pos)
        if type_code == 0:
            return False
        if header_counted:
            if length < EXTENDED_AREA_HEADER:
                return False
            pos += length
        else:
            pos += EXTENDED_AREA_HEADER + length
    return pos == end


def _areas(block: bytes, header_counted: bool) -> list[tuple[int, bytes]]:
    """(type code, data) of each area of a block that tiles under the given length rule."""
    out, pos = [], 0
    while pos < len(block):
        type_code, length = struct.unpack_from(">HH", block, pos)
        data_length = length - EXTENDED_AREA_HEADER if header_counted else length
        start = pos + EXTENDED_AREA_HEADER
        out.append((type_code, block[start : start + data_length]))
        pos = start + data_length
    return out


def field_limits(width: int, height: int, dpi: int) -> tuple[int, int]:
    """The most block rows and columns a field of an image this size may have (:data:`MAX_FIELD_BLOCKS` at most).

    A gallery stores each template's field at its own size (it no longer pads
    every field to the largest grid), but a record claiming a grid larger than
    its own image (255 x 255 blocks on a small print) would still cost memory and
    comparison time out of proportion to the print: a field is no larger than its
    image. One block of slack covers rounding at the resolution.
    """
    scale = REFERENCE_DPI / max(dpi, 1)
    rows = math.ceil(height * scale / FIELD_BLOCK) + 1
    cols = math.ceil(width * scale / FIELD_BLOCK) + 1
    return min(rows, MAX_FIELD_BLOCKS), min(cols, MAX_FIELD_BLOCKS)


def _decode_orientation(data: bytes, view: int, width: int, height: int, dpi: int) -> OrientationField:
    """The orientation field of an ORIENTATION_AREA_TYPE area, checked field by field."""
    where = f"view {view}: orientation field area"
    if len(data) < ORIENTATION_AREA_HEADER:
        raise TemplateFormatError(f"{where} of {len(data)} bytes is shorter than its 4-byte header: re-extract")
    version, block, rows, cols = data[:ORIENTATION_AREA_HEADER]
    if version != ORIENTATION_AREA_VERSION:
        raise TemplateFormatError(
            f"{where} has format version {version}, this reader knows {ORIENTATION_AREA_VERSION}: update the reader"
        )
    if block != FIELD_BLOCK:
        raise TemplateFormatError(
            f"{where} has blocks of {block} pixels, this reader compares {FIELD_BLOCK}-pixel blocks: "
            "re-extract the template with this release"
        )
    most_rows, most_cols = field_limits(width, height, dpi)
    if rows > most_rows or cols > most_cols:
        raise TemplateFormatError(
            f"{where} has {rows}x{cols} blocks, more than a {width}x{height} image at {dpi} dpi can have "
            f"({most_rows}x{most_cols} at most): re-extract the template"
        )
    need = ORIENTATION_AREA_HEADER + 2 * rows * cols
    if len(data) != need:
        raise TemplateFormatError(
            f"{where} holds {len(data)} bytes, its {rows}x{cols} blocks need {need}: re-extract the template"
        )
    cells = rows * cols
    raw = np.frombuffer(data, np.uint8, offset=ORIENTATION_AREA_HEADER)
    return OrientationField(int(block), raw[:cells].reshape(rows, cols).copy(), raw[cells:].reshape(rows, cols).copy())


def _decode_minutiae(raw: bytes, width: int, height: int, view: int) -> Minutiae:
    rec = np.frombuffer(raw, _MINUTIA)
    tx = rec["tx"].astype(np.int64)
    ry = rec["ry"].astype(np.int64)
    kind = tx >> 14
    x = tx & MAX_COORDINATE
    y = ry & MAX_COORDINATE
    quality = rec["quality"]
    where = f"view {view}"
    if (kind == 3).any():
        i = int(np.argmax(kind == 3))
        raise TemplateFormatError(f"{where}, minutia {i}: type code 3 is undefined (0 other, 1 ending, 2 bifurcation)")
    if (ry >> 14).any():
        i = int(np.argmax((ry >> 14) != 0))
        raise TemplateFormatError(f"{where}, minutia {i}: the 2 reserved bits before y must be 0")
    bad = (x >= width) | (y >= height)
    if bad.any():
        i = int(np.argmax(bad))
        raise TemplateFormatError(
            f"{where}, minutia {i} at ({int(x[i])}, {int(y[i])}) lies outside the {width}x{height} image: "
            "the record is corrupt or its image size is wrong"
        )
    if (quality > 100).any():
        i = int(np.argmax(quality > 100))
        raise TemplateFormatError(f"{where}, minutia {i}: quality {int(quality[i])} is above 100")
    return Minutiae(
        x=x.astype(np.float32),
        y=y.astype(np.float32),
        angle=iso_to_angle(rec["angle"]),
        kind=kind.astype(np.uint8),
        quality=quality.astype(np.uint8),
    )


def decode(data: bytes) -> list[FingerprintTemplate]:
    """Templates, one per finger view, of an ISO/IEC 19794-2:2005 record.

    ``data`` must be exactly one record. Raises :class:`TemplateFormatError` for
    anything else.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TemplateFormatError(f"decode takes bytes, not {type(data).__name__}")
    size = memoryview(data).nbytes
    if size > MAX_RECORD_BYTES:  # checked before any copy or parse
        raise TemplateFormatError(f"{size} bytes is more than the {MAX_RECORD_BYTES} accepted for a template")
    data = data.tobytes() if isinstance(data, memoryview) else bytes(data)
    if size < HEADER_LENGTH:
        raise TemplateFormatError(
            f"{size} bytes is shorter than the {HEADER_LENGTH}-byte record header: the record is truncated"
        )
    magic, version, length, _equipment, width, height, xres, yres, n_views, reserved = _HEADER.unpack_from(data)
    if magic != FORMAT_ID:
        raise TemplateFormatError(
            f"format identifier {magic!r} is not {FORMAT_ID!r}: this is not an ISO/IEC 19794-2 minutiae record"
        )
    if version != VERSION:
        raise TemplateFormatError(
            f"version {version!r} is not {VERSION!r}: only the 2005 edition is supported, re-encode the template"
        )
    if length != size:
        raise TemplateFormatError(
            f"record length field says {length} bytes but {size} were given: "
            "the record is truncated, padded or not a single record"
        )
    if width == 0 or height == 0:
        raise TemplateFormatError(f"image size {width}x{height}: both dimensions must be at least 1 pixel")
    if xres == 0 or yres == 0:
        raise TemplateFormatError(f"resolution {xres}x{yres} px/cm: both must be non-zero")
    if xres != yres:
        raise TemplateFormatError(
            f"x and y resolution differ ({xres} vs {yres} px/cm): resample the capture to square pixels"
        )
    if reserved != 0:
        raise TemplateFormatError("the reserved header byte must be 0")
    if n_views == 0:
        raise TemplateFormatError("the record holds zero finger views: it carries no template")

    dpi = ppcm_to_dpi(xres)
    pos = HEADER_LENGTH
    templates: list[FingerprintTemplate] = []
    for view in range(n_views):
        if size - pos < VIEW_HEADER_LENGTH:
            raise TemplateFormatError(
                f"record ends inside the header of view {view} (of {n_views}): the view count overruns the record"
            )
        position, number_type, quality, n_min = _VIEW.unpack_from(data, pos)
        pos += VIEW_HEADER_LENGTH
        if position > MAX_FINGER_POSITION:
            raise TemplateFormatError(f"view {view}: finger position {position} is not 0..{MAX_FINGER_POSITION}")
        if number_type & 0x0F > MAX_IMPRESSION_TYPE:
            raise TemplateFormatError(
                f"view {view}: impression type {number_type & 0x0F} is not 0..{MAX_IMPRESSION_TYPE}"
            )
        if quality > 100:
            raise TemplateFormatError(f"view {view}: finger quality {quality} is above 100")
        need = n_min * MINUTIA_LENGTH + EXTENDED_LENGTH_FIELD
        if size - pos < need:
            raise TemplateFormatError(
                f"view {view} declares {n_min} minutiae but the record ends first: the minutia count overruns"
            )
        minutiae = _decode_minutiae(data[pos : pos + n_min * MINUTIA_LENGTH], width, height, view)
        pos += n_min * MINUTIA_LENGTH
        (ext_len,) = struct.unpack_from(">H", data, pos)
        pos += EXTENDED_LENGTH_FIELD
        if size - pos < ext_len:
            raise TemplateFormatError(f"view {view}: extended data length {ext_len} runs past the end of the record")
        block = data[pos : pos + ext_len]
        field = None
        if ext_len:
            data_only = _areas_tile(block, header_counted=False)  # the 2005 rule, which we write, first
            if not (data_only or _areas_tile(block, header_counted=True)):
                raise TemplateFormatError(
                    f"view {view}: the extended data areas' own lengths do not add up to the block's {ext_len} bytes"
                )
            for type_code, area in _areas(block, header_counted=not data_only):
                if type_code == ORIENTATION_AREA_TYPE:
                    field = _decode_orientation(area, view, width, height, dpi)
        pos += ext_len
        templates.append(
            FingerprintTemplate(
                width=width,
                height=height,
                resolution_dpi=dpi,
                minutiae=minutiae,
                quality=quality,
                finger_position=position,
                orientation=field,
            )
        )
    if pos != size:
        raise TemplateFormatError(
            f"{size - pos} bytes follow the last of {n_views} views: the view count or record length is wrong"
        )
    return templates
