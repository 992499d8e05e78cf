"""One look at an http(s) MJPEG camera through the reader the agent runs: what `capture-agent devices` shows of it.

Why not ``cv2.VideoCapture`` (FFmpeg), as for V4L2, RTSP and files: the daemon does not read an http(s) MJPEG
stream through it (see :mod:`drivers.camera.camera`). FFmpeg reads what the daemon refuses (a snapshot URL's one
JPEG, a frame outside the sizes the agent takes) and reports the rate it guesses (25 fps) rather than the camera's.
Here the stream is read by :class:`~drivers.camera.camera.Camera`, the daemon's own: the same bounds, the same
faults and fixes, the backend name the daemon shows, and a rate measured between the frames that came.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from drivers.camera.camera import Camera, Frame
from drivers.camera.errors import CameraError, CameraFault, CameraUnavailable
from drivers.camera.source import CameraSource

PROBE_TIMEOUT_S = 5.0  # the whole look: the open, the first frame and the ones after it
PROBE_FRAMES = 3


@dataclass(frozen=True)
class StreamLook:
    backend: str  # as the daemon's CameraInfo says it
    width: int
    height: int
    fps: float | None  # frames a second between the first frame and the last; None when only one came


def look_at_stream(
    source: CameraSource, *, timeout_s: float = PROBE_TIMEOUT_S, frames: int = PROBE_FRAMES, **options: Any
) -> StreamLook:
    """Open ``source`` as the daemon would (``options``: what it gives Camera, e.g. its size bounds and TLS floor)
    and read up to ``frames`` frames within ``timeout_s`` in all.

    Raises the CameraError the daemon would meet (a fault, a refused open: its message and fix), or
    CameraUnavailable when no frame came in time."""
    deadline = time.monotonic() + timeout_s
    camera = Camera(source, reconnect=False, **options)
    try:
        if not camera.open_once(timeout_s=timeout_s):
            error = camera.fault or camera.open_error
            if error is not None:
                raise error
            raise CameraUnavailable(
                f"no frame from the camera {source.redacted} within {timeout_s:g} s",
                "check the URL is the camera's MJPEG stream and that the camera is reachable from here",
            )
        first = camera.latest()
        assert first is not None and camera.info is not None
        seen: list[Frame] = [first]
        while len(seen) < frames and (left := deadline - time.monotonic()) > 0:
            try:
                seen.append(camera.wait_frame(after=seen[-1].seq, timeout_s=left))
            except CameraFault:
                raise  # what the daemon would audit: frames it cannot use
            except CameraError:
                break  # no more in time: the frames that came say what they can
        height, width = seen[-1].pixels.shape[:2]
        elapsed = seen[-1].received - seen[0].received
        fps = round((seen[-1].seq - seen[0].seq) / elapsed, 2) if len(seen) > 1 and elapsed > 0 else None
        return StreamLook(camera.info.backend, int(width), int(height), fps)
    finally:
        camera.stop()
