"""Fuzz the chunked-transfer decoder of the camera driver (drivers.camera.chunked) in arbitrary splits.

Input: 4 bytes of split lengths, then the stream. Typed error: ChunkError (an
MjpegError). Also checked: the payload, the end and the refusal do not depend on
the split.
"""

from __future__ import annotations

import sys

from drivers.camera.chunked import ChunkedDecoder, ChunkError
from fuzz.common import SplitDependence, splits


def _run(pieces: list[bytes]) -> tuple[bytes, bool, bool]:
    decoder = ChunkedDecoder()
    payload = bytearray()
    try:
        for piece in pieces:
            for view in decoder.feed(piece):
                payload += view
    except ChunkError:
        return bytes(payload), decoder.ended, True
    return bytes(payload), decoder.ended, False


def TestOneInput(data: bytes) -> None:
    sizes, stream = data[:4], data[4:]
    whole = _run([stream])
    split = _run(list(splits(stream, sizes)))
    if whole[1:] != split[1:] or (not whole[2] and whole[0] != split[0]):
        raise SplitDependence("the chunked decoder gave another payload, end or refusal for the same bytes in pieces")


if __name__ == "__main__":
    from fuzz.common import main

    main("chunked", TestOneInput, sys.argv)
