"""An image file's declared width and height, read from its header without decoding it (sans-I/O: bytes in).

Why. ``cv2.imdecode`` allocates what a header declares before it reads a pixel:
a 30 kB PNG of zeros declaring 30000 x 30000 pixels becomes a 2.7 GB colour
array (OpenCV's own cap is a gigapixel, 3 GB in colour), and a JPEG's header can
declare 65535 x 65535. A test image file is a few megabytes at most, so the file
size bound in :mod:`simulators.images` does not bound the decoded size; this
header check does, before OpenCV runs.

What. :func:`declared_size` recognises the formats a simulator is given (JPEG,
PNG, BMP, the PNM family with PAM and PFM, TIFF and BigTIFF, WebP, GIF, Sun
raster) by their magic bytes and reads the width and height their headers
declare. A file of any other format, or whose header is cut or inconsistent,
raises :class:`ImageHeaderError` with the reason; OpenCV is never asked to guess.
The JPEG frame header is read by the camera driver's own reader
(:func:`drivers.camera.mjpeg.jpeg_size`), which refuses a large frame the same way.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from drivers.camera.mjpeg import NotJpeg, jpeg_size

FORMATS = "JPEG, PNG, BMP, PGM/PPM/PNM, TIFF, WebP or GIF"  # what a message names as readable


class ImageHeaderError(ValueError):
    """The bytes are no image of a known format, or their header is cut or inconsistent (the reason)."""


@dataclass(frozen=True)
class DeclaredSize:
    """What an image's header says: its format's name and its size in pixels."""

    format: str
    width: int
    height: int


def declared_size(data: bytes) -> DeclaredSize:
    """The format and the width and height ``data``'s header declares; ImageHeaderError if it is no known image."""
    for magic, reader in _READERS:
        if data.startswith(magic):
            try:
                return reader(data)
            except (struct.error, IndexError):
                raise ImageHeaderError("its header is cut short") from None
    raise ImageHeaderError(f"it is not a {FORMATS} image")


def _jpeg(data: bytes) -> DeclaredSize:
    try:
        width, height = jpeg_size(data)
    except NotJpeg as exc:
        raise ImageHeaderError(str(exc).replace("the part", "the file")) from None
    return DeclaredSize("JPEG", width, height)


def _png(data: bytes) -> DeclaredSize:
    if data[12:16] != b"IHDR":  # the PNG specification puts IHDR first
        raise ImageHeaderError("the PNG does not start with its IHDR header")
    width, height = struct.unpack_from(">II", data, 16)
    return DeclaredSize("PNG", width, height)


