"""Enrolled templates, encrypted at rest, and the in-memory gallery for 1:N.

Each template (an ISO/IEC 19794-2 record as the device sent it) is one row,
AES-GCM-encrypted under the verifier's enrollment key with the subject id as
associated data, so a row moved to another subject does not decrypt. The key
lives in its own 0600 file (``enrollment.key`` beside the PKI by default),
never in the database.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass

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


def associated_data(subject_id: str) -> bytes:
    """What a template row is sealed with besides its plaintext: its subject (a row moved to another does not open)."""
    return subject_id.encode()


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
            sealed = self._aead.encrypt(nonce, record, associated_data(subject_id))
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
            out.extend(decode(self._aead.decrypt(nonce, sealed, associated_data(subject_id))))
        return out

    def all(self) -> Iterator[tuple[str, FingerprintTemplate]]:
        for subject_id, nonce, sealed in self.conn.execute("SELECT subject_id, nonce, ciphertext FROM enrollments"):
            for template in decode(self._aead.decrypt(nonce, sealed, associated_data(subject_id))):
                yield subject_id, template
