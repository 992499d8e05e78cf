"""Which group each subject belongs to, so that access rules can name groups of people.

A subject's group is set at its first enrollment (the request's ``group``, or
``default``) and changed only by the operator (`capture-verifier subject group`):
a device cannot move a person into a group it may act on by enrolling them again.
A subject enrolled before groups existed is in ``default``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_GROUP = "default"

SCHEMA = """
CREATE TABLE IF NOT EXISTS subject_groups (
    subject_id TEXT PRIMARY KEY,
    group_name TEXT NOT NULL
);
"""


@dataclass
class SubjectGroups:
    conn: sqlite3.Connection

    def __post_init__(self) -> None:
        self.conn.executescript(SCHEMA)

    def recorded(self, subject_id: str) -> str | None:
        """The subject's recorded group (None: none recorded yet)."""
        row = self.conn.execute("SELECT group_name FROM subject_groups WHERE subject_id = ?", (subject_id,)).fetchone()
        return None if row is None else str(row[0])

    def group_of(self, subject_id: str) -> str:
        return self.recorded(subject_id) or DEFAULT_GROUP

    def assign(self, subject_id: str, group: str) -> None:
        self.conn.execute(
            "INSERT INTO subject_groups (subject_id, group_name) VALUES (?, ?) "
            "ON CONFLICT(subject_id) DO UPDATE SET group_name = excluded.group_name",
            (subject_id, group),
        )

    def members(self, subject_ids: Iterable[str], groups: frozenset[str]) -> set[str]:
        """Those of ``subject_ids`` that are in one of ``groups`` (one query for the lot)."""
        recorded = dict(self.conn.execute("SELECT subject_id, group_name FROM subject_groups").fetchall())
        return {s for s in subject_ids if recorded.get(s, DEFAULT_GROUP) in groups}
