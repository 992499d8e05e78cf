"""The simulators' typed error: what a rig asked for that cannot be simulated, and how to ask instead.

A test rig or a developer starts a simulator with options and scripts it on
standard input; a value no real device has (a baud a module cannot run at, a
camera frame too small for its frame-number bar code) or a path that cannot be
used is refused up front with this error, whose ``fix`` names what to give. It
is a ValueError, so a script line that raises it is reported and the simulator
keeps serving, as for any other bad line.
"""

from __future__ import annotations


class SimulatorError(ValueError):
    """A simulator cannot do what it was asked: ``message`` says what, ``fix`` what to do instead."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message, fix)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class UnknownCommand(SimulatorError):
    """A script line whose first word is no command of the simulator: ``fix`` lists the commands there are.

    Its own type, apart from a known command given bad arguments, so a rig tells a typo in the
    command (or a line meant for another simulator) from a value out of range.
    """


class UnreadableImage(SimulatorError):
    """An image file a simulator was given cannot be read or decoded (``path``: which one)."""

    def __init__(self, message: str, fix: str, path: str = "") -> None:
        super().__init__(message, fix)
        self.path = path
