"""Sans-I/O codec of an MJPEG stream over HTTP (``multipart/x-mixed-replace``): bytes in, events out.

Like the ZFM codec (:mod:`drivers.zfm.codec`), it owns no socket and no clock:
the camera driver feeds it whatever the connection returned, split anywhere,
and acts on the events. What it adds over handing the URL to FFmpeg is bounds
a hostile or broken camera cannot push past:

* a part's headers are at most ``max_header_bytes``;
* a part's body is at most ``max_part_bytes``: a larger ``Content-Length`` is
  refused before any of it is read, and a body with no length is refused as
  soon as that many bytes went by with no boundary;
* bytes before the first boundary are at most ``max_part_bytes`` too (a
  stream that is not multipart at all is refused, not buffered).

So the codec never holds more than about ``max_part_bytes`` plus one fed
chunk. Its events and its errors do not depend on how the stream is split into
chunks: a bound is met at the same byte, with the same message, whether the
bytes come in one read or one at a time (a limit is checked on what is certain
of the stream so far, never on the size of the buffer at a read's end), and a
delimiter's place at the start of a line is remembered across what the codec
has dropped. An error carries the events parsed before it in the same
``feed`` (:attr:`MjpegError.events`). While ``keep`` is False (nobody would take a part), a part with a
``Content-Length`` is counted, not kept: its body is passed over as it is
fed, never copied nor scanned, and the next boundary's place shows whether
it ended where it said. A part cut short (its ``Content-Length`` says more than came before
the next boundary) comes out as :class:`DroppedPart`, never spliced with the
next part's bytes: FFmpeg's MJPEG demuxer does splice them into one frame.

:func:`jpeg_size` reads a JPEG's dimensions from its SOF header, so the driver
refuses a 16000x16000 frame before ``cv2.imdecode`` allocates 768 MB for it.

Events:

* :class:`Part` — one complete part (headers with lower-case names, body);
* :class:`DroppedPart` — a part whose body did not match its framing (why);
* :class:`SkippedPart` — a part passed over while ``keep`` was False (its size).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

MAX_PART_BYTES = 8 << 20  # a 4096x4096 JPEG at high quality is ~5 MB; a camera's usual frame is 20-500 kB
MAX_HEADER_BYTES = 8192
_PARAM = re.compile(r"""\s*;\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s"]*)""")
_LENGTH_DIGITS = 10  # a Content-Length of up to 9,999,999,999 is read; longer is over any cap
_DIGITS = re.compile(rf"[0-9]{{1,{_LENGTH_DIGITS}}}")
_LONG_DIGITS = re.compile(rf"[0-9]{{{_LENGTH_DIGITS + 1},}}")


class MjpegError(Exception):
    """A stream that is not MJPEG over multipart, or breaks its bounds (the codec's only exception type).

    ``events``: what the ``feed`` that raised it parsed before the error (parts whole before the bad
    bytes came in the same chunk), so a caller counts them as if the stream had come byte by byte.
    """

    events: list[Event]

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.events = []


class NotMultipart(MjpegError):
    """The response is not ``multipart/x-mixed-replace`` with a boundary, or has no boundary in its bytes."""


class PartTooLarge(MjpegError):
    """A part declares or carries more bytes than the codec takes."""

    def __init__(self, size: int, limit: int, declared: bool, *, at_least: bool = False) -> None:
        how = ("declares at least" if at_least else "declares") if declared else "carries at least"
        super().__init__(f"an MJPEG part {how} {size} bytes, more than the {limit} accepted")
        self.size = size  # what it declared, or (carried) limit + 1: how far it read is the split's, not the part's
        self.limit = limit
        self.declared = declared


class ConflictingLength(MjpegError):
    """A part that declares differing ``Content-Length`` values: which one frames it cannot be told."""


class HeadersTooLarge(MjpegError):
    """A part's headers run past the limit with no blank line."""


class NotJpeg(MjpegError):
    """A part's body is not a JPEG whose size can be read (no SOI, or no frame header before the scan)."""


@dataclass(frozen=True)
class Part:
    headers: dict[str, str]
    body: bytes = field(repr=False)


