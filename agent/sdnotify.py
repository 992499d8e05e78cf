"""The systemd notify protocol, written here rather than taken from a library.

Why our own: the messages are one datagram each on a unix socket, and a daemon
left alone for months must know when they fail. Libraries commonly swallow the
error; here a failed send is logged as an event and returned as ``False``.

Protocol (sd_notify(3)): newline-separated ``KEY=VALUE`` assignments in one
datagram to the socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace). ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, when set, must be
our pid) give the watchdog period; we ping at half of it.
"""

from __future__ import annotations

import os

import structlog

from agent.datagram import DatagramSender

log = structlog.get_logger()


class Notifier(DatagramSender):
    """Sends notify datagrams; a no-op when not started by systemd."""

    def __init__(self, address: str | None = None) -> None:
        raw = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        super().__init__("\0" + raw[1:] if raw.startswith("@") else raw)

    def send(self, **fields: str | int) -> bool:
        """Send one datagram, e.g. ``send(READY=1, STATUS="up")``."""
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        return self._send(message, "sd_notify_failed")


def watchdog_interval_s() -> float | None:
    """Half the watchdog period systemd asked for, or None when there is none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    # ASCII digits only: str.isdigit() also admits "²" and other digits int() refuses.
    if not usec or (pid and pid.isascii() and pid.isdigit() and int(pid) != os.getpid()):
        return None
    if not (usec.isascii() and usec.isdigit()):
        log.error("watchdog_usec_invalid", value=usec[:32])
        return None
    period = int(usec) / 1_000_000
    return period / 2 if period > 0 else None
