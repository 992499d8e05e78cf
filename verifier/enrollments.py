"""Enrolled templates, encrypted at rest, and the in-memory gallery for 1:N.

Each template (an ISO/IEC 19794-2 record as the device sent it) is one row,
AES-GCM-encrypted under the verifier's enrollment key with the subject id as
associated data, so a row moved to another subject does not decrypt. The key
lives in its own 0600 file (``enrollment.key`` beside the PKI by default),
never in the database.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from biometrics.fingerprint import FingerprintTemplate
from biometrics.fingerprint.iso19794_2 import decode

SCHEMA = """
CREATE TABLE IF NOT EXISTS enrollments (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    created_at REAL NOT NULL,
    nonce      BLOB NOT NULL,
    ciphertext BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS enrollments_subject ON enrollments (subject_id);
CREATE INDEX IF NOT EXISTS enrollments_nocase ON enrollments (subject_id COLLATE NOCASE);
"""


def load_or_create_key(path: Path) -> bytes:
    """The 256-bit enrollment key; made (0600) on first use."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
    if len(key) != 32:
        raise ValueError(f"{path} must hold exactly 32 bytes (an AES-256 key)")
    return key


@dataclass
class EnrollmentStore:
    conn: sqlite3.Connection
    key: bytes

    def __post_init__(self) -> None:
        self.conn.executescript(SCHEMA)
        self._aead = AESGCM(self.key)

    def add(self, subject_id: str, device_id: str, records: list[bytes]) -> None:
        for record in records:
            nonce = secrets.token_bytes(12)
            sealed = self._aead.encrypt(nonce, record, subject_id.encode())
            self.conn.execute(
                "INSERT INTO enrollments (subject_id, device_id, created_at, nonce, ciphertext) VALUES (?, ?, ?, ?, ?)",
                (subject_id, device_id, time.time(), nonce, sealed),
            )

    def exists(self, subject_id: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM enrollments WHERE subject_id = ? LIMIT 1", (subject_id,)).fetchone()
        return row is not None

    def subject_ids(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT DISTINCT subject_id FROM enrollments")}

    def templates(self, subject_id: str) -> list[FingerprintTemplate]:
        rows = self.conn.execute(
            "SELECT nonce, ciphertext FROM enrollments WHERE subject_id = ? ORDER BY id", (subject_id,)
        ).fetchall()
        out: list[FingerprintTemplate] = []
        for nonce, sealed in rows:
            out.extend(decode(self._aead.decrypt(nonce, sealed, subject_id.encode())))
        return out

    def all(self) -> Iterator[tuple[str, FingerprintTemplate]]:
        for subject_id, nonce, sealed in self.conn.execute("SELECT subject_id, nonce, ciphertext FROM enrollments"):
            for template in decode(self._aead.decrypt(nonce, sealed, subject_id.encode())):
                yield subject_id, template
