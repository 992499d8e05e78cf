"""Session tokens: what a successful verification returns, short-lived, single use, bound to the device.

256 random bits; only the SHA-256 is stored, with the device, the subject and
the expiry, so a token is good only from the device it was issued to and only
for minutes. Using a token (:meth:`SessionTokens.take`) deletes it: one
verification authorises one enrollment, never two.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS session_tokens (
    token_hash TEXT PRIMARY KEY,
    device_id  TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""


@dataclass
class SessionTokens:
    conn: sqlite3.Connection
    ttl_s: float = 300.0

    def __post_init__(self) -> None:
        self.conn.executescript(SCHEMA)

    def issue(self, device_id: str, subject_id: str) -> dict[str, object]:
        token = secrets.token_urlsafe(32)
        expires = time.time() + self.ttl_s
        self.conn.execute(
            "INSERT INTO session_tokens (token_hash, device_id, subject_id, expires_at) VALUES (?, ?, ?, ?)",
            (hashlib.sha256(token.encode()).hexdigest(), device_id, subject_id, expires),
        )
        iso = dt.datetime.fromtimestamp(expires, dt.UTC).isoformat().replace("+00:00", "Z")
        return {"token": token, "expires_at": iso, "expires_in": self.ttl_s}

    def check(self, token: str, device_id: str) -> str | None:
        """The subject a live token of this device stands for, or None."""
        row = self.conn.execute(
            "SELECT device_id, subject_id, expires_at FROM session_tokens WHERE token_hash = ?",
            (hashlib.sha256(token.encode()).hexdigest(),),
        ).fetchone()
        if row is None or row[0] != device_id or row[2] < time.time():
            return None
        return str(row[1])

    def take(self, token: str, device_id: str, subject_id: str) -> float | None:
        """Use a token once: its expiry if it was a live token of this subject for this device (it is then gone).

        The caller takes it before matching, so an attempt that is refused (a
        finger that is not the subject's) spends the token as surely as one that
        succeeds: one token never buys a second try.
        """
        digest = hashlib.sha256(token.encode()).hexdigest()
        row = self.conn.execute(
            "DELETE FROM session_tokens WHERE token_hash = ? AND device_id = ? AND subject_id = ? AND expires_at >= ? "
            "RETURNING expires_at",
            (digest, device_id, subject_id, time.time()),
        ).fetchone()
        return None if row is None else float(row[0])

    def give_back(self, token: str, device_id: str, subject_id: str, expires_at: float) -> None:
        """Undo a :meth:`take` when the verifier itself could not decide (matching busy or over budget)."""
        self.conn.execute(
            "INSERT OR IGNORE INTO session_tokens (token_hash, device_id, subject_id, expires_at) VALUES (?, ?, ?, ?)",
            (hashlib.sha256(token.encode()).hexdigest(), device_id, subject_id, expires_at),
        )
