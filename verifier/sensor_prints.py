"""Which subjects are enrolled on which device's match-on-sensor reader (a print's hash, never the print).

Its own module because both the sensor routes (:mod:`verifier.assertions`)
and the template routes (:mod:`verifier.biometric`) ask it: a subject enrolled
only on a sensor is an enrolled subject, so adding templates or a face to it
needs that subject's session token like any other.
"""

from __future__ import annotations

import sqlite3
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS sensor_enrollments (
    subject_id    TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    driver        TEXT NOT NULL,
    reader        TEXT NOT NULL,
    print_hash    TEXT NOT NULL,
    enrolled_at   REAL NOT NULL,
    PRIMARY KEY (subject_id, device_id, driver, reader)
);
CREATE INDEX IF NOT EXISTS sensor_enrollments_nocase ON sensor_enrollments (subject_id COLLATE NOCASE);
CREATE TABLE IF NOT EXISTS portable_grants (
    subject_id    TEXT PRIMARY KEY,     -- the operator's `subject portable ID`: one portable enrollment after a
    granted_at    REAL NOT NULL         -- sensor's accept, for a subject with no finger template and no face
);
"""


class SensorPrints:
    """One row per (subject, device, reader): the hash of the print the sensor keeps for the subject."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.executescript(SCHEMA)

    def exists(self, subject: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM sensor_enrollments WHERE subject_id = ? LIMIT 1", (subject,))
        return row.fetchone() is not None

    def print_hash(self, subject: str, device_id: str, driver: str, reader: str) -> str | None:
        row = self.conn.execute(
            "SELECT print_hash FROM sensor_enrollments WHERE subject_id = ? AND device_id = ? AND driver = ? "
            "AND reader = ?",
            (subject, device_id, driver, reader),
        ).fetchone()
        return None if row is None else str(row[0])

    def record(self, subject: str, device_id: str, driver: str, reader: str, print_hash: str) -> None:
        self.conn.execute(
            "INSERT INTO sensor_enrollments (subject_id, device_id, driver, reader, print_hash, enrolled_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(subject_id, device_id, driver, reader) "
            "DO UPDATE SET print_hash = excluded.print_hash, enrolled_at = excluded.enrolled_at",
            (subject, device_id, driver, reader, print_hash, time.time()),
        )

    def grant_portable(self, subject: str, granted: bool = True) -> None:
        """The operator's one-time grant (``capture-verifier subject portable``): set, or withdrawn."""
        if granted:
            self.conn.execute(
                "INSERT INTO portable_grants (subject_id, granted_at) VALUES (?, ?) "
                "ON CONFLICT(subject_id) DO UPDATE SET granted_at = excluded.granted_at",
                (subject, time.time()),
            )
        else:
            self.conn.execute("DELETE FROM portable_grants WHERE subject_id = ?", (subject,))

    def portable_granted(self, subject: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM portable_grants WHERE subject_id = ?", (subject,))
        return row.fetchone() is not None

    def use_portable_grant(self, subject: str) -> bool:
        """Spend the grant (one portable enrollment); False when there was none."""
        return self.conn.execute("DELETE FROM portable_grants WHERE subject_id = ?", (subject,)).rowcount > 0
