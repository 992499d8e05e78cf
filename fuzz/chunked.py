"""Fuzz the chunked-transfer decoder of the camera driver (drivers.camera.chunked) in arbitrary splits.

Input: 4 bytes of split lengths, a mode byte, then the stream. The mode byte's
high 7 bits set the decoder's ``max_line`` (0: the driver's 1024; else 4 bytes
per step, so a short input reaches the line bound). Its low bit says how the
rest is read:

* 0, raw: the bytes are the chunked stream as a camera sends it.
* 1, built: the bytes describe chunks and the harness writes their framing, so
  a mutation of one chunk's data does not break every size line after it (in a
  raw stream almost every mutation ends at the first size line or data CRLF,
  and the extension, trailer and size-form branches are rarely reached). Each
  chunk is a flags byte, a length byte L, then L data bytes. Flags: bits 0-1
  the size written (0, 1: L; 2: L + 1; 3: L - 1), bits 2-3 its form (lower-case
  hex; upper-case; zero-padded to 16 digits, or 17 when bit 6 is set too; a
  space and a tab after it), bit 4 a chunk extension (bits 5-6 pick which),
  bit 7 bare LF line ends. A chunk with L = 0 is the last one: the bytes after
  it are its trailer section as written, then CRLF unless bit 6 is set; with no
  extension its bits 5-6 repeat that section 1, 8, 64 or 512 times (the trailer
  bound, 8 KiB, is then within reach of a short input).

Typed error: ChunkError (an MjpegError). Also checked: the payload, the end and
the refusal do not depend on the split; and a built stream whose every size is
written right is never refused for its framing, and gives exactly its chunks'
data.
"""

from __future__ import annotations

import sys

from drivers.camera.chunked import MAX_LINE, ChunkedDecoder, ChunkError
from fuzz.common import SplitDependence, splits

EXTENSIONS = (b";a=b", b';name="q;uo\\"te"', b";", b" ; x=1;y")


def _run(pieces: list[bytes], max_line: int) -> tuple[bytes, bool, bool]:
    decoder = ChunkedDecoder(max_line)
    payload = bytearray()
    try:
        for piece in pieces:
            for view in decoder.feed(piece):
                payload += view
    except ChunkError:
        return bytes(payload), decoder.ended, True
    return bytes(payload), decoder.ended, False


def build(spec: bytes) -> tuple[bytes, bytes, bool]:
    """The chunked stream ``spec`` describes, the payload its chunks carry, whether every size line is right."""
    out, payload, right = bytearray(), bytearray(), True
    at = 0
    while at + 2 <= len(spec):
        flags, length = spec[at], spec[at + 1]
        data = spec[at + 2 : at + 2 + length]
        at += 2 + length
        eol = b"\n" if flags & 0x80 else b"\r\n"
        size = len(data) if length else 0
        adjust = flags & 3
        if adjust == 2:
            size, right = size + 1, False
        elif adjust == 3 and size:
            size, right = size - 1, False
        form = flags >> 2 & 3
        if form == 0:
            line = b"%x" % size
        elif form == 1:
            line = b"%X" % size
        elif form == 2:
            line = b"%0*x" % (17 if flags & 0x40 else 16, size)
            right = right and not flags & 0x40  # 17 digits: no size the decoder takes
        else:
            line = b"%x \t" % size
        if flags & 0x10:
            line += EXTENSIONS[flags >> 5 & 3]
        out += line + eol
        if not length:  # the last chunk: the rest is its trailer section
            repeat = 1 if flags & 0x10 else 1 << 3 * (flags >> 5 & 3)
            out += spec[at:] * repeat
            if not flags & 0x40:
                out += b"\r\n"
            return bytes(out), bytes(payload), right
        out += data + eol
        payload += data
    return bytes(out), bytes(payload), right


def TestOneInput(data: bytes) -> None:
    sizes, mode, rest = data[:4], data[4:5], data[5:]
    selector = mode[0] if mode else 0
    max_line = 4 * (selector >> 1) or MAX_LINE
    expected: bytes | None = None
    if selector & 1:
        stream, payload, right = build(rest)
        if right and len(stream) < max_line:  # no line of it can pass the bound
            expected = payload
    else:
        stream = rest
    whole = _run([stream], max_line)
    split = _run(list(splits(stream, sizes)), max_line)
    if whole[1:] != split[1:] or (not whole[2] and whole[0] != split[0]):
        raise SplitDependence("the chunked decoder gave another payload, end or refusal for the same bytes in pieces")
    if expected is not None and whole[2]:
        raise AssertionError("the chunked decoder refused a well-framed stream")
    if expected is not None and whole[0] != expected:
        raise AssertionError("the chunked decoder gave another payload than the chunks of a well-framed stream")


if __name__ == "__main__":
    from fuzz.common import main

    main("chunked", TestOneInput, sys.argv)
