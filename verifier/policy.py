"""What a device may ask, and how often a subject may fail: access rules and lockouts.

Access rules: per device, the operations it may call (enroll, verify,
identify) and the groups of subjects it may act on (a lobby kiosk verifies
staff and visitors, the HR desk enrolls staff). A device without a rule may call
every operation on every group (a development default; a production site sets
rules at provisioning). Anything else is a 403, audited.

Rates: per device and per subject, requests per minute; a breach locks the
device or subject for a doubling time.

Lockouts: after ``max_failures`` rejected verifications in a row a subject is
locked for ``base * 2**k`` seconds, k counting the lockouts before it, so a
guessing attack slows down exponentially; a success resets the count.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import deque
from dataclasses import dataclass

OPERATIONS = ("enroll", "verify", "identify")
GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS device_rules (
    device_id  TEXT PRIMARY KEY,
    operations TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS device_groups (
    device_id  TEXT PRIMARY KEY,
    groups     TEXT NOT NULL               -- comma list of subject groups; no row: any group
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

    def operations(self, device_id: str) -> list[str]:
        row = self.conn.execute("SELECT operations FROM device_rules WHERE device_id = ?", (device_id,)).fetchone()
        return list(OPERATIONS) if row is None else [op for op in row[0].split(",") if op]

    def set_groups(self, device_id: str, groups: list[str] | None) -> None:
        """The subject groups a device may act on; None lifts the restriction (any group)."""
        if groups is None:
            self.conn.execute("DELETE FROM device_groups WHERE device_id = ?", (device_id,))
            return
        bad = [g for g in groups if not GROUP_NAME.fullmatch(g)]
        if bad:
            raise ValueError(f"bad group names {bad}: use 1 to 64 letters, digits, '.', '_' or '-'")
        self.conn.execute(
            "INSERT INTO device_groups (device_id, groups) VALUES (?, ?) "
            "ON CONFLICT(device_id) DO UPDATE SET groups = excluded.groups",
            (device_id, ",".join(sorted(set(groups)))),
        )

    def groups(self, device_id: str) -> frozenset[str] | None:
        """The groups the device may act on (None: any group)."""
        row = self.conn.execute("SELECT groups FROM device_groups WHERE device_id = ?", (device_id,)).fetchone()
        return None if row is None else frozenset(g for g in row[0].split(",") if g)

    def allows_group(self, device_id: str, group: str) -> bool:
        allowed = self.groups(device_id)
        return allowed is None or group in allowed


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


@dataclass
class RateLimit:
    """At most ``per_minute`` requests per key (a device, a subject); each breach locks the key for a doubling time.

    In memory (a restart forgets it): it guards the verifier's CPU and a subject's
    lockout counter against one misbehaving or stolen device, or many devices
    guessing one subject; it is not a long-term record (the lockouts are).
    """

    per_minute: int = 60
    base_s: float = 30.0

    def __post_init__(self) -> None:
        self._recent: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._breaches: dict[str, int] = {}

    def check(self, key: str, now: float | None = None) -> float:
        """Seconds the key must wait (0: go ahead, and the request is counted)."""
        now = now or time.time()
        wait = self._locked_until.get(key, 0.0) - now
        if wait > 0:
            return wait
        recent = [t for t in self._recent.get(key, []) if t > now - 60.0]
        if len(recent) >= self.per_minute:
            breaches = self._breaches.get(key, 0)
            self._breaches[key] = breaches + 1
            self._locked_until[key] = now + self.base_s * 2**breaches
            self._recent[key] = []
            return self.base_s * 2**breaches
        recent.append(now)
        self._recent[key] = recent
        return 0.0


@dataclass
class WorkLimit:
    """At most ``per_minute`` units of work per key (a device) in any minute: template comparisons, not requests.

    A verification against a subject with four templates costs four; an
    identification with ten views against a gallery of a thousand costs ten
    thousand. So a device that sends heavy requests runs out after a few, while a
    kiosk verifying people all day never notices. One request never costs more
    than the whole allowance (it would wait forever).
    """

    per_minute: int = 20000

    def __post_init__(self) -> None:
        self._spent: dict[str, deque[tuple[float, int]]] = {}

    def spend(self, key: str, cost: int, now: float | None = None) -> float:
        """Seconds to wait before this much work is allowed (0: go ahead, and it is counted)."""
        now = now or time.time()
        cost = min(max(cost, 1), self.per_minute)
        spent = self._spent.setdefault(key, deque())
        while spent and spent[0][0] <= now - 60.0:
            spent.popleft()
        excess = sum(c for _, c in spent) + cost - self.per_minute
        if excess > 0:
            freed = 0
            for when, amount in spent:
                freed += amount
                if freed >= excess:
                    return when + 60.0 - now
        spent.append((now, cost))
        return 0.0
