"""The root of every driver's errors: a message and the fix, for whoever shows it to a person.

Each device family (serial modules, libfprint readers, cameras) subclasses it, so
the agent's device layer translates one type at its boundary, as httpx does.
"""

from __future__ import annotations


class DeviceError(Exception):
    """A driver error: what happened, and what fixes it (``fix``, may be empty)."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} (fix: {self.fix})" if self.fix else base


class UsageError(DeviceError):
    """Asked what the device or its driver does not do, or not now: an operation the reader lacks, one out of
    order (an image fetched before any capture), an argument no device takes. The device is fine.

    Its own type, beside the families' faults: the agent audits a driver error a session meets as a
    ``device_fault`` (a reader for staff to replace), and told these so of readers that work.
    """


class RetryCapture(DeviceError):
    """The reader took no usable image this time and asks for another try; not a fault of the device.

    Every family's retry answers (libfprint's "swipe too short", a serial module's
    failed imaging) share this type so a capture session handles them alike:
    ``feedback`` is a code of DESIGN.md's feedback vocabulary to prompt, the
    message is for the person at the sensor, and the session takes its next attempt.
    """

    def __init__(self, feedback: str, message: str, fix: str = "try again") -> None:
        super().__init__(message, fix)
        self.feedback = feedback


class FingerTimeout(DeviceError):
    """No finger came within the wait: every family's (a serial module's, a libfprint reader's) is one type,
    so a session tells the person the same thing whatever the reader."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no finger on the sensor within {seconds:g} s", "place a finger on the sensor")
        self.seconds = seconds
