"""Session tokens: what a successful verification returns, short-lived, single use, bound to the device.

256 random bits; only the SHA-256 is stored, with the device, the subject and
the expiry, so a token is good only from the device it was issued to and only
for minutes. Using a token (:meth:`SessionTokens.take`) deletes it: one
verification authorises one enrollment, never two.

A token has a scope. A verification's decision issues a full session token
(scope ``""``). :func:`enroll_scope` names the other kind, an *enrollment
token* for one factor (``enroll:face``, ``enroll:finger``): what a subject gets
when a factor rule (``subject require --factors finger,face``) asks for a factor
they have never enrolled, after a successful verification of the factor they
have (:meth:`verifier.biometric.BiometricRoutes.grant_missing_factor`). Without
it such a subject could never add the missing factor (adding needs a token, a
token needs an accepted decision, the rule needs both factors to accept).
Every lookup names the scope it wants, so an enrollment token is never a
session token: it authorises one enrollment of that factor, for a subject who
still has none of it, and nothing else. A third scope, ``sensor``
(:data:`SENSOR_SESSION`), is a decision's token whose only proof was a
match-on-sensor reader's assertion (:mod:`verifier.assertions`).
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
    expires_at REAL NOT NULL,
    scope      TEXT NOT NULL DEFAULT ''
);
"""
SESSION = ""  # the scope of a verification's session token
# The scope of a session token earned by a match-on-sensor assertion alone (the device's word, under
# ``--sensor-assertions accept``): it adds another print on a sensor, never a portable factor (finger templates,
# a face) but for a subject with none and the operator's one-time grant (verifier.biometric.check_portable_add).
SENSOR_SESSION = "sensor"


def enroll_scope(factor: str) -> str:
    """The scope of an enrollment token for ``factor`` (protocol.face_template.FACTORS)."""
    return f"enroll:{factor}"


@dataclass(frozen=True)
class SpentToken:
    """A token :meth:`SessionTokens.take` used, kept to give it back when the verifier could not decide."""

    token: str
    device_id: str
    subject_id: str
    expires_at: float
    scope: str = SESSION


@dataclass
class SessionTokens:
    conn: sqlite3.Connection
    ttl_s: float = 300.0

    def __post_init__(self) -> None:
        self.conn.executescript(SCHEMA)
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(session_tokens)")}
        if "scope" not in columns:  # databases from before enrollment tokens: every token there is a session's
            self.conn.execute("ALTER TABLE session_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT ''")

    def issue(self, device_id: str, subject_id: str, scope: str = SESSION) -> dict[str, object]:
        token = secrets.token_urlsafe(32)
        expires = time.time() + self.ttl_s
        self.conn.execute(
            "INSERT INTO session_tokens (token_hash, device_id, subject_id, expires_at, scope) VALUES (?, ?, ?, ?, ?)",
            (hashlib.sha256(token.encode()).hexdigest(), device_id, subject_id, expires, scope),
        )
        iso = dt.datetime.fromtimestamp(expires, dt.UTC).isoformat().replace("+00:00", "Z")
        return {"token": token, "expires_at": iso, "expires_in": self.ttl_s}

    def check(self, token: str, device_id: str, scope: str = SESSION) -> str | None:
        """The subject a live token of this device and this scope stands for, or None."""
        row = self.conn.execute(
            "SELECT device_id, subject_id, expires_at, scope FROM session_tokens WHERE token_hash = ?",
            (hashlib.sha256(token.encode()).hexdigest(),),
        ).fetchone()
        if row is None or row[0] != device_id or row[2] < time.time() or row[3] != scope:
            return None
        return str(row[1])

    def take(self, token: str, device_id: str, subject_id: str, scope: str = SESSION) -> SpentToken | None:
        """Use a token once: what was spent if it was a live token of this subject, device and scope (then gone).

        The caller takes it before matching, so an attempt that is refused (a
        finger that is not the subject's) spends the token as surely as one that
        succeeds: one token never buys a second try.
        """
        digest = hashlib.sha256(token.encode()).hexdigest()
        row = self.conn.execute(
            "DELETE FROM session_tokens WHERE token_hash = ? AND device_id = ? AND subject_id = ? AND expires_at >= ? "
            "AND scope = ? RETURNING expires_at",
            (digest, device_id, subject_id, time.time(), scope),
        ).fetchone()
        return None if row is None else SpentToken(token, device_id, subject_id, float(row[0]), scope)

    def expire(self, now: float | None = None) -> int:
        """Forget tokens past their lifetime (used or not, they can never be accepted again); how many.

        Why: a token is deleted only when an enrollment takes it, and most never are (a kiosk verifies people
        all day; only ``enroll --add`` spends one), so each accepted verification left a row for ever.
        """
        cutoff = time.time() if now is None else now
        return int(self.conn.execute("DELETE FROM session_tokens WHERE expires_at < ?", (cutoff,)).rowcount)

    def give_back(self, spent: SpentToken) -> None:
        """Undo a :meth:`take` when the verifier itself could not decide (matching busy or over budget)."""
        self.conn.execute(
            "INSERT OR IGNORE INTO session_tokens (token_hash, device_id, subject_id, expires_at, scope) "
            "VALUES (?, ?, ?, ?, ?)",
            (hashlib.sha256(spent.token.encode()).hexdigest(), spent.device_id, spent.subject_id, spent.expires_at,
             spent.scope),
        )
