"""One-time bootstrap tokens: how a new device proves the installer vouched for it.

A token is 256 random bits shown once to the installer; only its SHA-256 is
stored, so a copy of the database does not hold usable tokens. It is bound to one
device id, expires, and is consumed in the same transaction that issues the
certificate. The operator may revoke a device id's unused tokens (a token that
leaked, a visit cancelled): they are refused from then on.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import sqlite3
import time
from dataclasses import dataclass

from protocol.endpoints import DEVICE_ID, ID_RULE

DEFAULT_TTL_S = 24 * 3600
# A token lives long enough to be typed on the device (a minute) and no longer than an installer's
# visit is likely to be planned ahead (30 days): a token is a credential lying around until used.
MIN_TTL_S = 60.0
MAX_TTL_S = 30 * 86400.0


class TokenError(Exception):
    """The token is unknown, used, revoked or expired; ``device_id`` is the id it was for, when it is known."""

    def __init__(self, message: str, device_id: str = "") -> None:
        super().__init__(message)
        self.device_id = device_id


class TokenLifetimeError(ValueError):
    """A token lifetime outside [MIN_TTL_S, MAX_TTL_S], or not a finite number.

    Raised where tokens are made, not only by the command line: a token expired at
    birth is refused by provisioning with an unhelpful "expired", and one whose
    expiry is stored as infinity never expires, which breaks the one-time token's
    promise. ``fix`` names the bounds.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.fix = f"give a lifetime from {format_duration(MIN_TTL_S)} to {format_duration(MAX_TTL_S)}, e.g. 24h"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def format_duration(seconds: float) -> str:
    """A lifetime as people read it ("1 d 2 h", "30 min", "90 s" is "1 min 30 s"), to the second."""
    left = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count} {unit}")
    return " ".join(parts) or "0 s"


def _shown(ttl_s: float) -> str:
    """A lifetime refused as too long, in the units the operator typed it in ("31 d", not "2.6784e+06 s")."""
    return format_duration(ttl_s) if ttl_s < 1e18 else f"{ttl_s:g} s"  # beyond, a count of days means nothing


def check_ttl(ttl_s: float) -> float:
    """``ttl_s`` when a token may live that long, else TokenLifetimeError."""
    if not isinstance(ttl_s, int | float) or isinstance(ttl_s, bool) or not math.isfinite(ttl_s):
        raise TokenLifetimeError(f"token lifetime {ttl_s!r} is not a finite number of seconds")
    if ttl_s < MIN_TTL_S:
        raise TokenLifetimeError(
            f"a token lifetime of {ttl_s:g} s is too short: the token would expire before anyone could type it"
        )
    if ttl_s > MAX_TTL_S:
        raise TokenLifetimeError(
            f"a token lifetime of {_shown(ttl_s)} is longer than {format_duration(MAX_TTL_S)}: an unused one-time "
            "token is a credential lying around"
        )
    return float(ttl_s)


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID.fullmatch(device_id):
        raise ValueError(
            f"device id {device_id!r}: use {ID_RULE}"
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
        """A fresh token for a device (a random id when none is given): (token, device id).

        The lifetime is checked here too (TokenLifetimeError), not only by the command
        line: whatever makes tokens must not make one expired at birth or immortal.
        """
        device = check_device_id(device_id or f"dev-{secrets.token_hex(4)}")
        ttl = check_ttl(ttl_s)
        token = typeable_token()
        self.conn.execute(
            "INSERT INTO tokens (token_hash, device_id, expires_at) VALUES (?, ?, ?)",
            (token_hash(token), device, time.time() + ttl),
        )
        return token, device

    def pending(self) -> dict[str, float]:
        """Device ids with an unused, unexpired token: the latest expiry of each (devices yet to provision)."""
        rows = self.conn.execute(
            "SELECT device_id, MAX(expires_at) FROM tokens WHERE used_at IS NULL AND revoked_at IS NULL "
            "AND expires_at > ? GROUP BY device_id",
            (time.time(),),
        ).fetchall()
        return {str(device): float(expires) for device, expires in rows}

    def peek(self, token: str) -> str:
        """The device id a valid, unused token is for (does not consume it)."""
        row = self.conn.execute(
            "SELECT device_id, expires_at, used_at, revoked_at FROM tokens WHERE token_hash = ?", (token_hash(token),)
        ).fetchone()
        if row is None:
            raise TokenError("unknown bootstrap token")
        device_id, expires_at, used_at, revoked_at = row
        if used_at is not None:
            raise TokenError("this bootstrap token was already used", str(device_id))
        if revoked_at is not None:
            raise TokenError("this bootstrap token was revoked by the operator", str(device_id))
        if expires_at < time.time():
            raise TokenError("this bootstrap token has expired", str(device_id))
        return str(device_id)

    def consume(self, token: str) -> None:
        """Mark used; call inside the transaction that records the issued certificate."""
        updated = self.conn.execute(
            "UPDATE tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND revoked_at IS NULL",
            (time.time(), token_hash(token)),
        ).rowcount
        if updated != 1:
            raise TokenError("this bootstrap token was already used")

    def revoke(self, device_id: str) -> int:
        """Revoke every unused token of a device id (expired ones too); how many were revoked."""
        return int(
            self.conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE device_id = ? AND used_at IS NULL AND revoked_at IS NULL",
                (time.time(), device_id),
            ).rowcount
        )

    def ever_issued(self, device_id: str) -> bool:
        """Whether any token, used, revoked, expired or not, was ever issued for the id: an id the operator made."""
        row = self.conn.execute("SELECT 1 FROM tokens WHERE device_id = ? LIMIT 1", (device_id,)).fetchone()
        return row is not None

    def revoked(self, device_id: str) -> int:
        """How many of a device id's tokens the operator revoked before they were used."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM tokens WHERE device_id = ? AND revoked_at IS NOT NULL", (device_id,)
        ).fetchone()
        return int(row[0])
