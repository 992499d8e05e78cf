"""Fuzz the camera driver's own HTTP client (drivers.camera.stream.MjpegReader): the answer's head (status line,
headers, WWW-Authenticate challenges, redirects, Content-Type, Transfer-Encoding) and the body after it.

A server thread on 127.0.0.1 answers every connection with the input's bytes
(after a 401 the reader connects again and gets them again); the reader opens
``http://user:pw@127.0.0.1:PORT/stream.mjpg``, so a 401 exercises the Digest and
Basic answers, and then takes up to three parts. An input starting with ``URL:``
is a camera source instead (``{port}`` in it stands for the server's port):
CameraSource.parse, redact_url, and the reader's own URL checks, which run
before any connection: only for a URL naming this harness's own server
(127.0.0.1 on its port) or one urllib cannot split is ``open()`` called at all:
nothing else on the machine is ever connected to.

Typed errors: DeviceError (CameraFault, CameraUnavailable, CameraNotMjpeg, ...),
NotJpeg from ``next_part`` (a part that is no JPEG, which the camera counts),
CameraSourceError. Any other MjpegError escaping the reader is a finding: the
reader translates the codec's errors into camera faults.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import urllib.parse

from drivers.camera.mjpeg import NotJpeg
from drivers.camera.source import CameraSource, CameraSourceError, redact_url
from drivers.camera.stream import MjpegReader
from drivers.errors import DeviceError

OPEN_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 0.2
MAX_PART = 4096


class _Server:
    """One listening socket; each connection gets ``answer`` after the request head, then a close."""

    def __init__(self) -> None:
        self.answer = b""
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, name="fuzz-camera", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed (close): the harness is done
                return
            with conn:
                conn.settimeout(OPEN_TIMEOUT_S)
                head = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in head:
                        data = conn.recv(4096)
                        if not data:
                            break
                        head += data
                    conn.sendall(self.answer)
                    conn.shutdown(socket.SHUT_WR)


    def close(self) -> None:
        """Stop serving: shut down first, which wakes the thread blocked in accept (a bare close does not)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


_server: _Server | None = None


def close() -> None:
    """End the server thread (a replay in a test process must leave no server behind); the next input starts one."""
    global _server
    if _server is not None:
        _server.close()
        _server = None


def _ours(text: str) -> bool:
    """Whether the reader may open ``text``: a URL naming the harness's server, or one urllib cannot split."""
    if not text.lower().startswith(("http://", "https://")):
        return False
    try:
        parts = urllib.parse.urlsplit(text)
        return parts.hostname == "127.0.0.1" and _server is not None and parts.port == _server.port
    except ValueError:
        return True  # what the reader makes of a URL urllib cannot split is the question (it refuses it)


def _source(text: str) -> None:
    with contextlib.suppress(CameraSourceError):
        CameraSource.parse(text)
    redact_url(text)
    if not _ours(text):
        return  # never a connection anywhere else
    reader = MjpegReader(text, redact_url(text), open_timeout_s=OPEN_TIMEOUT_S, read_timeout_s=READ_TIMEOUT_S)
    try:
        reader.open()
    except DeviceError:
        pass
    finally:
        reader.release()


def TestOneInput(data: bytes) -> None:
    global _server
    if _server is None:
        _server = _Server()
    if data.startswith(b"URL:"):
        _server.answer = b""  # what an earlier input left would make a replay depend on the order
        _source(data[4:].decode("utf-8", "replace").replace("{port}", str(_server.port)))
        return
    _server.answer = data
    url = f"http://user:pw@127.0.0.1:{_server.port}/stream.mjpg"
    reader = MjpegReader(url, "the fuzzed camera", open_timeout_s=OPEN_TIMEOUT_S, read_timeout_s=READ_TIMEOUT_S,
                         max_part_bytes=MAX_PART)
    try:
        reader.open()
        for _ in range(3):
            if reader.next_part() is None:
                break
    except (DeviceError, NotJpeg):
        pass
    finally:
        reader.release()


if __name__ == "__main__":
    from fuzz.common import main

    main("camera_http", TestOneInput, sys.argv)
