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


class NoDeviceFor(DeviceError):
    """No device made can do what a session needs. ``not_set_up`` (name, error, fix): the configured devices that
    would have, had they been set up at start; ``waiting``: those made but never open yet, which may. Why: a
    session then heard "add a [[device]] that can" of a reader or camera that is in the config, whose real
    trouble (libfprint missing, a source refused, a reader not plugged in) went unsaid."""

    def __init__(
        self, capability: str, configured: list[str], not_set_up: Sequence[tuple[str, str, str]] = (),
        waiting: Sequence[str] = (),
    ) -> None:
        if waiting:  # made, never opened yet (a libfprint reader tells what it can do only once open)
            super().__init__(
                f"no connected device can do {capability}: {', '.join(waiting)} not connected",
                "plug it in (the agent reopens it by itself within a few seconds), then try again; "
                "`capture-agent devices` shows what is found",
            )
            return
        if not_set_up:
            super().__init__(
                f"no device can do {capability}: "
                + "; ".join(f"{name} could not be set up ({error})" for name, error, _ in not_set_up),
                "; ".join(f"{name}: {fix or 'check its [[device]] entry'}" for name, _, fix in not_set_up)
                + ", then restart the agent (a device that could not be set up is not retried)",
            )
            return
        super().__init__(
            f"no configured device can do {capability} (devices: {', '.join(configured) or 'none'})",
            'add a [[device]] that can (kind = "zfm" or "fprint" for fingerprints, "camera" for faces)',
        )


class DeviceFault(DeviceError):
    """A device that answers but whose output cannot be used (a camera's frames of a size out of range,
    a stream that is not MJPEG): the driver's message and fix, under the device's name."""

    def __init__(self, name: str, message: str, fix: str) -> None:
        super().__init__(f"device {name}: {message}", fix)
