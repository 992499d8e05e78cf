"""Where a camera's frames come from, and how OpenCV is asked to open it.

A source is written the way an installer would: ``/dev/video0`` (or just
``0``), ``rtsp://...``, ``http://.../stream.mjpg``, or a video file. Network
streams get open and read timeouts, so a camera that vanishes makes ``read()``
fail within seconds instead of hanging the owner thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

OPEN_TIMEOUT_MS = 3000
READ_TIMEOUT_MS = 2000


class CameraSourceError(ValueError):
    def __init__(self, source: str) -> None:
        super().__init__(
            f"camera source {source!r} is neither a V4L2 device, a stream URL nor a file "
            "(use /dev/videoN, rtsp://..., http://.../stream.mjpg, or a video file path)"
        )


@dataclass(frozen=True)
class CameraSource:
    text: str
    kind: str  # v4l2, stream, file
    target: Any  # what cv2.VideoCapture takes: an index, a path or a URL

    @classmethod
    def parse(cls, text: str) -> CameraSource:
        text = text.strip()
        if re.fullmatch(r"\d+", text):
            return cls(text, "v4l2", int(text))
        if re.fullmatch(r"/dev/video\d+", text):
            return cls(text, "v4l2", text)
        if re.match(r"(rtsp|rtsps|http|https)://", text):
            return cls(text, "stream", text)
        if text and not text.startswith("/dev/"):
            return cls(text, "file", str(Path(text)))
        raise CameraSourceError(text)

    @property
    def is_live(self) -> bool:
        return self.kind != "file"

    def open(self) -> cv2.VideoCapture:
        """A cv2.VideoCapture on this source (check ``isOpened()``)."""
        if self.kind == "v4l2":
            return cv2.VideoCapture(self.target, cv2.CAP_V4L2)
        if self.kind == "stream":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
            return cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)
        return cv2.VideoCapture(self.target)

    @property
    def redacted(self) -> str:
        """The source for logs: credentials in a stream URL are never shown."""
        return re.sub(r"//[^/@]*@", "//***@", self.text)
