"""One camera, owned by one thread that reads frames and keeps only the latest.

OpenCV's ``VideoCapture`` is not safe to call from two threads, and a
consumer slower than the camera would otherwise read frames seconds old out
of the backlog. So the owner thread alone opens, reads and releases the
capture; it keeps the newest frame (with its number and arrival time) and
drops the rest; consumers wait for a frame newer than the one they had. When
the camera vanishes (read fails, the stream ends) the owner releases it and
reopens it with backoff, reporting each change through ``on_event``.

An http(s) MJPEG source is not handed to OpenCV's FFmpeg backend, which
buffers whatever a camera declares (a 2 GB part, a 16000x16000 frame) and
splices a part cut short into the next frame: the driver reads the stream
itself through a bounded multipart codec (:mod:`drivers.camera.stream`),
refuses a frame whose JPEG header gives a size outside ``min_side..max_side``
before decoding it, and decodes with ``cv2.imdecode`` only for a consumer:
while one asked within ``idle_after_s`` the owner decodes the newest part
ahead (at most ``fps`` a second when set), or ``wait_frame`` decodes the one
it takes. Nobody asking for longer: parts are passed over unread as they come
(no copy, no boundary scan, no decoding: a fast camera nobody watches costs
little more than the socket's reads), and the next ``wait_frame`` waits for
the first part whose head comes after it asked (a frame or two at most),
never a frame held from before.
V4L2 devices, RTSP and files still go through ``cv2.VideoCapture``; their
frames are size-checked after decoding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import structlog

from drivers.camera import stream as mjpeg_stream
from drivers.camera.errors import (
    CameraError,
    CameraFault,
    CameraFileNotVideo,
    CameraFrameSize,
    CameraFramesUndecodable,
    CameraNotMjpeg,
    CameraUnavailable,
)
from drivers.camera.mjpeg import MAX_PART_BYTES
from drivers.camera.source import NO_FRAME, OPEN_TIMEOUT_MS, READ_TIMEOUT_MS, CameraSource

log = structlog.get_logger()  # key-value events; a source only as ``source.redacted``, never a frame

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 10.0
MIN_SIDE = 1
MAX_SIDE = 4096  # as biometrics.face.image.MAX_SIDE: a 4K frame; larger is a misconfigured source
IDLE_AFTER_S = 1.0  # a consumer that asked within this is served by the owner decoding ahead (no added latency)
BAD_PARTS_MAX = 10  # parts in a row that are no JPEG (the stream is not MJPEG), or that do not decode (a broken camera)

__all__ = ["Camera", "CameraError", "CameraFault", "CameraInfo", "CameraUnavailable", "Frame"]


def _size(size: tuple[int, int]) -> str:
    """A size as an installer writes it in a log field: ``640x480``."""
    return f"{size[0]}x{size[1]}"


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
        min_side: int = MIN_SIDE,
        max_side: int = MAX_SIDE,
        max_part_bytes: int = MAX_PART_BYTES,
        allow_basic_over_http: bool = False,
        ca_file: str = "",
        tls_floor: mjpeg_stream.TLSFloor = mjpeg_stream.DEFAULT_TLS_FLOOR,
    ) -> None:
        self.source = source if isinstance(source, CameraSource) else CameraSource.parse(source)
        self.on_event = on_event or (lambda kind, data: None)
        self.want_size = size
        self.want_fps = fps
        self.reconnect = reconnect  # False: a supervisor reopens it (open_once), not the owner thread
        self.min_side, self.max_side = min_side, max_side
        self.max_part_bytes = max_part_bytes
        self.allow_basic_over_http = allow_basic_over_http  # an http:// camera may get Basic (its config says so)
        self.ca_file = ca_file  # an https camera's CA, trusted alone ("" : the system's store)
        self.tls_floor = tls_floor  # an https camera's TLS versions and suites (the agent gives the project's)
        self._opened = threading.Event()
        self.info: CameraInfo | None = None
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._pending: tuple[mjpeg_stream.JpegPart, int, float] | None = None  # (part, seq, received): undecoded
        self._last_decode = 0.0
        self._last_wanted = float("-inf")  # when a consumer last asked for a frame (or stopped waiting for one)
        self._waiters = 0  # consumers in wait_frame now
        self._awaiting_first = False  # a new MJPEG connection: its first part is kept (and decoded) to open it
        self._idle = False  # nobody asked for a while: parts pass unread (the owner's own mark)
        self._fresh_from = 0  # frames numbered below came before the owner last went idle: never handed out as new
        self.idle_after_s = IDLE_AFTER_S
        self._bad_decodes = 0
        self._seq = 0
        self.decoded = 0  # frames decoded: with an MJPEG stream, only those a consumer took
        self.fault: CameraFault | None = None  # why the camera's frames cannot be used, until a good one comes
        self._connected = False
        self.open_error: CameraUnavailable | None = None  # why the last open failed, when it says (a 401, a 404...)
        self._stop = threading.Event()  # a new one per owner thread: a stopped owner never sees it cleared
        self._thread: threading.Thread | None = None
        self.owner_ident: int | None = None  # the thread that alone touches cv2.VideoCapture / the socket
        self.reader: mjpeg_stream.MjpegReader | None = None  # the open MJPEG connection (tests read its bounds)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def is_mjpeg(self) -> bool:
        return self.source.kind == "stream" and mjpeg_stream.is_http(self.source.text)

    def start(self) -> Camera:
        """Start the owner thread, unless one runs; one still ending after ``stop()`` is never joined by a second
        (``owner_alive`` says so, and ``open_once`` fails)."""
        if self._thread is not None and not self._thread.is_alive():
            self._thread = None
        if self._thread is None:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._own, name=f"camera {self.source.redacted}", daemon=True)
            self._thread.start()
        return self

    def open_once(self, timeout_s: float = 5.0) -> bool:
        """Start the owner thread and wait for the first frame: True when the camera gives frames.

        False at once when the camera's frames cannot be used (``fault`` says why)."""
        self.stop()
        self._opened.clear()
        self.fault = self.open_error = None
        if self.owner_alive:  # the last owner has not ended yet: never two on one camera
            self.open_error = CameraUnavailable(
                f"the camera {self.source.redacted} is still being closed",
                "none: the agent opens it again once its last connection has ended",
            )
            return False
        self.start()
        deadline = time.monotonic() + timeout_s
        while not self._opened.wait(0.05):
            thread_gone = self._thread is None or not self._thread.is_alive()
            if thread_gone or self.fault is not None or time.monotonic() > deadline:
                self.stop()
                return False
        return True

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)
            if not self._thread.is_alive():
                self._thread = None  # else kept: start() will not run a second owner beside it

    @property
    def waiting(self) -> int:
        """How many consumers are in :meth:`wait_frame` now: what tells that a capture is waiting for a frame."""
        return self._waiters

    @property
    def owner_alive(self) -> bool:
        """True while an owner thread runs (also one stopped but not yet ended)."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Camera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- consumers
    def latest(self) -> Frame | None:
        """The newest decoded frame (an MJPEG stream may hold a newer part, decoded by the next ``wait_frame``)."""
        with self._cond:
            return self._latest

    def wait_frame(self, after: int = 0, timeout_s: float = 5.0, cancel: threading.Event | None = None) -> Frame:
        """The newest frame whose number is above ``after`` (so never one the caller has seen)."""
        with self._cond:
            self._waiters += 1  # a consumer waiting is asking, however long it waits: parts are kept for it
            self._last_wanted = time.monotonic()
        try:
            return self._wait_frame(after, timeout_s, cancel)
        finally:
            with self._cond:
                self._waiters -= 1
                self._last_wanted = time.monotonic()

    def _wait_frame(self, after: int, timeout_s: float, cancel: threading.Event | None) -> Frame:
        deadline = time.monotonic() + timeout_s
        while True:
            with self._cond:
                while not (
                    (self._latest is not None and self._latest.seq > max(after, self._fresh_from - 1))
                    or (self._pending is not None and self._pending[1] > after)
                ):
                    if cancel is not None and cancel.is_set():
                        raise CameraError("the capture was cancelled")
                    left = deadline - time.monotonic()
                    ended = self._owner_ended()
                    if left <= 0 or self._stop.is_set() or ended:
                        if self.fault is not None:
                            raise self.fault
                        if ended:
                            raise CameraUnavailable(
                                f"the camera {self.source.redacted} stopped giving frames: its connection ended",
                                "check the camera is plugged in (or its stream reachable); the agent reopens it",
                            )
                        raise CameraUnavailable(
                            f"no frame from the camera {self.source.redacted} within {timeout_s:g} s",
                            "check the camera is plugged in (or its stream reachable); the agent reopens it",
                        )
                    self._cond.wait(min(left, 0.1))
                pending, self._pending = self._pending, None
                if pending is None or (self._latest is not None and self._latest.seq >= pending[1]):
                    assert self._latest is not None
                    return self._latest
                if self.want_fps and time.monotonic() - self._last_decode < 1 / self.want_fps:
                    self._pending = pending  # decoded no faster than the configured rate
                    self._cond.wait(1 / self.want_fps - (time.monotonic() - self._last_decode))
                    continue
                self._last_decode = time.monotonic()
            frame = self._decode(*pending)  # outside the lock: the owner thread keeps reading the stream
            if frame is not None and frame.seq > after:
                return frame
            if frame is None:
                self._after_bad_decode(deadline, timeout_s, cancel)

    def _owner_ended(self) -> bool:
        """The owner thread has ended by itself (the connection ended and it does not reconnect, or a file ended):
        no frame can come until the camera is opened again.

        Why: a wait went on to its whole timeout (5 s in a session, an hour if asked) after the camera it waited on
        had gone, so a session whose camera was unplugged or stalled mid-challenge learnt it only then, past its
        own time.
        """
        thread = self._thread
        return thread is not None and not thread.is_alive()

    def _after_bad_decode(self, deadline: float, timeout_s: float, cancel: threading.Event | None) -> None:
        """A part this wait took did not decode: stop here when cancelled, out of time, or the camera's parts
        keep failing, before taking the next.

        Why: a camera sending undecodable parts faster than they fail always had a part pending, so the wait
        took the next one without ever looking at its deadline or the cancel event: it never returned.
        """
        if cancel is not None and cancel.is_set():
            raise CameraError("the capture was cancelled")
        with self._cond:
            fault = self.fault
        if isinstance(fault, CameraFramesUndecodable):
            raise fault
        if time.monotonic() >= deadline or self._stop.is_set():
            raise fault or CameraUnavailable(
                f"no frame the agent could decode from the camera {self.source.redacted} within {timeout_s:g} s",
                "check the camera: set its stream format to MJPEG in its settings, or restart it",
            )

    def _decode(self, part: mjpeg_stream.JpegPart, seq: int, received: float) -> Frame | None:
        pixels = mjpeg_stream.decode(part)
        with self._cond:
            self.decoded += 1
            if pixels is not None:
                self._bad_decodes = 0
                self.fault = None
                frame = Frame(pixels, seq, received)
                if self._latest is None or seq > self._latest.seq:
                    self._latest = frame
                return frame
            self._bad_decodes += 1
            failing = self._bad_decodes >= BAD_PARTS_MAX
        if failing:  # reported once (the same message), whether the owner or a consumer decoded it
            self._set_fault(CameraFramesUndecodable(self.source.redacted, BAD_PARTS_MAX))
        return None

    # ---------------------------------------------------------------- owner thread
    def _open(self) -> cv2.VideoCapture | None:
        try:
            capture = self.source.open()
        except CameraUnavailable as exc:  # a node or file that is not there: kept, its fix reaches the audit
            self.open_error = exc
            return None
        if not capture.isOpened():
            capture.release()
            return None
        if self.want_size is not None:
            ok_w = capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.want_size[0])
            ok_h = capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.want_size[1])
            if not (ok_w and ok_h):
                log.warning("camera_size_refused", source=self.source.redacted, asked=_size(self.want_size))
        if self.want_fps is not None and not capture.set(cv2.CAP_PROP_FPS, self.want_fps):
            log.warning("camera_fps_refused", source=self.source.redacted, asked=self.want_fps)
        return capture

    def _open_mjpeg(self) -> mjpeg_stream.MjpegReader | None:
        if self.want_size is not None:
            log.warning("camera_size_not_settable", source=self.source.redacted, asked=_size(self.want_size),
                        fix="set the size on the camera itself (its web page or settings)")
        reader = mjpeg_stream.MjpegReader(
            self.source.text, self.source.redacted, open_timeout_s=OPEN_TIMEOUT_MS / 1000,
            read_timeout_s=READ_TIMEOUT_MS / 1000, max_part_bytes=self.max_part_bytes,
            allow_basic_over_http=self.allow_basic_over_http, ca_file=self.ca_file, tls_floor=self.tls_floor,
        )
        try:
            reader.open(self._stop)
        except CameraFault as exc:
            reader.release()
            self._set_fault(exc)
            return None
        except CameraUnavailable as exc:  # kept: its fix (a password, a path, a certificate) reaches the audit
            reader.release()
            self.open_error = exc
            return None
        except BaseException:
            reader.release()
            raise
        return reader

    def _set_fault(self, fault: CameraFault) -> None:
        with self._cond:
            new = self.fault is None or str(self.fault) != str(fault)
            self.fault = fault
            self._cond.notify_all()
        if new:
            log.warning("camera_fault", source=self.source.redacted, error=type(fault).__name__, fix=fault.fix)
            self.on_event("camera_fault", {"source": self.source.redacted, "error": str(fault.args[0]),
                                           "fix": fault.fix})

    def _size_ok(self, width: int, height: int) -> bool:
        if self.min_side <= min(width, height) and max(width, height) <= self.max_side:
            return True
        self._set_fault(CameraFrameSize(self.source.redacted, self.source.kind, width, height,
                                        self.min_side, self.max_side))
        return False

    def _own(self) -> None:
        self.owner_ident = threading.get_ident()
        backoff = BACKOFF_MIN_S
        while not self._stop.is_set():
            capture: cv2.VideoCapture | mjpeg_stream.MjpegReader | None = None
            faulted = False
            try:
                capture = self._open_mjpeg() if self.is_mjpeg else self._open()
                if isinstance(capture, mjpeg_stream.MjpegReader):
                    self.reader = capture
                    self._stream_mjpeg(capture)
                elif capture is not None:
                    self._stream(capture)
            except CameraFault as exc:
                self._set_fault(exc)
                faulted = True
            except Exception as exc:  # a driver bug must not kill the owner and leave the camera "connected"
                log.error("camera_driver_failed", source=self.source.redacted, error=type(exc).__name__)
                self._set_fault(CameraFault(
                    f"the camera {self.source.redacted} failed in the agent's driver ({type(exc).__name__})",
                    "report it with the camera's make and model; the agent reopens the camera",
                ))
                faulted = True
            finally:
                if capture is not None:
                    capture.release()
                self.reader = None
                if self._connected:  # whatever ended it: the camera is gone until reopened
                    self._connected = False
                    self.on_event("camera_unplugged", {"source": self.source.redacted})
            failed = capture is None or faulted  # it did not open, or sends what cannot be used
            if not self.reconnect or (not self.source.is_live and (capture is not None or faulted)):
                break  # the supervisor reopens it; or a file has ended (one that did not open is tried again)
            # Failing: wait longer each time, as for a camera that is gone. It gave frames, then ended: soon again.
            delay, backoff = (backoff, min(BACKOFF_MAX_S, backoff * 2)) if failed else (BACKOFF_MIN_S, BACKOFF_MIN_S)
            self._stop.wait(delay)

    def _plugged(self, width: int, height: int, fps: float, backend: str) -> None:
        self.open_error = None
        self.info = CameraInfo(self.source.redacted, width, height, fps, backend)
        self._connected = True
        self.on_event("camera_plugged", {"source": self.source.redacted, "width": width, "height": height, "fps": fps})
        self._opened.set()

    def _stream(self, capture: cv2.VideoCapture) -> None:
        first = True
        while not self._stop.is_set():
            ok, pixels = capture.read()
            if not ok or pixels is None:
                # a file that opened and had nothing: say so, not "no frame" (frames all of a refused size: that fault)
                if first and self.source.kind == "file" and not isinstance(self.fault, CameraFrameSize):
                    self.open_error = CameraFileNotVideo(self.source.redacted, NO_FRAME)
                return
            now = time.monotonic()
            height, width = pixels.shape[:2]
            if not self._size_ok(width, height):
                del pixels  # never kept: a consumer gets the fault instead
                continue
            if first:
                self._plugged(width, height, float(capture.get(cv2.CAP_PROP_FPS) or 0.0), capture.getBackendName())
                first = False
            with self._cond:
                self._seq += 1
                self.decoded += 1
                self.fault = None
                self._latest = Frame(pixels, self._seq, now)  # the newest only: older frames are dropped
                self._cond.notify_all()

    def _keep_parts(self) -> bool:
        """Asked by the reader at each read: keep parts (copied, checked, handed over) to open the connection,
        while a consumer waits, or when one asked within ``idle_after_s``. Else they pass unread, and the part
        and frame kept from before stop counting as new (they will not be the newest by the time someone asks):
        ``wait_frame`` waits for a part numbered from ``_fresh_from``, even while the owner is decoding it."""
        if self._awaiting_first or self._waiters or time.monotonic() - self._last_wanted < self.idle_after_s:
            return True
        if not self._idle:
            self._idle = True
            with self._cond:
                self._pending = None
                self._fresh_from = self._seq + 1  # the parts passed over will be numbered on from here
        return False

    def _stream_mjpeg(self, reader: mjpeg_stream.MjpegReader) -> None:
        """Parts in, the newest kept undecoded; the first one is decoded here (the camera's size, a real JPEG)."""
        first, bad, seen = True, 0, reader.skipped
        self._awaiting_first = True
        while not self._stop.is_set():
            try:
                part = reader.next_part(self._stop, self._keep_parts)
            except mjpeg_stream.NotJpeg as exc:
                bad += 1
                if bad >= BAD_PARTS_MAX:
                    raise CameraNotMjpeg(self.source.redacted, f"{bad} parts in a row are no JPEG ({exc})") from None
                continue
            if part is None:
                return
            now = time.monotonic()
            self._idle = False  # a part kept: the next time nobody asks marks what is kept as old again
            skipped, seen = reader.skipped - seen, reader.skipped  # parts passed over for a newer one
            self._seq += skipped  # so frame numbers count the camera's parts: a gap shows what was skipped
            if not self._size_ok(part.width, part.height):
                continue  # refused before decoding: a 16000x16000 JPEG never becomes 768 MB of pixels
            if first:
                pixels = mjpeg_stream.decode(part)
                if pixels is None:
                    bad += 1
                    if bad >= BAD_PARTS_MAX:
                        raise CameraFramesUndecodable(self.source.redacted, bad)
                    continue
                self._plugged(part.width, part.height, float(self.want_fps or 0.0), reader.backend)
                first = self._awaiting_first = False
                with self._cond:
                    self._seq += 1
                    self.decoded += 1
                    self.fault = None
                    self._bad_decodes = 0  # a new connection's count: the old one's nine must not end its waits
                    self._latest = Frame(pixels, self._seq, now)
                    self._cond.notify_all()
                del pixels
                continue
            bad = 0
            with self._cond:
                self._seq += 1
                if isinstance(self.fault, CameraFrameSize):  # a part in range again (undecoded faults stay)
                    self.fault = None
                self._pending = (part, self._seq, now)  # replaces an older part nobody took: it is never decoded
                self._cond.notify_all()
                # A consumer at work (a capture session): decode ahead here, as it analyses the frame before, at
                # most ``fps`` a second. Nobody asking for a while: the part waits, undecoded, for one who does.
                ahead = now - self._last_wanted < self.idle_after_s
                due = not self.want_fps or now - self._last_decode >= 1 / self.want_fps
                if not (ahead and due):
                    continue
                pending, self._pending = self._pending, None
                self._last_decode = now
            self._decode(*pending)