@dataclass(frozen=True)
class DroppedPart:
    reason: str
    size: int  # the bytes dropped


@dataclass(frozen=True)
class SkippedPart:
    size: int  # the bytes passed over: counted, never held


Event = Part | DroppedPart | SkippedPart


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/x-mixed-replace`` Content-Type, or :class:`NotMultipart`."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if not kind.startswith("multipart/"):
        raise NotMultipart(f"the response is {kind or 'of no Content-Type'}, not multipart/x-mixed-replace (MJPEG)")
    found = None
    for match in _PARAM.finditer(content_type, len(content_type.split(";", 1)[0])):  # whole parameters only
        if match.group(1).lower() == "boundary":
            value = match.group(2)
            found = re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith('"') else value
            break
    if not found or len(found) > 70:
        raise NotMultipart(f"the response's Content-Type {content_type[:100]!r} names no boundary")
    boundary = found.encode("latin-1")
    # Some cameras write "boundary=--frame" and then "--frame" between parts: the leading "--" is then theirs.
    return boundary


class MultipartDecoder:
    """Parts of a ``multipart/x-mixed-replace`` body, within byte bounds. Feed bytes; get events."""

    def __init__(
        self, boundary: bytes, max_part_bytes: int = MAX_PART_BYTES, max_header_bytes: int = MAX_HEADER_BYTES
    ) -> None:
        if not boundary:
            raise ValueError("a multipart boundary must not be empty")
        self.max_part_bytes = max_part_bytes
        self.max_header_bytes = max_header_bytes
        # "boundary=--frame" written by the camera, "----frame" or "--frame" on the wire: match what is sent
        self._delimiters = [b"--" + boundary]
        if boundary.startswith(b"--"):
            self._delimiters.append(boundary)
        self._buf = bytearray()
        self._state = "preamble"  # preamble -> headers -> body -> preamble ...
        self._skipped = 0  # bytes dropped while looking for a boundary
        self._headers: dict[str, str] = {}
        self._length: int | None = None
        self._scan = 0  # where the next boundary search in the body starts
        self.keep = True  # False: a part whose head comes meanwhile is passed over, not kept (SkippedPart)
        self._left = 0  # body bytes of a part passed over still to come
        self._unchecked: int | None = None  # a part passed over, until the next boundary shows it ended there
        self._junk = False  # bytes other than CR LF came between that part's end and the next boundary
        self._line_start = True  # the buffer's first byte begins a line (what was dropped before it ended one)

    @property
    def buffered(self) -> int:
        """Bytes the codec holds now (a test's measure of its memory)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        view = memoryview(data)
        if self._state == "skip" and not self._buf:  # a body passed over: its bytes are counted, never copied
            take = min(self._left, len(view))
            self._left -= take
            view = view[take:]
            if not self._left:
                self._state = "preamble"
        self._buf += view
        events: list[Event] = []
        try:
            while True:
                if self._state == "preamble":
                    if not self._seek_boundary(events):
                        return events
                elif self._state == "headers":
                    if not self._read_headers():
                        return events
                elif self._state == "skip":
                    if not self._skip():
                        return events
                elif not self._read_body(events):
                    return events
        except MjpegError as exc:
            exc.events = events  # what came before the error in this chunk: as if fed byte by byte
            raise

    # ---------------------------------------------------------------- states
    def _find_delimiter(self, start: int, end: int | None = None) -> tuple[int, int]:
        """The first delimiter in the buffer from ``start`` that begins a line: (index, length), or (-1, 0).

        RFC 2046 puts a delimiter at the start of a line (after CRLF); the same bytes in the middle of a
        line are a part's data (a JPEG may hold them), not the end of the part. The buffer's first byte
        counts as a line start when what came before it was a whole part of declared length, a line's
        end, or nothing (``_line_start``): not when it follows junk dropped mid-line, which a stream fed
        in one chunk would still hold before it.
        """
        best, size = -1, 0
        stop = len(self._buf) if end is None else end
        for delimiter in self._delimiters:
            at = self._buf.find(delimiter, start, stop)
            while at >= 0 and not (self._buf[at - 1] == 0x0A if at > 0 else self._line_start):  # mid-line
                at = self._buf.find(delimiter, at + 1, stop)
            if at >= 0 and (best < 0 or at < best):
                best, size = at, len(delimiter)
        return best, size

    def _seek_boundary(self, events: list[Event]) -> bool:
        at, size = self._find_delimiter(0)
        if at < 0:
            keep = max(len(d) for d in self._delimiters) - 1  # a delimiter may begin in these: kept
            drop = max(0, len(self._buf) - keep)
            if drop:
                self._note_junk(drop)
                self._line_start = self._buf[drop - 1] == 0x0A
                self._skipped += drop
                del self._buf[:drop]
            if self._skipped > self.max_part_bytes:  # junk for certain: no delimiter can begin in what went
                raise self._no_boundary()
            return False
        if self._skipped + at > self.max_part_bytes:  # the same bound, met with the delimiter in sight
            raise self._no_boundary()
        self._note_junk(at)
        line_end = self._buf.find(b"\n", at + size)
        if line_end < 0:  # the rest of the boundary line has not come yet
            if len(self._buf) - at > self.max_header_bytes:  # its line feed can come no sooner than the next byte
                raise self._long_boundary_line()
            self._skipped += at
            del self._buf[:at]
            self._line_start = True  # a delimiter found at a line's start is now the buffer's first byte
            return False
        if line_end - at > self.max_header_bytes:  # the bound above, for a line that came in one chunk
            raise self._long_boundary_line()
        if self._unchecked is not None:  # a part passed over: it ended where it said, or it was cut short
            length, self._unchecked = self._unchecked, None
            events.append(DroppedPart(f"it did not end where its Content-Length of {length} bytes said", length)
                          if self._junk else SkippedPart(length))
        self._skipped = 0
        del self._buf[: line_end + 1]
        self._line_start = True
        self._state = "headers"
        return True

    def _no_boundary(self) -> NotMultipart:
        return NotMultipart(f"more than {self.max_part_bytes} bytes of the stream carry no part boundary")

    def _long_boundary_line(self) -> HeadersTooLarge:
        return HeadersTooLarge(f"an MJPEG boundary line runs past {self.max_header_bytes} bytes")

    def _note_junk(self, end: int) -> None:
        """After a part passed over, the bytes up to ``end`` (about to be dropped) should be line breaks only."""
        if self._unchecked is not None and not self._junk and end:
            self._junk = bool(bytes(self._buf[:end]).strip(b"\r\n"))

    def _skip(self) -> bool:
        take = min(self._left, len(self._buf))
        del self._buf[:take]
        self._left -= take
        if self._left:
            return False
        self._line_start = True  # as after a part kept whole: its declared end may be followed by the delimiter
        self._state = "preamble"
        return True

    def _read_headers(self) -> bool:
        if self._buf[:2] == b"\r\n" or self._buf[:1] == b"\n":  # a part with no headers
            block, rest = b"", (2 if self._buf[:1] == b"\r" else 1)
        else:
            ends = [(i, n) for i, n in ((self._buf.find(b"\r\n\r\n"), 4), (self._buf.find(b"\n\n"), 2)) if i >= 0]
            if not ends:
                # An end still to come begins at len - 3 at the earliest (its CR LF CR may be here already):
                # the headers are too long once even that is past the bound, as they are when fed whole.
                if len(self._buf) - 3 > self.max_header_bytes:
                    raise HeadersTooLarge(f"an MJPEG part's headers run past {self.max_header_bytes} bytes")
                return False
            at, size = min(ends)
            if at > self.max_header_bytes:
                raise HeadersTooLarge(f"an MJPEG part's headers run past {self.max_header_bytes} bytes")
            block, rest = bytes(self._buf[:at]), at + size
        del self._buf[:rest]
        headers: dict[str, str] = {}
        lengths: list[str] = []
        for line in (raw.rstrip(b"\r").decode("latin-1") for raw in block.split(b"\n")):  # not str.splitlines
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
                if name.strip().lower() == "content-length":
                    lengths += [piece.strip() for piece in value.split(",")]
        length = self._content_length(lengths)
        if not self.keep and length is not None:  # nobody would take it: its body is passed over unread
            self._left, self._unchecked, self._junk = length, length, False
            self._state = "skip"
            return True
        self._headers, self._length, self._scan = headers, length, 0
        self._state = "body"
        return True

    def _content_length(self, values: list[str]) -> int | None:
        """The part's declared length: ASCII digits only (``str.isdigit`` takes '²'); None when there is none.

        A value that is no number (a sign, a space, a letter) is as good as no length: the body then ends at the
        next boundary. Repeated values (two headers, or "10, 10") must agree; differing ones are refused."""
        numbers = {int(v) for v in values if _DIGITS.fullmatch(v)}  # at most 10 digits: int() stays cheap
        if any(_LONG_DIGITS.fullmatch(v) for v in values):  # 11 digits and more: over any cap
            raise PartTooLarge(10**_LENGTH_DIGITS, self.max_part_bytes, declared=True, at_least=True)
        if len(numbers) > 1:
            shown = ", ".join(str(n) for n in sorted(numbers)[:4])
            raise ConflictingLength(f"an MJPEG part declares differing Content-Length values ({shown})")
        if not numbers:
            return None
        (length,) = numbers
        if length > self.max_part_bytes:
            raise PartTooLarge(length, self.max_part_bytes, declared=True)
        return length

    def _read_body(self, events: list[Event]) -> bool:
        longest = max(len(d) for d in self._delimiters)
        if self._length is not None:
            # The declared length: the part is whole once that many bytes are in, unless a boundary came first
            # (the part was cut short and the next one began inside what it declared).
            end = min(len(self._buf), self._length)
            at, _ = self._find_delimiter(max(0, self._scan - longest + 1), end)
            if at >= 0:
                body = bytes(self._buf[:at]).rstrip(b"\r\n")
                events.append(DroppedPart(f"cut short: {len(body)} of the {self._length} bytes declared", len(body)))
                del self._buf[:at]
                self._line_start = True
                self._state = "preamble"
                return True
            if len(self._buf) < self._length:
                self._scan = len(self._buf)
                return False
            events.append(Part(self._headers, self._copy(self._length)))
            del self._buf[: self._length]
            self._line_start = True  # the declared end: a delimiter right after it counts, as documented
            self._state = "preamble"
            return True
        at, _ = self._find_delimiter(max(0, self._scan - longest + 1))
        if at < 0:
            # A delimiter still to come begins at len - longest + 1 at the earliest, after a CR LF: the body is
            # too long for certain once even that end is past the bound (the bound of a body fed whole).
            if len(self._buf) - longest - 1 > self.max_part_bytes:
                raise self._too_long()
            self._scan = len(self._buf)
            return False
        end = at - (2 if self._buf[max(0, at - 2) : at] == b"\r\n" else 1 if self._buf[at - 1 : at] == b"\n" else 0)
        if end > self.max_part_bytes:
            raise self._too_long()
        events.append(Part(self._headers, self._copy(end)) if self.keep else SkippedPart(end))
        del self._buf[:at]
        self._line_start = True
        self._state = "preamble"
        return True

    def _too_long(self) -> PartTooLarge:
        """A body with no length past the bound: "at least limit + 1" (how much more came is the split's)."""
        return PartTooLarge(self.max_part_bytes + 1, self.max_part_bytes, declared=False)

    def _copy(self, end: int) -> bytes:
        """The buffer's first ``end`` bytes, copied once (a bytearray slice would copy them twice)."""
        with memoryview(self._buf) as view:
            return bytes(view[:end])


# ---------------------------------------------------------------- JPEG frame header
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's SOF header, read without decoding; :class:`NotJpeg` if there is none."""
    if data[:2] != b"\xff\xd8":
        raise NotJpeg("the part is not a JPEG (it does not start with the JPEG SOI marker)")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise NotJpeg(f"the JPEG has no marker at byte {i} before its frame header")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            break  # end of image, or the scan: no frame header came before it
        (length,) = struct.unpack_from(">H", data, i + 2)
        if length < 2:
            raise NotJpeg(f"the JPEG has a segment of length {length} at byte {i}")
        if marker in _SOF:
            if i + 9 > n:
                break
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height
        i += 2 + length
    raise NotJpeg("the JPEG has no frame header (SOF) before its scan")
