"""Typed errors of the libfprint driver, each with the fix, and retry codes as feedback codes."""

from __future__ import annotations

from drivers.errors import DeviceError, FingerTimeout, RetryCapture, UsageError

FPRINTD_FIX = (
    "fprintd (the desktop's fingerprint service) holds the reader: stop it and keep it from starting again "
    "with `systemctl mask --now fprintd`"
)


class FprintError(DeviceError):
    """Base of every error the libfprint driver raises."""


class FprintUsageError(FprintError, UsageError):
    """The reader (or this driver) does not do what was asked, or not now: libfprint's NOT_SUPPORTED, NOT_OPEN,
    ALREADY_OPEN, DATA_INVALID, and the driver's own refusals (an image fetched before a capture, identify on a
    reader without identification). Not a fault of the reader: its fix was "unplug and replug the reader".

    ``lasting``: asking again will be refused again (NOT_SUPPORTED, DATA_INVALID: the reader or the data is what
    it is). False for NOT_OPEN (the reader was closed under the request: it works once open again). Why: a forget
    told "run it again" of a reader that can never delete kept its note, and its advice, for good.
    """

    lasting = True


class FprintUnavailable(FprintError):
    """libfprint or PyGObject is not installed."""


class DeviceNotFound(FprintError):
    def __init__(self, selector: str, found: list[str]) -> None:
        listed = ", ".join(found) or "none"
        super().__init__(
            f"no libfprint reader matches {selector!r} (readers found: {listed})",
            "plug the reader in, check `capture-agent devices`, and the udev rules (systemd/60-capture-agent.rules)",
        )


class DeviceBusy(FprintError):
    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"the reader {name} is busy: {detail}", FPRINTD_FIX)


class DeviceRemoved(FprintError):
    def __init__(self, name: str) -> None:
        super().__init__(f"the reader {name} went away (unplugged?)", "plug it back in; the agent reopens it")


class CaptureTimeout(FprintError, FingerTimeout):
    def __init__(self, seconds: float) -> None:
        FingerTimeout.__init__(self, seconds)


class CaptureCancelled(FprintError):
    def __init__(self) -> None:
        super().__init__("the capture was cancelled")


class RetryScan(FprintError, RetryCapture):
    """The reader asks for another try; ``feedback`` is a code of DESIGN.md's vocabulary.

    A :class:`~drivers.errors.RetryCapture` too, so capture sessions treat it like
    any family's retry (a prompt and the next attempt), not as a failure.
    """

    def __init__(self, feedback: str, message: str) -> None:
        RetryCapture.__init__(self, feedback, message)


# FpDeviceRetry nick -> (feedback code, message for the person)
RETRY_FEEDBACK = {
    "general": ("place_finger", "Try again: place your finger on the sensor"),
    "too-short": ("too_fast", "The swipe was too short: swipe more slowly"),
    "center-finger": ("place_finger", "Center your finger on the sensor"),
    "remove-finger": ("lift_finger", "Lift your finger and place it again"),
}


class UnreadablePrint(FprintUsageError):
    """A stored print libfprint cannot read back (``FpPrint.deserialize``): corrupt, cut short, or not a print.

    A usage error (the reader is fine, the data handed to it is not), whose only fix is a new print of that
    finger: libfprint's own error was a raw ``GLib.Error`` "Data could not be parsed", no type of this driver's,
    and some such prints did not even raise: libfprint aborted the process (see :mod:`drivers.fprint.prints`).
    """

    def __init__(self, name: str, why: str) -> None:
        self.why = why  # what is wrong with it, in words (never its bytes): for a caller naming whose print it is
        super().__init__(
            f"the print given to the reader {name} cannot be read ({why})",
            f"enroll that finger on the reader {name} again: the print kept for it is unusable",
        )


class PrintNotOnSensor(FprintError):
    """libfprint's DATA_NOT_FOUND: the print asked for is not in the reader's own storage (deleted there, or the
    reader was reset or replaced). A failure like the family's others (its fix was "unplug and replug the
    reader", which brings no print back); a delete that meets it has nothing left to delete."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"the reader {name} does not hold that print in its storage (deleted there, or the reader was reset)",
            f"enroll the finger on the reader {name} again",
        )


class NoSensorStorage(FprintUsageError):
    """A delete or listing asked of a reader without storage (no FP_DEVICE_FEATURE_STORAGE): it keeps no print
    of its own, so there is nothing on it to delete; refused before libfprint, whose NOT_SUPPORTED came late."""

    def __init__(self, name: str, driver: str) -> None:
        super().__init__(
            f"the reader {name} keeps no prints (libfprint's {driver} driver has no storage)",
            "nothing on the reader to delete: the agent's sealed copy is the only one (capture-agent forget "
            "removes it)",
        )


class NoStorageList(FprintUsageError):
    """An emptying asked of a reader that cannot list its storage (no FP_DEVICE_FEATURE_STORAGE_LIST): the prints
    on it cannot all be named, so only those the agent knows can be deleted; refused before libfprint."""

    def __init__(self, name: str, driver: str) -> None:
        super().__init__(
            f"the reader {name} cannot list its storage (libfprint's {driver} driver has no STORAGE_LIST)",
            "the prints the agent kept for it are deleted one by one; any other print on it is cleared only by "
            "its vendor's tool",
        )


class FingerAlreadyOnSensor(FprintUsageError):
    """libfprint's DATA_DUPLICATE at enrolment: the reader's own storage already holds this finger. Not the
    reader's fault (its fix was "unplug and replug the reader", which changes nothing): the finger was enrolled
    under another id, or its print was forgotten by the agent while the reader was unplugged, or left there by
    other software."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"the reader {name} already holds this finger in its storage",
            "enroll another finger; or erase the print it holds: `capture-agent forget --subject ID` for the id "
            "it was enrolled under here (also finishes a forget that could not reach the reader), else clear the "
            f"reader's storage (`capture-agent forget --everyone --reader {name}`: every print on it, everyone's)",
        )
