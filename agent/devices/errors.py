"""Typed errors a session gets from a device."""

from __future__ import annotations

from collections.abc import Sequence

from agent.errors import AgentError


class DeviceError(AgentError):
    """A device could not do what a session asked."""


class DeviceUnplugged(DeviceError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"device {name} went away during the capture (unplugged?)",
            "plug it back in: the agent reopens it, then try again",
        )


class DeviceUnavailable(DeviceError):
    """Not connected when a session wanted it. The fix says the agent reopens it by itself: a person who had just
    plugged a camera back in was told only "plug it in", while the agent's next look was a few seconds away."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"device {name} is not connected",
            "plug it in (the agent reopens it by itself within a few seconds), then try again; "
            "`capture-agent devices` shows what is found",
        )


class DeviceStopped(DeviceError):
    """Asked of a device after the agent closed it (it is stopping): its owner thread has ended, so the job
    would never run. Raised at once, where a session worker that outlived the stop used to wait for good.

    The local API says it with its own code (``agent_stopping``), not ``agent_error``: a kiosk app then shows
    "back in a moment" and retries, where the agent's own failures need staff. The fix says the same first:
    a restart (systemd's, an update's) brings the agent back by itself.
    """

    def __init__(self, name: str) -> None:
        super().__init__(
            f"device {name} is closed: the agent is stopping",
            "try again once the agent is back (its local API answers GET /health again); if it does not come "
            "back by itself, start it (`systemctl start capture-agent`)",
        )


# What to add for each capability a session may ask for: a match-on-sensor reader is a libfprint one only.
ADD_FIX = {
    "fingerprint-image": 'add a [[device]] that can: kind = "zfm" or "fprint" (a serial module, a USB image reader)',
    "match-on-sensor": 'add a [[device]] that can: kind = "fprint" with a match-on-sensor USB reader '
    "(synaptics, goodixmoc, elanmoc, fpcmoc...)",
    "camera": 'add a [[device]] that can: kind = "camera"',
}


class NoDeviceFor(DeviceError):
    """No configured device can do what a session asked: by capability, or by the ``name`` a person gave.

    Why the name apart: a mistyped ``--reader`` name was told "no configured device can do
    fingerprint-image" on a kiosk whose reader could, and to add a device it already had.
    ``not_set_up`` (name, error, fix): the configured devices that would have, had they been set up at
    start; ``waiting``: those made but never open yet, which may. Why: a session then heard "add a
    [[device]] that can" of a reader or camera that is in the config, whose real trouble (libfprint
    missing, a source refused, a reader not plugged in) went unsaid.
    """

    def __init__(
        self,
        capability: str,
        configured: list[str],
        name: str = "",
        names: tuple[str, ...] = (),
        not_set_up: Sequence[tuple[str, str, str]] = (),
        waiting: Sequence[str] = (),
    ) -> None:
        there = f"devices: {', '.join(configured) or 'none'}"
        # A name no configured device has, or one of a device of another kind: the request is wrong, not the
        # kiosk (the local API answers 400, where a device unplugged or not set up is a 503 that may pass).
        self.misnamed = bool(name) and not waiting and not not_set_up
        if waiting:  # made, never opened yet (a libfprint reader tells what it can do only once open)
            message = f"no connected device can do {capability}: {', '.join(waiting)} not connected"
            fix = ("plug it in (the agent reopens it by itself within a few seconds), then try again; "
                   "`capture-agent devices` shows what is found")
        elif not_set_up:
            message = f"no device can do {capability}: " + "; ".join(
                f"{who} could not be set up ({error})" for who, error, _ in not_set_up
            )
            fix = "; ".join(f"{who}: {how or 'check its [[device]] entry'}" for who, _, how in not_set_up) + (
                ", then restart the agent (a device that could not be set up is not retried)"
            )
        elif name and name not in names:
            message = f"no [[device]] is named {name!r} ({there})"
            fix = (f"name one of the configured devices ({', '.join(names) or 'none'}), or a kind of reader: "
                   "fingerprint-image or match-on-sensor")
        elif name:
            message = f"device {name} cannot do {capability} ({there})"
            fix = (f"name a device that can do {capability}, or name none (one that can is picked); or "
                   f"{ADD_FIX.get(capability, 'add a [[device]] that can')}")
        else:
            message = f"no configured device can do {capability} ({there})"
            fix = ADD_FIX.get(capability, "add a [[device]] that can")
        super().__init__(message, fix)


class DeviceCannot(DeviceError):
    """A device asked for an operation it does not declare (identify on a reader that only verifies): a usage
    error, refused before the driver is reached.

    Its own type, not the driver's error: that one was audited as a ``device_fault`` (a reader failing,
    for staff to replace) and told the kiosk app ``device_error``, of a reader that works; the local API
    says ``device_cannot``.
    """

    def __init__(self, name: str, operation: str, why: str, fix: str) -> None:
        super().__init__(f"device {name} cannot {operation}: {why}", fix)


class DeviceFault(DeviceError):
    """A device that answers but whose output cannot be used (a camera's frames of a size out of range,
    a stream that is not MJPEG): the driver's message and fix, under the device's name."""

    def __init__(self, name: str, message: str, fix: str) -> None:
        super().__init__(f"device {name}: {message}", fix)
