"""The size an image file's header declares, read before OpenCV decodes it (simulators.image_headers).

A small file can declare a huge image: cv2.imdecode allocates what the header says
before it reads a pixel. Each format's reader is checked against OpenCV's own
encoder, against hand-made headers OpenCV does not write (big-endian TIFF,
BigTIFF, OS/2 and top-down BMP, PNM comments), and on every cut of its header.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators.errors import UnreadableImage
from simulators.image_headers import ImageHeaderError, declared_size
from simulators.images import MAX_IMAGE_PIXELS, read_image

ENCODED = [".png", ".jpg", ".bmp", ".tif", ".webp", ".ppm", ".pam", ".pfm", ".gif", ".ras"]


def encoded(ext: str, width: int = 37, height: int = 23) -> bytes:
    """OpenCV's own encoding of a colour image of this size."""
    image = np.random.default_rng(5).integers(0, 255, (height, width, 3), np.uint8)
    if ext == ".pfm":
        image = image.astype(np.float32) / 255
    ok, data = cv2.imencode(ext, image)
    assert ok, ext
    return data.tobytes()


def with_png_size(data: bytes, width: int, height: int) -> bytes:
    """A real PNG whose IHDR is rewritten to another size, its CRC made right (as a crafted bomb would be)."""
    ihdr = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


def tiff(order: str, big: bool, width: int, height: int) -> bytes:
    """A TIFF header with only its first directory's ImageWidth (SHORT) and ImageLength (LONG; BigTIFF LONG8)."""
    e = "<" if order == "II" else ">"
    if big:
        head = order.encode() + struct.pack(e + "HHHQ", 43, 8, 0, 16)
        entries = struct.pack(e + "HHQHxxxxxx", 256, 3, 1, width) + struct.pack(e + "HHQQ", 257, 16, 1, height)  # LONG8
        return head + struct.pack(e + "Q", 2) + entries + struct.pack(e + "Q", 0)
    head = order.encode() + struct.pack(e + "HI", 42, 8)
    entries = struct.pack(e + "HHIHxx", 256, 3, 1, width) + struct.pack(e + "HHII", 257, 4, 1, height)
    return head + struct.pack(e + "H", 2) + entries + struct.pack(e + "I", 0)


def bmp(header_size: int, width: int, height: int) -> bytes:
    if header_size == 12:
        return b"BM" + bytes(12) + struct.pack("<IHHHH", 12, width, height, 1, 24)
    return b"BM" + bytes(12) + struct.pack("<Iii", 40, width, height) + bytes(28)


@pytest.mark.parametrize("ext", ENCODED)
def test_each_format_opencv_writes_declares_the_size_it_decodes_to(ext: str) -> None:
    data = encoded(ext)
    declared = declared_size(data)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert (declared.width, declared.height) == (decoded.shape[1], decoded.shape[0]) == (37, 23), declared


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (tiff("MM", False, 300, 70000), (300, 70000)),
        (tiff("II", True, 12, 5_000_000_000), (12, 5_000_000_000)),
        (tiff("MM", True, 9, 8), (9, 8)),
        (bmp(12, 640, 480), (640, 480)),
        (bmp(40, 640, -480), (640, 480)),  # a top-down bitmap
        (b"P5\n# a comment 99 99\n  12\t# another\n 7\n255\n" + bytes(84), (12, 7)),
        (b"P7\nWIDTH 5\nHEIGHT 3\nDEPTH 1\nMAXVAL 255\nTUPLTYPE GRAYSCALE\nENDHDR\n" + bytes(15), (5, 3)),
        (b"GIF89a" + struct.pack("<HH", 40000, 2) + bytes(8), (40000, 2)),
    ],
    ids=["tiff-big-endian", "bigtiff", "bigtiff-big-endian", "bmp-os2", "bmp-top-down", "pgm-comments", "pam", "gif"],
)
def test_headers_opencv_does_not_write_are_read_too(data: bytes, size: tuple[int, int]) -> None:
    declared = declared_size(data)
    assert (declared.width, declared.height) == size


@pytest.mark.parametrize("ext", ENCODED)
def test_every_cut_of_a_header_is_a_size_or_a_header_error_never_another_exception(ext: str) -> None:
    data = encoded(ext)
    for end in range(len(data[:200])):
        try:
            declared_size(data[:end])
        except ImageHeaderError as exc:
            assert str(exc)


@given(
    st.sampled_from([b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"BM", b"P5", b"P7", b"II*\x00", b"MM\x00+", b"RIFF"]),
    st.binary(max_size=120),
)
def test_any_bytes_after_a_magic_are_a_size_or_a_header_error(magic: bytes, rest: bytes) -> None:
    try:
        declared = declared_size(magic + rest)
    except ImageHeaderError:
        return
    assert declared.width >= 0 and declared.height >= 0


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n", "not a JPEG, PNG"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIDAT", "IHDR"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", "not a WebP"),
        (tiff("II", False, 10, 10)[:10], "runs past the end"),
        (b"P6\n# only a comment\n", "cut short"),
        (b"P5 twelve 7\n255\n", "not numbers"),
    ],
    ids=["radiance", "png-without-ihdr", "wave", "tiff-cut", "pnm-cut", "pnm-words"],
)
def test_an_unknown_or_inconsistent_header_says_why(data: bytes, reason: str) -> None:
    with pytest.raises(ImageHeaderError, match=reason):
        declared_size(data)


