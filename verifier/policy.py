"""What a device may ask, and how often a subject may fail: access rules and lockouts.

Access rules: per device, the operations it may call (enroll, verify,
identify); a device without a rule may call all of them (a development
default; a production site sets rules at provisioning). Anything else is a 403,
audited.

Lockouts: after ``max_failures`` rejected verifications in a row a subject is
locked for ``base * 2**k`` seconds, k counting the lockouts before it, so a
guessing attack slows down exponentially; a success resets the count.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

OPERATIONS = ("enroll", "verify", "identify")

SCHEMA = """
CREATE TABLE IF NOT EXISTS device_rules (
    device_id  TEXT PRIMARY KEY,
    operations TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS subject_failures (
    subject_id   TEXT PRIMARY KEY,
    failures     INTEGER NOT NULL,
    lockouts     INTEGER NOT NULL,
    locked_until REAL NOT NULL
);
"""


@dataclass
class AccessRules:
    conn: sqlite3.Connection

    def __post_init__(self) -> None:
        self.conn.executescript(SCHEMA)

    def set(self, device_id: str, operations: list[str]) -> None:
        unknown = set(operations) - set(OPERATIONS)
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}: use {', '.join(OPERATIONS)}")
        self.conn.execute(
            "INSERT INTO device_rules (device_id, operations) VALUES (?, ?) "
            "ON CONFLICT(device_id) DO UPDATE SET operations = excluded.operations",
            (device_id, ",".join(operations)),
        )

    def allows(self, device_id: str, operation: str) -> bool:
        row = self.conn.execute("SELECT operations FROM device_rules WHERE device_id = ?", (device_id,)).fetchone()
        return row is None or operation in row[0].split(",")


@dataclass
class Lockouts:
    conn: sqlite3.Connection
    max_failures: int = 5
    base_s: float = 30.0

    def __post_init__(self) -> None:
        self.conn.executescript(SCHEMA)

    def locked_for(self, subject_id: str, now: float | None = None) -> float:
        """Seconds the subject stays locked (0 when not locked)."""
        row = self.conn.execute(
            "SELECT locked_until FROM subject_failures WHERE subject_id = ?", (subject_id,)
        ).fetchone()
        return max(0.0, row[0] - (now or time.time())) if row else 0.0

    def failures(self, subject_id: str) -> int:
        row = self.conn.execute("SELECT failures FROM subject_failures WHERE subject_id = ?", (subject_id,)).fetchone()
        return int(row[0]) if row else 0

    def record(self, subject_id: str, success: bool, now: float | None = None) -> float:
        """Count an outcome (only while not locked); the lockout it starts, in seconds (0 for none)."""
        now = now or time.time()
        row = self.conn.execute(
            "SELECT failures, lockouts FROM subject_failures WHERE subject_id = ?", (subject_id,)
        ).fetchone()
        failures, lockouts = row if row else (0, 0)
        if success:
            failures, until = 0, 0.0
        else:
            failures += 1
            until = 0.0
            if failures >= self.max_failures:
                until = now + self.base_s * 2**lockouts
                lockouts, failures = lockouts + 1, 0
        self.conn.execute(
            "INSERT INTO subject_failures (subject_id, failures, lockouts, locked_until) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(subject_id) DO UPDATE SET failures = excluded.failures, lockouts = excluded.lockouts, "
            "locked_until = excluded.locked_until",
            (subject_id, failures, lockouts, until),
        )
        return max(0.0, until - now)
