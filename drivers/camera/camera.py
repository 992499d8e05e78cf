"""One camera, owned by one thread that reads frames and keeps only the latest.

OpenCV's ``VideoCapture`` is not safe to call from two threads, and a
consumer slower than the camera would otherwise read frames seconds old out
of the backlog. So the owner thread alone opens, reads and releases the
capture; it keeps the newest frame (with its number and arrival time) and
drops the rest; consumers wait for a frame newer than the one they had. When
the camera vanishes (read fails, the stream ends) the owner releases it and
reopens it with backoff, reporting each change through ``on_event``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from drivers.camera.source import CameraSource
from drivers.errors import DeviceError

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 10.0


class CameraError(DeviceError):
    """Base of every error the camera driver raises."""


class CameraUnavailable(CameraError):
    """No frame from the camera in time: it is unplugged, or its stream stalled."""


@dataclass(frozen=True)
class Frame:
    pixels: np.ndarray = field(repr=False)  # BGR, as OpenCV gives it
    seq: int  # counts frames read by this camera object, from 1
    received: float  # time.monotonic() when read


@dataclass(frozen=True)
class CameraInfo:
    source: str
    width: int
    height: int
    fps: float
    backend: str


class Camera:
    """A camera source with its owner thread. ``start()`` returns at once; frames come when it opens."""

    def __init__(
        self,
        source: str | CameraSource,
        *,
        on_event: Callable[[str, dict], None] | None = None,
        size: tuple[int, int] | None = None,
        fps: float | None = None,
        reconnect: bool = True,
    ) -> None:
        self.source = source if isinstance(source, CameraSource) else CameraSource.parse(source)
        self.on_event = on_event or (lambda kind, data: None)
        self.want_size = size
        self.want_fps = fps
        self.reconnect = reconnect  # False: a supervisor reopens it (open_once), not the owner thread
        self._opened = threading.Event()
        self.info: CameraInfo | None = None
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._seq = 0
        self._connected = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.owner_ident: int | None = None  # the thread that alone touches cv2.VideoCapture

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> Camera:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._own, name=f"camera {self.source.redacted}", daemon=True)
            self._thread.start()
        return self

    def open_once(self, timeout_s: float = 5.0) -> bool:
        """Start the owner thread and wait for the first frame: True when the camera gives frames."""
        self.stop()
        self._opened.clear()
        self.start()
        deadline = time.monotonic() + timeout_s
        while not self._opened.wait(0.05):
            if self._thread is None or not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                return False
        return True

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Camera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- consumers
    def latest(self) -> Frame | None:
        with self._cond:
            return self._latest

    def wait_frame(self, after: int = 0, timeout_s: float = 5.0, cancel: threading.Event | None = None) -> Frame:
        """The newest frame whose number is above ``after`` (so never one the caller has seen)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._latest is None or self._latest.seq <= after:
                if cancel is not None and cancel.is_set():
                    raise CameraError("the capture was cancelled")
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    raise CameraUnavailable(
                        f"no frame from the camera {self.source.redacted} within {timeout_s:g} s",
                        "check the camera is plugged in (or its stream reachable); the agent reopens it",
                    )
                self._cond.wait(min(left, 0.1))
            return self._latest

    # ---------------------------------------------------------------- owner thread
    def _open(self) -> cv2.VideoCapture | None:
        capture = self.source.open()
        if not capture.isOpened():
            capture.release()
            return None
        if self.want_size is not None:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.want_size[0])
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.want_size[1])
        if self.want_fps is not None:
            capture.set(cv2.CAP_PROP_FPS, self.want_fps)
        return capture

    def _own(self) -> None:
        self.owner_ident = threading.get_ident()
        backoff = BACKOFF_MIN_S
        while not self._stop.is_set():
            capture = self._open()
            if capture is None:
                if not self.reconnect:
                    return
                self._stop.wait(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                continue
            try:
                self._stream(capture)
            finally:
                capture.release()
            if self._connected:
                self._connected = False
                self.on_event("camera_unplugged", {"source": self.source.redacted})
            if not self.source.is_live or not self.reconnect:
                break  # a file ends; or the supervisor reopens
            backoff = BACKOFF_MIN_S
            self._stop.wait(backoff)

    def _stream(self, capture: cv2.VideoCapture) -> None:
        first = True
        while not self._stop.is_set():
            ok, pixels = capture.read()
            if not ok or pixels is None:
                return
            now = time.monotonic()
            if first:
                height, width = pixels.shape[:2]
                fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
                self.info = CameraInfo(self.source.redacted, width, height, fps, capture.getBackendName())
                self._connected = True
                self.on_event(
                    "camera_plugged", {"source": self.source.redacted, "width": width, "height": height, "fps": fps}
                )
                first = False
                self._opened.set()
            with self._cond:
                self._seq += 1
                self._latest = Frame(pixels, self._seq, now)  # the newest only: older frames are dropped
                self._cond.notify_all()
