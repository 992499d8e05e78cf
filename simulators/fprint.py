"""Feeding libfprint's own virtual drivers, so tests and rigs run the real library.

``virtual_image`` (``FP_VIRTUAL_IMAGE=<socket>``): libfprint listens on a unix
socket; a client sends two native-endian int32s, width and height, then the
8-bit pixels; or a pair with a negative first number: -1 retry (code), -2
error (code), -3 automatic finger on/off, -4 finger placed/removed, -5 unplug.

``virtual_device`` (``FP_VIRTUAL_DEVICE=<socket>``; ``FP_VIRTUAL_DEVICE_STORAGE``
for one that also stores prints and identifies): a match-on-sensor reader;
each connection carries one text command: ``SCAN id`` (a finger whose identity
is ``id``), ``RETRY n``, ``ERROR n``, ``FINGER 0|1``, ``SET_ENROLL_STAGES n``,
``UNPLUG``. It answers "no finger" when no command arrives within 500 ms, which
the driver treats as "keep waiting".

The environment variable must be set before libfprint's context is created;
the socket exists once the reader is opened.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from pathlib import Path

import numpy as np

from simulators.errors import SimulatorError

UNIX_PATH_MAX = 108  # sun_path of struct sockaddr_un on Linux, the terminating NUL included
RETRY, ERROR, AUTO_FINGER, FINGER, UNPLUG = -1, -2, -3, -4, -5
# FpDeviceRetry codes
RETRY_GENERAL, RETRY_TOO_SHORT, RETRY_CENTER_FINGER, RETRY_REMOVE_FINGER = 0, 1, 2, 3
# FpDeviceError codes
ERROR_GENERAL, ERROR_BUSY, ERROR_PROTO, ERROR_REMOVED = 0, 4, 5, 0x100


def _connect(path: Path, timeout_s: float) -> socket.socket:
    """Connect to libfprint's socket, which appears only once the reader is opened (waiting up to ``timeout_s``)."""
    size = len(os.fsencode(path))
    if size >= UNIX_PATH_MAX:
        raise SimulatorError(
            f"the socket path {path} is {size} bytes, longer than a unix socket's {UNIX_PATH_MAX - 1}",
            "put the virtual reader's socket in a short folder (tempfile.mkdtemp(prefix='fp-'))",
        )
    deadline = time.monotonic() + timeout_s
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise SimulatorError(
                    f"no libfprint virtual reader listens on {path} after {timeout_s:g} s",
                    "set FP_VIRTUAL_IMAGE (or FP_VIRTUAL_DEVICE) to this path before libfprint starts, "
                    "and open the reader first: its socket exists once it is opened",
                ) from None
            time.sleep(0.02)


class VirtualImageFeeder:
    """A finger for libfprint's ``virtual_image`` reader (one connection, kept)."""

    def __init__(self, path: Path, timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            self._sock = _connect(self.path, self.timeout_s)
        self._sock.sendall(data)

    def image(self, pixels: np.ndarray) -> None:
        """Present a finger: libfprint's reader captures exactly these pixels."""
        if pixels.dtype != np.uint8 or pixels.ndim != 2:
            raise ValueError("an 8-bit grey image (2-D uint8 array) is needed")
        height, width = pixels.shape
        self._send(struct.pack("=ii", width, height) + np.ascontiguousarray(pixels).tobytes())

    def command(self, kind: int, argument: int = 0) -> None:
        self._send(struct.pack("=ii", kind, argument))

    def retry(self, code: int = RETRY_GENERAL) -> None:
        self.command(RETRY, code)

    def error(self, code: int) -> None:
        self.command(ERROR, code)

    def finger(self, present: bool) -> None:
        self.command(FINGER, int(present))

    def automatic_finger(self, on: bool) -> None:
        self.command(AUTO_FINGER, int(on))

    def unplug(self) -> None:
        self.command(UNPLUG)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


class VirtualDeviceFeeder:
    """Commands for libfprint's match-on-sensor ``virtual_device`` reader (one connection per command)."""

    def __init__(self, path: Path, timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s

    def command(self, text: str) -> str:
        with _connect(self.path, self.timeout_s) as sock:
            sock.sendall(text.encode())
            sock.settimeout(self.timeout_s)
            chunks = []
            with contextlib.suppress(OSError):
                while chunk := sock.recv(4096):  # libfprint closes the connection after one command
                    chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")

    def scan(self, finger_id: str) -> None:
        """Present the finger known as ``finger_id``; enrolment stages and verification consume one each."""
        if not finger_id or any(c.isspace() for c in finger_id):
            raise ValueError("a finger id is one word")
        self.command(f"SCAN {finger_id}")

    def retry(self, code: int = RETRY_GENERAL) -> None:
        self.command(f"RETRY {code}")

    def error(self, code: int) -> None:
        self.command(f"ERROR {code}")

    def enroll_stages(self, stages: int) -> None:
        self.command(f"SET_ENROLL_STAGES {stages}")

    def unplug(self) -> None:
        self.command("UNPLUG")
