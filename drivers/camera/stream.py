"""An http(s) MJPEG camera read by the driver itself: a socket, the multipart codec, bounded bytes.

FFmpeg (what ``cv2.VideoCapture`` uses for a URL) buffers whatever a camera
declares: a part of ``Content-Length: 2147483000`` grew the agent to 1.8 GB,
a 16000x16000 JPEG to 2.6 GB. Here the bytes go through
:class:`~drivers.camera.mjpeg.MultipartDecoder` (a part of at most
``max_part_bytes``) and each JPEG's size is read from its SOF header before
``cv2.imdecode`` runs; OpenCV still decodes every frame the agent takes.
Credentials in the URL are sent as HTTP Basic authentication.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import threading
import urllib.parse
from dataclasses import dataclass

import cv2
import numpy as np

from drivers.camera.errors import (
    CameraFault,
    CameraFrameTooLarge,
    CameraNotMjpeg,
    CameraStreamBroken,
    CameraUnavailable,
)
from drivers.camera.mjpeg import (
    MAX_PART_BYTES,
    ConflictingLength,
    HeadersTooLarge,
    MultipartDecoder,
    NotJpeg,
    NotMultipart,
    Part,
    PartTooLarge,
    boundary_of,
    jpeg_size,
)

CHUNK = 64 * 1024
CUT_PARTS_MAX = 10  # parts in a row cut short of their Content-Length: the stream is broken


def is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class JpegPart:
    body: bytes
    width: int
    height: int


class MjpegReader:
    """One connection to an MJPEG camera: ``next_part()`` gives its JPEG parts, sizes read, undecoded."""

    backend = "MJPEG"

    def __init__(
        self, url: str, shown: str, *, open_timeout_s: float, read_timeout_s: float,
        max_part_bytes: int = MAX_PART_BYTES,
    ) -> None:
        self.url, self.shown = url, shown
        self.open_timeout_s, self.read_timeout_s = open_timeout_s, read_timeout_s
        self.max_part_bytes = max_part_bytes
        self._conn: http.client.HTTPConnection | None = None
        self._response: http.client.HTTPResponse | None = None
        self._decoder: MultipartDecoder | None = None
        self._parts: list[Part] = []
        self.dropped = 0  # parts cut short, dropped rather than spliced
        self._cut_in_a_row = 0

    @property
    def buffered(self) -> int:
        return self._decoder.buffered if self._decoder is not None else 0

    def open(self) -> None:
        """Connect and read the response head: CameraUnavailable if unreachable, CameraNotMjpeg if not MJPEG."""
        parts = urllib.parse.urlsplit(self.url)
        try:
            port = parts.port
        except ValueError:  # "host:http", "host:99999": urlsplit splits it, .port refuses it
            raise CameraFault(
                f"the camera URL {self.shown} has no valid port",
                "write the port in the source URL as a number 1..65535 (http://host:8080/...), or leave it out",
            ) from None
        host = parts.hostname or ""
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Accept": "multipart/x-mixed-replace, image/jpeg", "Connection": "close"}
        if parts.username is not None:
            userinfo = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode("ascii")
        if parts.scheme.lower() == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=self.open_timeout_s, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.open_timeout_s)
        self._conn = conn
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise CameraUnavailable(
                f"the camera {self.shown} did not answer: {type(exc).__name__}: {exc}",
                "check it is plugged in and reachable from this device, and the URL's host and port",
            ) from None
        self._response = response
        if response.status != 200:
            fix = (
                "put the camera's user and password in the URL (http://user:password@host/...)"
                if response.status in (401, 403)
                else "check the URL's path against the camera's manual"
            )
            raise CameraUnavailable(f"the camera {self.shown} answered HTTP {response.status} {response.reason}", fix)
        try:
            boundary = boundary_of(response.getheader("Content-Type", ""))
        except NotMultipart as exc:
            raise CameraNotMjpeg(self.shown, str(exc)) from None
        self._decoder = MultipartDecoder(boundary, max_part_bytes=self.max_part_bytes)
        if conn.sock is not None:
            conn.sock.settimeout(self.read_timeout_s)

    def next_part(self, stop: threading.Event | None = None) -> JpegPart | None:
        """The next JPEG part with its size (not decoded); None when the stream ends, stalls past the timeout,
        or ``stop`` is set.

        A part that is no JPEG raises NotJpeg (the caller counts them); a stream that breaks the codec's bounds,
        or whose parts are all cut short, raises a CameraFault.
        """
        assert self._response is not None and self._decoder is not None
        while not self._parts:
            if stop is not None and stop.is_set():
                return None
            try:
                data = self._response.read1(CHUNK)
            except (OSError, http.client.HTTPException):  # a timeout is an OSError
                return None
            if not data:
                return None
            try:
                events = self._decoder.feed(data)
            except PartTooLarge as exc:
                raise CameraFrameTooLarge(self.shown, str(exc), size=exc.size) from None
            except ConflictingLength as exc:
                raise CameraStreamBroken(self.shown, str(exc)) from None
            except (NotMultipart, HeadersTooLarge) as exc:
                raise CameraNotMjpeg(self.shown, str(exc)) from None
            for event in events:
                if isinstance(event, Part):
                    self._parts.append(event)
                    self._cut_in_a_row = 0
                else:
                    self.dropped += 1
                    self._cut_in_a_row += 1
                    if self._cut_in_a_row >= CUT_PARTS_MAX:
                        raise CameraStreamBroken(
                            self.shown, f"{self._cut_in_a_row} parts in a row were {event.reason}"
                        )
            del self._parts[:-1]  # only the newest part of one read is worth anything: the rest are never decoded
        part = self._parts.pop(0)
        width, height = jpeg_size(part.body)  # NotJpeg for a part that is not one
        return JpegPart(part.body, width, height)

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = self._response = self._decoder = None
        self._parts.clear()


def decode(part: JpegPart) -> np.ndarray | None:
    """The part's pixels (BGR), or None when OpenCV cannot decode it or it is not the size its header says."""
    # EXIF orientation is not applied: the pixels keep the size the SOF header gave (and the size check read)
    pixels = cv2.imdecode(np.frombuffer(part.body, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None or pixels.shape[:2] != (part.height, part.width):
        return None
    return pixels


__all__ = ["JpegPart", "MjpegReader", "NotJpeg", "decode", "is_http"]
