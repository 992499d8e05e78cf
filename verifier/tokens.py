"""One-time bootstrap tokens: how a new device proves the installer vouched for it.

A token is 256 random bits shown once to the installer; only its SHA-256 is
stored, so a copy of the database does not hold usable tokens. It is bound to one
device id, expires, and is consumed in the same transaction that issues the
certificate.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass

DEFAULT_TTL_S = 24 * 3600
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TokenError(Exception):
    """The token is unknown, used or expired."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID.match(device_id):
        raise ValueError(
            f"device id {device_id!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return device_id


def typeable_token() -> str:
    """256 random bits in URL-safe base64 that never start with '-'.

    An installer types the token as ``--token TOKEN``: one starting with '-'
    (1 draw in 64) would be read by the shell's argument parser as an option.
    """
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


@dataclass
class BootstrapTokens:
    conn: sqlite3.Connection

    def new(self, device_id: str | None = None, ttl_s: float = DEFAULT_TTL_S) -> tuple[str, str]:
        """A fresh token for a device (a random id when none is given): (token, device id)."""
        device = check_device_id(device_id or f"dev-{secrets.token_hex(4)}")
        token = typeable_token()
        self.conn.execute(
            "INSERT INTO tokens (token_hash, device_id, expires_at) VALUES (?, ?, ?)",
            (token_hash(token), device, time.time() + ttl_s),
        )
        return token, device

    def peek(self, token: str) -> str:
        """The device id a valid, unused token is for (does not consume it)."""
        row = self.conn.execute(
            "SELECT device_id, expires_at, used_at FROM tokens WHERE token_hash = ?", (token_hash(token),)
        ).fetchone()
        if row is None:
            raise TokenError("unknown bootstrap token")
        device_id, expires_at, used_at = row
        if used_at is not None:
            raise TokenError("this bootstrap token was already used")
        if expires_at < time.time():
            raise TokenError("this bootstrap token has expired")
        return str(device_id)

    def consume(self, token: str) -> None:
        """Mark used; call inside the transaction that records the issued certificate."""
        updated = self.conn.execute(
            "UPDATE tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
            (time.time(), token_hash(token)),
        ).rowcount
        if updated != 1:
            raise TokenError("this bootstrap token was already used")
