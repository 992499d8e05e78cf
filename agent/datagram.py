"""A unix datagram sender that reports its failures: the base of sd_notify and journald.

Both protocols are one datagram per message to a socket systemd owns. What they
share is the socket and the rule that a failed send is logged as an event and
returned as False, never swallowed.
"""

from __future__ import annotations

import socket

import structlog

log = structlog.get_logger()


class DatagramSender:
    def __init__(self, address: str) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def _send(self, payload: bytes, failure_event: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            log.error(failure_event, error=exc.strerror or str(exc), address=self.address.replace("\0", "@"))
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
