"""Step-up (RFC 9470): when one finger is not enough, ask for a second one.

Reasons to ask, even after a match: a weak margin over the threshold, recent
failures for the subject, a subject marked high-risk, or the first verification
ever made from this device. The answer is HTTP 401 with
``WWW-Authenticate: Bearer error="insufficient_user_authentication"`` and
``acr_values="second_finger"``; the problem body carries a ``step_up`` id. The
device sends a second finger with that id inside the same session; it passes
when it matches the subject and is not the same finger as the first.

Pending step-ups live in memory with a short lifetime (``step_up_ttl_s``; the
first capture's template is kept only there, never in the database); a restart
of the verifier means the device asks again from the start. An expired one is
dropped by the app's housekeeping (:meth:`StepUpPolicy.expire`, at most one
housekeeping interval after it expired, whether requests come or not), not
only when the next step-up is opened: an abandoned step-up holds a person's
first template, which must not outlive the step-up by more than that.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field

ACR_SECOND_FINGER = "second_finger"
MARGIN = 1.25  # a score below threshold * MARGIN is a weak match
PENDING_TTL_S = 120.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS subject_risk (
    subject_id TEXT PRIMARY KEY,
    high_risk  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS device_first_use (
    device_id  TEXT PRIMARY KEY,
    first_at   REAL NOT NULL
);
"""


@dataclass
class Pending:
    device_id: str
    subject_id: str
    first_records: list[bytes]
    reasons: list[str]
    expires_at: float
    acr: str = ""  # the acr_values asked: which factor answers it (a face's step-up asks a finger)


@dataclass
class StepUpPolicy:
    conn: sqlite3.Connection
    first_use: bool = True
    ttl_s: float = PENDING_TTL_S  # a pending step-up's lifetime (settings: step_up_ttl_s)
    pending: dict[str, Pending] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.conn.executescript(SCHEMA)

    def mark_high_risk(self, subject_id: str, high_risk: bool = True) -> None:
        self.conn.execute(
            "INSERT INTO subject_risk (subject_id, high_risk) VALUES (?, ?) "
            "ON CONFLICT(subject_id) DO UPDATE SET high_risk = excluded.high_risk",
            (subject_id, int(high_risk)),
        )

    def reasons(self, device_id: str, subject_id: str, score: float, threshold: float, failures: int) -> list[str]:
        found = []
        if score < threshold * MARGIN:
            found.append("weak_margin")
        if failures > 0:
            found.append("recent_failures")
        row = self.conn.execute("SELECT high_risk FROM subject_risk WHERE subject_id = ?", (subject_id,)).fetchone()
        if row and row[0]:
            found.append("high_risk_subject")
        if (
            self.first_use
            and not self.conn.execute("SELECT 1 FROM device_first_use WHERE device_id = ?", (device_id,)).fetchone()
        ):
            found.append("first_use_of_device")
        return found

    def open(self, device_id: str, subject_id: str, records: list[bytes], reasons: list[str], acr: str) -> str:
        """A pending step-up asking ``acr``: kept so the answer is checked against what was asked, not guessed."""
        now = time.time()
        self.expire(now)
        step_id = secrets.token_urlsafe(16)
        self.pending[step_id] = Pending(device_id, subject_id, records, reasons, now + self.ttl_s, acr)
        return step_id

    def expire(self, now: float | None = None) -> int:
        """Drop the pending step-ups past their lifetime; how many were dropped.

        Why not only at the next :meth:`open`: an abandoned step-up keeps the person's
        first capture (a template) and who was asked what, and on a quiet verifier the
        next step-up may be hours away. The app's housekeeping calls this (verifier.app).
        """
        now = time.time() if now is None else now
        expired = [step for step, pending in self.pending.items() if pending.expires_at <= now]
        for step in expired:
            del self.pending[step]
        return len(expired)

    def forget(self, gone: Callable[[str], bool]) -> int:
        """Drop the pending step-ups of subjects ``gone`` says were removed (their first capture is a template
        of that person, kept only here); how many were dropped."""
        dropped = [step for step, pending in self.pending.items() if gone(pending.subject_id)]
        for step in dropped:
            del self.pending[step]
        return len(dropped)

    def take(self, step_id: str, device_id: str, subject_id: str) -> Pending | None:
        """The pending step-up, used up, if it is this device's for this subject and still live.

        Another device's or subject's attempt leaves it pending: a step-up id seen
        elsewhere can neither be used nor cancelled from there.
        """
        found = self.pending.get(step_id)
        if found is None or found.device_id != device_id or found.subject_id != subject_id:
            return None
        del self.pending[step_id]
        return found if found.expires_at >= time.time() else None

    def give_back(self, step_id: str, pending: Pending) -> None:
        """A taken step-up whose request was not decided (the verifier was busy): pending again."""
        self.pending[step_id] = pending

    def completed(self, device_id: str) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO device_first_use (device_id, first_at) VALUES (?, ?)", (device_id, time.time())
        )