@pytest.mark.parametrize("case", ["png-30000", "jpeg-65535", "tiff-4g-rows", "bmp-100000", "zero-width"])
def test_a_small_file_declaring_a_huge_image_is_refused_before_opencv_decodes_it(tmp_path: Path, case: str) -> None:
    """Without the header check OpenCV would allocate a 2.7 to 12.9 GB array, or fail on it as an anonymous None."""
    png = encoded(".png", 64, 64)
    data = {
        "png-30000": with_png_size(png, 30000, 30000),
        "jpeg-65535": encoded(".jpg").replace(struct.pack(">HH", 23, 37), struct.pack(">HH", 65535, 65535), 1),
        "tiff-4g-rows": tiff("II", False, 16, 4_000_000_000),
        "bmp-100000": bmp(40, 100000, 100000),
        "zero-width": with_png_size(png, 0, 64),
    }[case]
    assert declared_size(data).width in (30000, 65535, 16, 100000, 0)
    path = tmp_path / "scene.img"
    path.write_bytes(data)
    with pytest.raises(UnreadableImage) as refused:
        read_image(path, color=True)
    message = str(refused.value)
    assert "scene.img" in message
    if case == "zero-width":
        assert "header says 0x64" in message
    else:
        assert f"more than the {MAX_IMAGE_PIXELS:,} pixels" in message and "scale it down" in message


def test_an_image_at_the_bound_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    path.write_bytes(encoded(".png", 8192, 3))
    assert read_image(path).shape == (3, 8192)


def test_a_file_of_a_format_the_simulators_do_not_read_names_those_they_do(tmp_path: Path) -> None:
    path = tmp_path / "scene.hdr"
    path.write_bytes(encoded(".hdr"))
    with pytest.raises(UnreadableImage, match="not a JPEG, PNG, BMP, PGM/PPM/PNM, TIFF, WebP or GIF image") as refused:
        read_image(path)
    assert "JPEG, PNG, BMP" in refused.value.fix


def grey_tiff(entries: list[tuple[int, int, int | None]], width: int, height: int) -> bytes:
    """An uncompressed 8-bit grey TIFF libtiff decodes, its directory given as (tag, type, value) entries in order
    (value None: the strip's offset), followed by ``width`` x ``height`` bytes of pixels."""
    first = 8 + 2 + 12 * len(entries) + 4  # where the pixels start, after the one directory
    directory = b"".join(
        struct.pack("<HHIHxx", tag, kind, 1, value) if kind == 3 else struct.pack("<HHIi", tag, kind, 1, value)
        for tag, kind, value in ((t, k, first if v is None else v) for t, k, v in entries)
    )
    return b"II*\x00" + struct.pack("<IH", 8, len(entries)) + directory + struct.pack("<I", 0) + bytes(width * height)


def test_a_tiff_size_given_twice_is_read_as_libtiff_reads_it_the_first(tmp_path: Path) -> None:
    """libtiff takes a tag's first entry and ignores its repeats; the reader took the last, so a TIFF declaring
    1 x 200 in a second ImageWidth decoded to the 300 x 200 of its first (a gigapixel the same way)."""
    width, height = 300, 200
    rest = [(258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, None), (277, 3, 1), (278, 4, height)]
    rest.append((279, 4, width * height))
    twice = grey_tiff([(256, 4, width), (256, 3, 1), (257, 4, height), *rest], width, height)
    decoded = cv2.imdecode(np.frombuffer(twice, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert decoded is not None and decoded.shape == (height, width)  # what OpenCV (libtiff) makes of it
    declared = declared_size(twice)
    assert (declared.width, declared.height) == (width, height)
    # A size of a type libtiff takes but this reader does not (SLONG) is refused, not skipped for a later entry.
    signed = grey_tiff([(256, 9, width), (256, 3, 1), (257, 4, height), *rest], width, height)
    with pytest.raises(ImageHeaderError, match="ImageWidth, ImageLength or tile size in a type"):
        declared_size(signed)


def test_a_tiled_tiff_whose_tiles_outgrow_its_image_is_refused(tmp_path: Path) -> None:
    """OpenCV allocates one tile's buffer as the header declares it: a 4 kB TIFF of 16 x 16 pixels declaring
    16368 x 16368 tiles took a gigabyte of memory, past the pixel bound that was checked on 16 x 16 alone."""
    def tiled(width: int, height: int, tile: int) -> bytes:
        entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (277, 3, 1)]
        entries += [(322, 4, tile), (323, 4, tile), (324, 4, None), (325, 4, tile * tile)]
        return grey_tiff(entries, tile, tile)

    with pytest.raises(ImageHeaderError, match=r"tiles \(16368x16368\) are larger than its image \(16x16\)"):
        declared_size(tiled(16, 16, 16368)[:4096])
    path = tmp_path / "tiles.tif"
    path.write_bytes(tiled(16, 16, 16368)[:4096])
    with pytest.raises(UnreadableImage, match="larger than its image"):
        read_image(path)
    # A tile rounded up to the multiple of 16 TIFF asks for is no bomb, and OpenCV reads such a file.
    ordinary = tiled(20, 20, 32)
    declared = declared_size(ordinary)
    assert (declared.width, declared.height) == (32, 32)
    decoded = cv2.imdecode(np.frombuffer(ordinary, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert decoded is not None and decoded.shape == (20, 20)
