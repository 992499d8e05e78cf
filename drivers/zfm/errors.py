"""Typed errors of the serial module driver. Each names the likely cause and the fix."""

from __future__ import annotations

import os

from drivers.errors import DeviceError, FingerTimeout, RetryCapture, UsageError


class ModuleError(DeviceError):
    """Base of every error the driver raises."""


class NoReplyError(ModuleError):
    """The module said nothing within the timeout (``noise_bytes``: what the line carried instead)."""

    def __init__(self, port: str, what: str, noise_bytes: int = 0) -> None:
        heard = (
            f"; the line carried {noise_bytes} bytes that were no packet of the module (another device such as "
            "a GPS or a console on this port, a wrong baud rate, or an RX wire left floating)"
            if noise_bytes
            else ""
        )
        super().__init__(
            f"no reply from the fingerprint module on {port} to {what}{heard}",
            "check the port is the module's, the wiring (module TX to adapter RX and back, 3.3 V), the baud "
            "rate (57600 by default), and on a Raspberry Pi that the serial console is off the UART "
            "(raspi-config > Interface > Serial: no login shell; remove console=serial0 from "
            "/boot/firmware/cmdline.txt)",
        )
        self.noise_bytes = noise_bytes


class PortPermissionError(ModuleError):
    def __init__(self, port: str) -> None:
        super().__init__(
            f"permission denied opening {port}",
            "add the agent's user to the dialout group (usermod -aG dialout capture-agent) or install "
            "systemd/60-capture-agent.rules so the port belongs to the capture-readers group",
        )


class PortMissingError(ModuleError):
    def __init__(self, port: str) -> None:
        super().__init__(f"serial port {port} does not exist", "plug the module in, or check [reader] port")


class PortBusyError(ModuleError):
    """Another process holds the port's exclusive lock (pyserial's ``exclusive``: flock): two drivers on one module
    would interleave their packets and read each other's replies."""

    def __init__(self, port: str, holder: int | None = None) -> None:
        if holder == os.getpid():  # flock is per open file: this process opened the port twice
            message = f"the serial port {port} is already open in this process: two device entries name the same port"
            fix = (
                "name each module's port once: one [reader] port per module (two entries on one port would "
                "interleave their packets)"
            )
        else:
            who = f"process {holder}" if holder is not None else "another process"
            message = f"the serial port {port} is in use by {who} (a second capture-agent on the same module?)"
            fix = (
                f"only one process may drive a module: stop the other one ({f'`kill {holder}`, ' if holder else ''}"
                "`systemctl stop capture-agent`), or give this daemon its own module and port; "
                f"`fuser -v {port}` shows who holds it"
            )
        super().__init__(message, fix)
        self.holder = holder


class UnpluggedError(ModuleError):
    def __init__(self, port: str) -> None:
        super().__init__(f"the module on {port} went away (unplugged?)", "plug it back in; the agent reopens it")


class PortClosedError(UnpluggedError):
    """The driver's port is not open: never opened, or closed by its owner (not lost to an unplug).

    An UnpluggedError all the same, so whoever reopens a module that went away reopens this one too;
    its message says the port is closed rather than blaming the cable.
    """

    def __init__(self, port: str) -> None:
        ModuleError.__init__(
            self,
            f"the serial port {port} of the fingerprint module is not open (never opened, or closed)",
            "open the module first (ZfmModule.open(), open_at_any_baud(), or a with block) and use it before "
            "close(); the agent's supervisor reopens it by itself",
        )


class PortSettingsError(ModuleError):
    """The port refuses the settings the driver opens it with (a speed no module runs at, or no serial port)."""

    def __init__(self, port: str, reason: str) -> None:
        super().__init__(
            f"the serial port {port} cannot be opened as the module's line: {reason}",
            "set baud in the module's [[device]] entry to a multiple of 9600 from 9600 to 115200 (57600 is the "
            "modules' default), and port to the module's serial device (/dev/ttyUSB0, /dev/ttyAMA0, /dev/serial0), "
            "not a file or another kind of device",
        )


class InvalidArgumentError(ModuleError, UsageError, ValueError):
    """A caller's argument no module takes (a buffer, page, size, speed, timeout out of range): nothing was sent.

    A ValueError too, as before this type existed, so a caller catching that still does; a UsageError, so the
    agent does not audit it as a fault of the module.
    """

    def __init__(self, what: str, value: object, expected: str) -> None:
        try:
            text = repr(value)
        except ValueError:  # an int past str()'s 4300-digit limit: its size is what there is to say
            text = f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else "<unprintable>"
        shown = text if len(text) <= 60 else text[:60] + "..."
        super().__init__(f"{what} {shown} is not {expected}", f"pass {what} as {expected}")
        self.what = what


class CorruptReplyError(ModuleError):
    def __init__(self, port: str, reason: str) -> None:
        super().__init__(
            f"corrupt replies from the module on {port} after a retry: {reason}",
            "check the cable and its length, the ground wire, and the baud rate; noise on the line corrupts packets",
        )


class OversizedReplyError(ModuleError):
    """A data stream ran past the size of what was asked for (an image, a template) without ending."""

    def __init__(self, port: str, what: str, limit: int, model: str) -> None:
        super().__init__(
            f"the module on {port} sent more than the {limit} bytes of {what} of a {model} without ending the "
            "stream",
            f"check the module is a {model} (another model of the family has another image size: set the model, "
            "or report its system parameters), and the cable and ground wire (noise repeats packets)",
        )


class ModuleRefusedError(ModuleError):
    """The module answered with a confirmation code other than OK."""

    def __init__(self, what: str, code: int, message: str) -> None:
        super().__init__(f"the module refused {what}: {message} (code {code:#04x})")
        self.code = code


class ImagingFailedError(ModuleError, RetryCapture):
    """GenImg's confirmation code 0x03: a finger is on the sensor but no image could be taken of it.

    A routine answer, not a fault: the manuals give it for a finger the optical
    window cannot image, in practice a wet or greasy finger or the smudge such
    fingers leave on the window. Its feedback code is ``clean_sensor`` ("Please
    wipe the sensor"), whose message names the fix for both: ``place_finger``
    would only repeat what the person has just done, and ``finger_too_dry`` is the
    opposite of the common cause.
    """

    def __init__(self, port: str) -> None:
        RetryCapture.__init__(
            self,
            "clean_sensor",
            "The sensor could not take an image of your finger: wipe the sensor and your finger, then try again",
            f"wipe the sensor window of the module on {port} and dry the finger",
        )


class WrongPasswordError(ModuleError):
    def __init__(self, port: str) -> None:
        super().__init__(f"the module on {port} refused the password", "set [reader] password to the module's password")


class FingerTimeoutError(ModuleError, FingerTimeout):
    def __init__(self, seconds: float) -> None:
        FingerTimeout.__init__(self, seconds)


class CaptureCancelled(ModuleError):
    def __init__(self) -> None:
        super().__init__("the capture was cancelled")
