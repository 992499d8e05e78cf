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
