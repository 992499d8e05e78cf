"""The idempotency store: a repeated POST gets the first answer, not a second effect.

HTTP/2 GOAWAY or a dropped connection can cut a request the verifier already
handled; the agent then retries with the same ``Idempotency-Key``. The first
answer is kept per (principal, key) with a hash of the request, so a repeat is
answered from the store and a different request reusing a key is refused.

Stored answers are sealed (AES-256-GCM, the principal and the key as
associated data) under a key derived from the verifier's at-rest key
(``enrollment.key``, a file apart from the database): an accepted verification's
answer carries a session token, and a copy of the database must not hand out
live tokens. The answer is kept whole, so a retry after a cut connection still
gets its token. Its headers (a step-up's WWW-Authenticate) are sealed as well, apart
from the body (their own associated data, so neither passes for the other): what
a stored answer says is read back only with the key, whatever header it carries.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RETENTION_S = 24 * 3600
# Headers that describe one handling of a request, not its answer: a repeat is handled again (a lookup), so it
# carries its own (the app's Server-Timing is added afresh), never the first handling's matching time.
PER_HANDLING_HEADERS = frozenset({b"server-timing"})
SEALED = b"AEAD1"  # prefix of a sealed body: 12-byte nonce, then ciphertext and tag
HEADERS_PART = b"\x00headers"  # ends the sealed headers' associated data


def sealing_key(at_rest_key: bytes) -> bytes:
    """The key that seals stored answers, derived (HKDF) so it is never the templates' key itself."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"capture-verifier idempotent answers v1").derive(at_rest_key)


class KeyReuseError(Exception):
    """The same Idempotency-Key came with a different request."""


@dataclass(frozen=True)
class StoredAnswer:
    status: int
    content_type: str
    body: bytes
    # The answer's headers a repeat needs too: a step-up's 401 is RFC 9470 only with its WWW-Authenticate.
    headers: tuple[tuple[bytes, bytes], ...] = ()


def kept_headers(headers: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
    """The headers a stored answer keeps: all but :data:`PER_HANDLING_HEADERS`.

    Why: a repeat answered from the store said ``Server-Timing: match;dur=...`` of
    the first request's matching, though nothing was matched for it: an operator
    reading the agent's timings saw matching that never ran.
    """
    return tuple((name, value) for name, value in headers if name.lower() not in PER_HANDLING_HEADERS)


def request_hash(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"%s %s\n" % (method.encode(), path.encode()) + body).hexdigest()


@dataclass
class IdempotencyStore:
    conn: sqlite3.Connection
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        self._aead = AESGCM(self.key)
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(idempotency)")}
        if "expires_at" not in columns:  # databases from before answers had their own retention
            self.conn.execute("ALTER TABLE idempotency ADD COLUMN expires_at REAL")
        if "headers" not in columns:  # databases from before answers kept their headers
            self.conn.execute("ALTER TABLE idempotency ADD COLUMN headers BLOB")

    @staticmethod
    def _aad(principal: str, key: str, part: bytes = b"") -> bytes:
        """The associated data: the principal and the key (``part`` names the headers, so they never open as a body)."""
        return principal.encode() + b"\x00" + key.encode() + part

    def _seal(self, principal: str, key: str, body: bytes, part: bytes = b"") -> bytes:
        nonce = secrets.token_bytes(12)
        return SEALED + nonce + self._aead.encrypt(nonce, body, self._aad(principal, key, part))

    def _open(self, principal: str, key: str, stored: bytes, part: bytes = b"") -> bytes:
        if not stored.startswith(SEALED):
            return stored  # written before answers were sealed; gone within RETENTION_S
        nonce, sealed = stored[len(SEALED) : len(SEALED) + 12], stored[len(SEALED) + 12 :]
        return self._aead.decrypt(nonce, sealed, self._aad(principal, key, part))

    def _seal_headers(self, principal: str, key: str, headers: tuple[tuple[bytes, bytes], ...]) -> bytes:
        """The answer's headers as sealed JSON: a header may carry what a copy of the database must not show."""
        plain = json.dumps([[name.decode("latin-1"), value.decode("latin-1")] for name, value in headers])
        return self._seal(principal, key, plain.encode(), HEADERS_PART)

    def _open_headers(self, principal: str, key: str, stored: bytes | None) -> tuple[tuple[bytes, bytes], ...]:
        """The stored headers of an answer: none for rows from before they were kept (gone within RETENTION_S)."""
        if not stored:
            return ()
        plain = self._open(principal, key, bytes(stored), HEADERS_PART)
        return tuple((name.encode("latin-1"), value.encode("latin-1")) for name, value in json.loads(plain))

    def lookup(self, principal: str, key: str, req_hash: str) -> StoredAnswer | None:
        row = self.conn.execute(
            "SELECT request_hash, status, content_type, body, headers FROM idempotency WHERE principal = ? AND key = ?",
            (principal, key),
        ).fetchone()
        if row is None:
            return None
        if row[0] != req_hash:
            raise KeyReuseError(key)
        body = self._open(principal, key, bytes(row[3]))
        # Filtered as read, not as saved: one place, which rows saved by earlier versions pass through too.
        return StoredAnswer(int(row[1]), str(row[2]), body, kept_headers(self._open_headers(principal, key, row[4])))

    def save(
        self, principal: str, key: str, req_hash: str, answer: StoredAnswer, retention_s: float = RETENTION_S
    ) -> None:
        """Keep the first answer for ``retention_s`` (a nonce's answer: no longer than the nonce lives)."""
        now = time.time()
        self.conn.execute(
            "INSERT OR IGNORE INTO idempotency (principal, key, request_hash, status, content_type, body, created_at, "
            "expires_at, headers) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                principal,
                key,
                req_hash,
                answer.status,
                answer.content_type,
                self._seal(principal, key, answer.body),
                now,
                now + retention_s,
                self._seal_headers(principal, key, answer.headers),
            ),
        )

    def expire(self, now: float | None = None) -> int:
        now = now or time.time()
        return self.conn.execute(
            "DELETE FROM idempotency WHERE COALESCE(expires_at, created_at + ?) < ?", (RETENTION_S, now)
        ).rowcount
