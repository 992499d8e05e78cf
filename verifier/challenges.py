"""Single-use nonces with a short lifetime, bound to the device that asked for them.

Each biometric request carries one; the verifier consumes it atomically, so a
captured request replayed later finds its nonce used or expired.
"""

from __future__ import annotations

import base64
import secrets
import sqlite3
import time
from dataclasses import dataclass

DEFAULT_TTL_S = 60.0
NONCE_MARGIN_S = 60.0  # kept this long past expiry, so that a late request hears "expired", not "unknown"


class NonceError(Exception):
    """The nonce is unknown (or another device's), expired, or used: ``kind`` says which.

    The kinds are the protocol's problem types ``nonce-unknown``, ``nonce-expired``
    and ``nonce-used``: the agent retries an expired nonce, never a used one.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Challenges:
    conn: sqlite3.Connection
    ttl_s: float = DEFAULT_TTL_S

    def issue(self, device_id: str) -> tuple[str, float]:
        nonce = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
        expires_at = time.time() + self.ttl_s
        self.conn.execute(
            "INSERT INTO nonces (nonce, device_id, expires_at) VALUES (?, ?, ?)",
            (nonce, device_id, expires_at),
        )
        return nonce, expires_at

    def consume(self, device_id: str, nonce: str) -> None:
        """Use a nonce once; raise NonceError naming why it is refused."""
        now = time.time()
        updated = self.conn.execute(
            "UPDATE nonces SET used_at = ? WHERE nonce = ? AND device_id = ? AND used_at IS NULL AND expires_at >= ?",
            (now, nonce, device_id, now),
        ).rowcount
        if updated == 1:
            return
        row = self.conn.execute(
            "SELECT device_id, expires_at, used_at FROM nonces WHERE nonce = ?", (nonce,)
        ).fetchone()
        if row is None or row[0] != device_id:
            raise NonceError("unknown", "unknown challenge nonce")
        if row[2] is not None:
            raise NonceError("used", "this challenge nonce was already used (a replayed request?)")
        raise NonceError("expired", "this challenge nonce has expired")

    def release(self, device_id: str, nonce: str) -> None:
        """Make a consumed nonce usable again: its request was not decided (the verifier was busy)."""
        self.conn.execute("UPDATE nonces SET used_at = NULL WHERE nonce = ? AND device_id = ?", (nonce, device_id))

    def expire(self, now: float | None = None) -> int:
        """Forget nonces past their lifetime (used or not): they can never be accepted again.

        A minute of margin, so that a request arriving just late is told "expired"
        (which the agent retries) rather than "unknown".
        """
        cutoff = (now or time.time()) - NONCE_MARGIN_S
        return self.conn.execute("DELETE FROM nonces WHERE expires_at < ?", (cutoff,)).rowcount