def _bmp(data: bytes) -> DeclaredSize:
    (header,) = struct.unpack_from("<I", data, 14)
    if header == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sides
        width, height = struct.unpack_from("<HH", data, 18)
    else:  # BITMAPINFOHEADER and later: signed 32-bit, a negative height is a top-down image
        width, height = struct.unpack_from("<ii", data, 18)
    return DeclaredSize("BMP", abs(width), abs(height))


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n\r]*)*([^\s#]+)")  # whitespace and comments, then a token


def _pnm(data: bytes) -> DeclaredSize:
    head = data[:4096]  # a header is a few tokens; comments longer than this are no test image's
    tokens = []
    at = 2
    while len(tokens) < 2:
        found = _PNM_TOKEN.match(head, at)
        if found is None:
            raise ImageHeaderError("the PNM header is cut short")
        tokens.append(found.group(1))
        at = found.end()
    if not all(token.isdigit() for token in tokens):
        raise ImageHeaderError("the PNM header's width and height are not numbers")
    return DeclaredSize("PNM", int(tokens[0]), int(tokens[1]))


_PAM_FIELD = re.compile(rb"^(WIDTH|HEIGHT)[ \t]+([0-9]+)[ \t]*$", re.MULTILINE)


def _pam(data: bytes) -> DeclaredSize:
    head = data[: data.find(b"ENDHDR")] if b"ENDHDR" in data[:4096] else b""
    if not head:
        raise ImageHeaderError("the PAM header has no ENDHDR line in its first 4096 bytes")
    fields = {name: int(value) for name, value in _PAM_FIELD.findall(head)}
    if set(fields) != {b"WIDTH", b"HEIGHT"}:
        raise ImageHeaderError("the PAM header does not give its WIDTH and HEIGHT")
    return DeclaredSize("PAM", fields[b"WIDTH"], fields[b"HEIGHT"])


_TIFF_WIDTH, _TIFF_LENGTH = 256, 257
_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH = 322, 323  # a tiled TIFF: OpenCV allocates one tile's buffer as declared
_TIFF_SIZES = (_TIFF_WIDTH, _TIFF_LENGTH, _TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH)
_TIFF_UNSIGNED = {3: "H", 4: "I"}  # SHORT and LONG: the types a size may have (BigTIFF adds LONG8)
_BIGTIFF_UNSIGNED = {**_TIFF_UNSIGNED, 16: "Q"}


def _tiff(data: bytes) -> DeclaredSize:
    """The first directory's ImageWidth and ImageLength: the page OpenCV decodes (classic TIFF or BigTIFF)."""
    order = "<" if data[:2] == b"II" else ">"
    (version,) = struct.unpack_from(order + "H", data, 2)
    big = version == 43
    if big:
        directory, count_format, entry_size, value_size = struct.unpack_from(order + "Q", data, 8)[0], "Q", 20, 8
    else:
        directory, count_format, entry_size, value_size = struct.unpack_from(order + "I", data, 4)[0], "H", 12, 4
    if directory >= len(data):  # a 64-bit offset is past what struct can even index
        raise ImageHeaderError("the TIFF's first directory lies past the end of the file")
    (entries,) = struct.unpack_from(order + count_format, data, directory)
    first = directory + struct.calcsize(count_format)
    if first + entries * entry_size > len(data):
        raise ImageHeaderError("the TIFF's first directory runs past the end of the file")
    types = _BIGTIFF_UNSIGNED if big else _TIFF_UNSIGNED
    sizes: dict[int, int] = {}
    for at in range(first, first + entries * entry_size, entry_size):  # a directory has a few dozen entries
        tag, kind = struct.unpack_from(order + "HH", data, at)
        # libtiff reads a tag's first entry and ignores its repeats, and takes sizes of more types than these
        # (BYTE, the signed ones): the first entry is the one read, and one of another type is refused, never
        # skipped for a later entry that declares less than libtiff will allocate.
        if tag in _TIFF_SIZES and tag not in sizes:
            if kind not in types:
                raise ImageHeaderError("the TIFF gives its ImageWidth, ImageLength or tile size in a type but "
                                       "SHORT or LONG")
            value_at = at + entry_size - value_size  # a single value sits in the entry itself, first
            (sizes[tag],) = struct.unpack_from(order + types[kind], data, value_at)
    if not {_TIFF_WIDTH, _TIFF_LENGTH} <= set(sizes):
        raise ImageHeaderError("the TIFF's first directory does not give its ImageWidth and ImageLength")
    width, height = sizes[_TIFF_WIDTH], sizes[_TIFF_LENGTH]
    # A tile is at most the image rounded up to TIFF's multiple of 16: a 16 x 16 image declaring 16368 x 16368
    # tiles made OpenCV allocate (and libtiff fill) a 268 MB tile buffer from a 4 kB file. The size said is
    # what is allocated, so the caller's pixel bound holds for the tile too.
    tile_width, tile_length = sizes.get(_TIFF_TILE_WIDTH, 0), sizes.get(_TIFF_TILE_LENGTH, 0)
    if tile_width > -(-width // 16) * 16 or tile_length > -(-height // 16) * 16:
        raise ImageHeaderError(
            f"the TIFF's tiles ({tile_width}x{tile_length}) are larger than its image ({width}x{height})"
        )
    return DeclaredSize("TIFF", max(width, tile_width), max(height, tile_length))


def _webp(data: bytes) -> DeclaredSize:
    if data[8:12] != b"WEBP":
        raise ImageHeaderError("the RIFF file is not a WebP image")
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: a key frame's start code, then 14-bit sides
        if data[23:26] != b"\x9d\x01\x2a":
            raise ImageHeaderError("the WebP's VP8 frame has no key-frame start code")
        width, height = struct.unpack_from("<HH", data, 26)
        return DeclaredSize("WebP", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":  # lossless: a signature byte, then 14 bits each of width - 1 and height - 1
        if data[20] != 0x2F:
            raise ImageHeaderError("the WebP's VP8L chunk has no signature")
        (bits,) = struct.unpack_from("<I", data, 21)
        return DeclaredSize("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":  # extended: 24-bit canvas width - 1 and height - 1
        if len(data) < 30:
            raise ImageHeaderError("its header is cut short")
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return DeclaredSize("WebP", width, height)
    raise ImageHeaderError("the WebP's first chunk is none of VP8, VP8L or VP8X")


def _gif(data: bytes) -> DeclaredSize:
    width, height = struct.unpack_from("<HH", data, 6)  # the logical screen every frame is drawn on
    return DeclaredSize("GIF", width, height)


def _sun_raster(data: bytes) -> DeclaredSize:
    width, height = struct.unpack_from(">II", data, 4)
    return DeclaredSize("Sun raster", width, height)


_READERS = (
    (b"\xff\xd8", _jpeg),
    (b"\x89PNG\r\n\x1a\n", _png),
    (b"BM", _bmp),
    *((b"P" + kind, _pnm) for kind in (b"1", b"2", b"3", b"4", b"5", b"6", b"F", b"f")),
    (b"P7", _pam),
    (b"II*\x00", _tiff),
    (b"MM\x00*", _tiff),
    (b"II+\x00", _tiff),
    (b"MM\x00+", _tiff),
    (b"RIFF", _webp),
    (b"GIF87a", _gif),
    (b"GIF89a", _gif),
    (b"\x59\xa6\x6a\x95", _sun_raster),
)
