"""Fuzz the sans-I/O MJPEG codec (drivers.camera.mjpeg): a Content-Type, then a body in arbitrary splits.

Input: 4 bytes of split lengths, the Content-Type up to the first LF, then the
stream. Typed error: MjpegError (NotMultipart, PartTooLarge, ConflictingLength,
HeadersTooLarge, NotJpeg). Also checked: the events, and whether the stream is
refused, do not depend on the split. Small bounds keep each input fast.
"""

from __future__ import annotations

import contextlib
import sys

from drivers.camera.mjpeg import DroppedPart, MjpegError, MultipartDecoder, Part, SkippedPart, boundary_of, jpeg_size
from fuzz.common import SplitDependence, splits

MAX_PART = 4096
MAX_HEADERS = 512


def _run(boundary: bytes, pieces: list[bytes]) -> tuple[list, type | None]:
    decoder = MultipartDecoder(boundary, max_part_bytes=MAX_PART, max_header_bytes=MAX_HEADERS)
    events: list = []
    try:
        for piece in pieces:
            events += decoder.feed(piece)
    except MjpegError as exc:
        return events, type(exc)
    return events, None


def TestOneInput(data: bytes) -> None:
    sizes, rest = data[:4], data[4:]
    head, _, body = rest.partition(b"\n")
    try:
        boundary = boundary_of(head.decode("latin-1"))
    except MjpegError:
        return
    whole, whole_error = _run(boundary, [body])
    split, split_error = _run(boundary, list(splits(body, sizes)))
    if whole_error != split_error or (whole_error is None and whole != split):
        raise SplitDependence(
            f"the MJPEG decoder gave {len(whole)} events ({whole_error}) fed whole, "
            f"{len(split)} ({split_error}) fed in pieces"
        )
    for event in whole + split:
        if isinstance(event, Part):
            with contextlib.suppress(MjpegError):
                jpeg_size(event.body)
        elif not isinstance(event, DroppedPart | SkippedPart):
            raise AssertionError(f"the MJPEG decoder gave an event of type {type(event).__name__}")


if __name__ == "__main__":
    from fuzz.common import main

    main("mjpeg", TestOneInput, sys.argv)
