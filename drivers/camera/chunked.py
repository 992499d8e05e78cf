"""Sans-I/O decoder of the chunked transfer coding (RFC 9112 section 7.1): bytes in, payload out, bounded.

The driver asks in HTTP/1.0, to which a server must not send chunks; some
cameras chunk anyway. ESP-IDF's HTTP server, which the ESP32-CAM firmware
streams through (``httpd_resp_send_chunk``), answers every streamed response
``HTTP/1.1 ... Transfer-Encoding: chunked`` whatever the request's version.
Refusing such a camera would leave its installer no fix (it has no other
stream), so the chunks are undone here, below the multipart codec.

The decoder holds no chunk data: what a chunk carries is handed on as views
of the bytes fed, and only a chunk-size line (at most ``max_line`` bytes) or
a trailer line is kept between two feeds. A size that is no hex number, data
not followed by its CRLF, or a line past the bound raises :class:`ChunkError`.
"""

from __future__ import annotations

import re

from drivers.camera.mjpeg import MjpegError

MAX_LINE = 1024  # a chunk-size line with its extensions, or a trailer line
MAX_TRAILER = 8192  # trailer bytes after the last chunk
_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;.*)?")


class ChunkError(MjpegError):
    """The chunked framing of a response is broken: where its data ends cannot be told.

    ``payload``: the payload pieces the failing ``feed`` undid before the break (views of its data), so a
    caller hands them on as if the stream had come byte by byte and the break in a read of its own.
    """

    payload: list[memoryview]

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.payload = []


class ChunkedDecoder:
    """Chunked framing off, payload on: ``feed(data)`` gives the payload's pieces (views of ``data``: use them
    before the next feed); ``ended`` once the last chunk and its trailer came (bytes after it are ignored)."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._state = "size"  # size -> data -> data_end -> size ...; size 0 -> trailer -> ended
        self._line = bytearray()  # a line begun in an earlier feed
        self._left = 0  # data bytes of the current chunk still to come
        self._trailer = 0
        self.ended = False

    @property
    def buffered(self) -> int:
        """Bytes held between two feeds (a test's measure of its memory)."""
        return len(self._line)

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        out: list[memoryview] = []
        try:
            self._undo(memoryview(data).cast("B"), out)
        except ChunkError as exc:
            exc.payload = out
            raise
        return out

    def _undo(self, view: memoryview, out: list[memoryview]) -> None:
        """Append to ``out`` the payload pieces of ``view``, keeping a line begun at its end for the next feed."""
        i, n = 0, len(view)
        while i < n and not self.ended:
            if self._state == "data":
                take = min(self._left, n - i)
                out.append(view[i : i + take])
                i += take
                self._left -= take
                if not self._left:
                    self._state = "data_end"
                continue
            room = self.max_line + 2 - len(self._line)  # the line, its CR LF
            window = bytes(view[i : i + room])
            end = window.find(b"\n")
            if end < 0:
                if len(window) >= room:
                    raise ChunkError(f"a line of the chunked stream runs past {self.max_line} bytes")
                self._line += window
                i += len(window)
                continue
            line = bytes(self._line + window[:end]).rstrip(b"\r")
            self._line.clear()
            i += end + 1
            self._line_done(line)

    def _line_done(self, line: bytes) -> None:
        if self._state == "data_end":
            if line:
                raise ChunkError("a chunk's data did not end where its size said (no CRLF after it)")
            self._state = "size"
        elif self._state == "size":
            match = _SIZE.fullmatch(line)
            if match is None:
                raise ChunkError(f"a chunk size is no hex number ({line[:40]!r})")
            self._left = int(match.group(1), 16)
            self._state = "data" if self._left else "trailer"
        else:  # trailer fields after the last chunk, until a blank line
            self._trailer += len(line) + 2
            if self._trailer > MAX_TRAILER:
                raise ChunkError(f"the chunked stream's trailer runs past {MAX_TRAILER} bytes")
            if not line:
                self.ended = True


__all__ = ["ChunkError", "ChunkedDecoder"]
