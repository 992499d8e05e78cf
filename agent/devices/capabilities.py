"""What a device can do, each a small interface a session asks for by name.

A session needing a fingerprint image takes any device with
``FINGERPRINT_IMAGE``: a serial module or a libfprint image reader, the same
three calls. Match-on-sensor readers give no image; cameras give frames.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol, runtime_checkable

FINGERPRINT_IMAGE = "fingerprint-image"
MATCH_ON_SENSOR = "match-on-sensor"
CAMERA = "camera"
ALL = (FINGERPRINT_IMAGE, MATCH_ON_SENSOR, CAMERA)


@runtime_checkable
class FingerprintImageSource(Protocol):
    """Finger placed, finger lifted, and the 8-bit image (at ``resolution_dpi``)."""

    resolution_dpi: int

    def wait_for_finger(self, timeout_s: float, *, cancel: threading.Event | None = None) -> None: ...
    def wait_for_lift(self, timeout_s: float, *, cancel: threading.Event | None = None) -> bool: ...
    def download_image(self) -> Any: ...


@runtime_checkable
class MatchOnSensor(Protocol):
    """Enroll, verify, identify on the sensor; the agent keeps only the serialized prints."""

    def enroll(self, timeout_s: float = 60.0, *, cancel: threading.Event | None = None) -> bytes: ...
    def verify(self, enrolled: bytes, timeout_s: float = 15.0, *, cancel: threading.Event | None = None) -> bool: ...


@runtime_checkable
class CameraFrames(Protocol):
    """The newest frame, never one the caller has already seen."""

    def wait_frame(self, after: int = 0, timeout_s: float = 5.0, cancel: threading.Event | None = None) -> Any: ...
