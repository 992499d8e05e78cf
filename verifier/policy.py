"""What a device may ask, and how often a subject may fail: access rules and lockouts.

Access rules: per device, the operations it may call (enroll, verify,
identify) and the groups of subjects it may act on (a lobby kiosk verifies
staff and visitors, the HR desk enrolls staff). A device without a rule may call
every operation on every group (a development default; a production site sets
rules at provisioning). Anything else is a 403, audited.

Rates: per device (requests, and challenges apart), and per (device, subject)
with a bound per subject across devices that one device cannot reach alone,
per minute; a breach locks the key for a doubling time.

Lockouts: after ``max_failures`` rejected verifications in a row of a subject
on one device, that device is locked out of the subject for ``base * 2**k``
seconds, k counting the lockouts before it, so a guessing attack slows down
exponentially; a success resets the count. One device cannot lock a person out
everywhere: only several devices locked out at once do (:class:`Lockouts`).
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from dataclasses import dataclass

from protocol.endpoints import GROUP_NAME, ID_RULE, OPERATIONS

__all__ = ["GROUP_NAME", "OPERATIONS", "AccessRules", "Lockouts", "RateLimit", "RefusalLimit"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS device_rules (
    device_id  TEXT PRIMARY KEY,
    operations TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS device_groups (
    device_id  TEXT PRIMARY KEY,
    groups     TEXT NOT NULL               -- comma list of subject groups; no row: any group
);
CREATE TABLE IF NOT EXISTS lockouts (
    device_id    TEXT NOT NULL,            -- '*': the subject's failures in a row on any device
    subject_id   TEXT NOT NULL,
    failures     INTEGER NOT NULL,
    lockouts     INTEGER NOT NULL,
    locked_until REAL NOT NULL,
    PRIMARY KEY (device_id, subject_id)
);
CREATE INDEX IF NOT EXISTS lockouts_subject ON lockouts (subject_id, locked_until);
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
            raise ValueError(f"bad group names {bad}: use {ID_RULE}")
        self.conn.execute(
            "INSERT INTO device_groups (device_id, groups) VALUES (?, ?) "
            "ON CONFLICT(device_id) DO UPDATE SET groups = excluded.groups",
            (device_id, ",".join(sorted(set(groups)))),
        )

    def groups(self, device_id: str) -> frozenset[str] | None:
        """The groups the device may act on (None: any group)."""
        row = self.conn.execute("SELECT groups FROM device_groups WHERE device_id = ?", (device_id,)).fetchone()
        return None if row is None else frozenset(g for g in row[0].split(",") if g)

    def device_ids(self) -> set[str]:
        """Every device id some rule names: `device list` shows them even when no such device provisioned."""
        rows = self.conn.execute("SELECT device_id FROM device_rules UNION SELECT device_id FROM device_groups")
        return {str(r[0]) for r in rows}

    def allows_group(self, device_id: str, group: str) -> bool:
        allowed = self.groups(device_id)
        return allowed is None or group in allowed


@dataclass
class Lockouts:
    """Failed verifications, counted per (device, subject), with a bound across devices.

    Policy (README, "Lockouts"): after ``max_failures`` rejections in a row of one
    subject *on one device*, that device may not claim the subject for
    ``base * 2**k`` seconds (k: that device's earlier lockouts on the subject); a
    success on that device resets its count. Junk claims from one device (broken,
    stolen, or an attacker's) therefore lock only that device out of that subject,
    never the person at every other kiosk. The bound across devices: while
    ``devices_to_lock_all`` devices are locked out on the same subject at once (a
    distributed guess), the subject is locked for every device.

    The row ``device_id = '*'`` counts the subject's failures in a row on any
    device, for the step-up policy ("recent failures": a second finger is asked
    for, nobody is locked out).
    """

    conn: sqlite3.Connection
    max_failures: int = 5
    base_s: float = 30.0
    devices_to_lock_all: int = 3

    def __post_init__(self) -> None:
        self.conn.executescript(SCHEMA)

    def locked_for(self, device_id: str, subject_id: str, now: float | None = None) -> float:
        """Seconds this device stays locked out of the subject (0 when not locked)."""
        now = now or time.time()
        rows = self.conn.execute(
            "SELECT device_id, locked_until FROM lockouts WHERE subject_id = ? AND device_id != '*' "
            "AND locked_until > ? ORDER BY locked_until DESC",
            (subject_id, now),
        ).fetchall()
        own = next((until - now for device, until in rows if device == device_id), 0.0)
        # Locked for all while devices_to_lock_all devices are: until the k-th latest lock ends.
        everyone = rows[self.devices_to_lock_all - 1][1] - now if len(rows) >= self.devices_to_lock_all else 0.0
        return max(0.0, own, everyone)

    def locked_subjects(self, device_id: str, now: float | None = None) -> set[str]:
        """Every subject this device is locked out of now (its own lockouts, and subjects locked for all).

        One query for an identification's candidates: a 1:N answer naming a subject
        the device may not claim would give it back the oracle its lockout took away.
        """
        now = now or time.time()
        rows = self.conn.execute(
            "SELECT subject_id, device_id FROM lockouts WHERE device_id != '*' AND locked_until > ?", (now,)
        ).fetchall()
        locked_devices: dict[str, int] = {}
        own = set()
        for subject, device in rows:
            locked_devices[subject] = locked_devices.get(subject, 0) + 1
            if device == device_id:
                own.add(subject)
        return own | {s for s, n in locked_devices.items() if n >= self.devices_to_lock_all}

    def failures(self, subject_id: str) -> int:
        """The subject's rejections in a row, on any device (for step-up, not for locking)."""
        row = self.conn.execute(
            "SELECT failures FROM lockouts WHERE device_id = '*' AND subject_id = ?", (subject_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    def _store(self, device_id: str, subject_id: str, failures: int, lockouts: int, until: float) -> None:
        self.conn.execute(
            "INSERT INTO lockouts (device_id, subject_id, failures, lockouts, locked_until) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(device_id, subject_id) DO UPDATE SET failures = excluded.failures, "
            "lockouts = excluded.lockouts, locked_until = excluded.locked_until",
            (device_id, subject_id, failures, lockouts, until),
        )

    def record(self, device_id: str, subject_id: str, success: bool, now: float | None = None) -> float:
        """Count an outcome (only while not locked); the lockout of this device it starts, in seconds (0: none)."""
        now = now or time.time()
        counts = dict.fromkeys((device_id, "*"), (0, 0))
        for device, failed, locks in self.conn.execute(
            "SELECT device_id, failures, lockouts FROM lockouts WHERE subject_id = ? AND device_id IN (?, '*')",
            (subject_id, device_id),
        ):
            counts[device] = (int(failed), int(locks))
        (failures, lockouts), (anywhere, _) = counts[device_id], counts["*"]
        until = 0.0
        if success:
            if failures == 0 and anywhere == 0:
                return 0.0  # nothing to reset: the common case costs one read
            failures, anywhere = 0, 0
        else:
            failures, anywhere = failures + 1, anywhere + 1
            if failures >= self.max_failures:
                until = now + self.base_s * 2**lockouts
                lockouts, failures = lockouts + 1, 0
        self._store(device_id, subject_id, failures, lockouts, until)
        self._store("*", subject_id, anywhere, 0, 0.0)
        return max(0.0, until - now)


@dataclass
class _MinuteWindow:
    """Events per key in the last minute, and the doubling lock a key earns when it goes past ``per_minute``.

    The one mechanism under :class:`RateLimit` (every request counts) and :class:`RefusalLimit`
    (only refusals count). In memory: a restart forgets it.
    """

    per_minute: int
    base_s: float

    def __post_init__(self) -> None:
        self._recent: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._breaches: dict[str, int] = {}

    def _locked(self, key: str, now: float) -> float:
        return self._locked_until.get(key, 0.0) - now

    def _window(self, key: str, now: float) -> deque[float]:
        recent = self._recent.setdefault(key, deque())
        while recent and recent[0] <= now - 60.0:
            recent.popleft()
        return recent

    def _breach(self, key: str, now: float) -> float:
        """Lock the key for base_s, doubling with each breach; its window starts again. The wait."""
        breaches = self._breaches.get(key, 0)
        self._breaches[key] = breaches + 1
        self._locked_until[key] = now + self.base_s * 2**breaches
        self._recent[key].clear()
        return self.base_s * 2**breaches


@dataclass
class RateLimit(_MinuteWindow):
    """At most ``per_minute`` requests per key (a device, a subject); each breach locks the key for a doubling time.

    In memory (a restart forgets it): it guards the verifier's CPU and a subject's
    lockout counter against one misbehaving or stolen device, or many devices
    guessing one subject; it is not a long-term record (the lockouts are).
    """

    per_minute: int = 60
    base_s: float = 30.0

    def check(self, key: str, now: float | None = None) -> float:
        """Seconds the key must wait (0: go ahead, and the request is counted)."""
        now = now or time.time()
        wait = self._locked(key, now)
        if wait > 0:
            return wait
        recent = self._window(key, now)
        if len(recent) >= self.per_minute:
            return self._breach(key, now)
        recent.append(now)
        return 0.0

    def give_back(self, key: str, when: float) -> None:
        """Un-count the request :meth:`check` counted at ``when`` (its ``now``): one that was never served.

        Nothing when it left the window meanwhile (a minute old, or cleared by a breach). A breach's lock is
        not undone: only a request past the rate earns one, and that request was counted by nobody.
        """
        recent = self._recent.get(key)
        if recent is None:
            return
        for index in range(len(recent) - 1, -1, -1):
            if recent[index] == when:
                del recent[index]
                return


@dataclass
class RefusalLimit(_MinuteWindow):
    """At most ``per_minute`` refused requests per key; then the key waits ``base_s``, doubling with each breach.

    For requests whose refusal is the cheap outcome and whose repetition is the
    cost (EST: a device or a token's holder sending bad certificate requests):
    :meth:`wait` is asked before the request is looked at, :meth:`refused` told
    after it was refused, so the request after the allowance is turned away
    before any of its work. Accepted requests are not counted.
    """

    per_minute: int = 10
    base_s: float = 30.0

    def wait(self, key: str, now: float | None = None) -> float:
        """Seconds the key must wait before a request of it is looked at (0: go ahead)."""
        now = now or time.time()
        wait = self._locked(key, now)
        if wait > 0:
            return wait
        if len(self._window(key, now)) < self.per_minute:
            return 0.0
        return self._breach(key, now)

    def refused(self, key: str, now: float | None = None) -> None:
        """Count a refused request of the key."""
        self._recent.setdefault(key, deque()).append(now or time.time())


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

    def give_back(self, key: str, cost: int) -> None:
        """Un-count the newest charge of ``cost`` (as :meth:`spend` counted it): work charged but never done."""
        cost = min(max(cost, 1), self.per_minute)
        spent = self._spent.get(key, deque())
        for index in range(len(spent) - 1, -1, -1):
            if spent[index][1] == cost:
                del spent[index]
                return
