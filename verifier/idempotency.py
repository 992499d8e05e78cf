"""The idempotency store: a repeated POST gets the first answer, not a second effect.

HTTP/2 GOAWAY or a dropped connection can cut a request the verifier already
handled; the agent then retries with the same ``Idempotency-Key``. The first
answer is kept per (principal, key) with a hash of the request, so a repeat is
answered from the store and a different request reusing a key is refused.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from dataclasses import dataclass

RETENTION_S = 24 * 3600


class KeyReuseError(Exception):
    """The same Idempotency-Key came with a different request."""


@dataclass(frozen=True)
class StoredAnswer:
    status: int
    content_type: str
    body: bytes


def request_hash(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"%s %s\n" % (method.encode(), path.encode()) + body).hexdigest()


@dataclass
class IdempotencyStore:
    conn: sqlite3.Connection

    def lookup(self, principal: str, key: str, req_hash: str) -> StoredAnswer | None:
        row = self.conn.execute(
            "SELECT request_hash, status, content_type, body FROM idempotency WHERE principal = ? AND key = ?",
            (principal, key),
        ).fetchone()
        if row is None:
            return None
        if row[0] != req_hash:
            raise KeyReuseError(key)
        return StoredAnswer(int(row[1]), str(row[2]), bytes(row[3]))

    def save(self, principal: str, key: str, req_hash: str, answer: StoredAnswer) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO idempotency (principal, key, request_hash, status, content_type, body, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (principal, key, req_hash, answer.status, answer.content_type, answer.body, time.time()),
        )

    def expire(self, now: float | None = None) -> int:
        cutoff = (now or time.time()) - RETENTION_S
        return self.conn.execute("DELETE FROM idempotency WHERE created_at < ?", (cutoff,)).rowcount
