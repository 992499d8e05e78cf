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

# Where each kind of enrollment is kept (verifier.enrollments, verifier.faces, verifier.sensor_prints).
# Read here by name: the operator's command line has no enrollment key, which those stores need
# to be built, and must never make one just to ask whether a subject exists.
ENROLLMENT_TABLES = {"finger": "enrollments", "face": "face_enrollments", "sensor": "sensor_enrollments"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS subject_groups (
    subject_id TEXT PRIMARY KEY,
    group_name TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS subject_groups_nocase ON subject_groups (subject_id COLLATE NOCASE);
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

    def names(self) -> set[str]:
        """The groups some subject is in, and ``default`` (which every subject without a recorded group is in)."""
        rows = self.conn.execute("SELECT DISTINCT group_name FROM subject_groups")
        return {DEFAULT_GROUP} | {str(r[0]) for r in rows}

    def members(self, subject_ids: Iterable[str], groups: frozenset[str]) -> set[str]:
        """Those of ``subject_ids`` that are in one of ``groups`` (one query for the lot)."""
        recorded = dict(self.conn.execute("SELECT subject_id, group_name FROM subject_groups").fetchall())
        return {s for s in subject_ids if recorded.get(s, DEFAULT_GROUP) in groups}


def enrolled_subjects(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """Every enrolled subject and what it is enrolled with (finger, face, sensor).

    What the operator's commands check a subject id against: a rule set for an id
    nobody is enrolled under (a typo) protects nobody and says nothing.
    """
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    found: dict[str, list[str]] = {}
    for kind, table in ENROLLMENT_TABLES.items():
        if table in tables:
            for (subject_id,) in conn.execute(f"SELECT DISTINCT subject_id FROM {table}"):  # noqa: S608 (constant)
                found.setdefault(str(subject_id), []).append(kind)
    return found


def is_enrolled(conn: sqlite3.Connection, subject_id: str) -> bool:
    """The subject has a finger, a face or a sensor print enrolled (the verifier's own test, without its key)."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return any(
        conn.execute(f"SELECT 1 FROM {table} WHERE subject_id = ? LIMIT 1", (subject_id,)).fetchone()  # noqa: S608
        for table in ENROLLMENT_TABLES.values()
        if table in tables
    )


def same_but_for_case(conn: sqlite3.Connection, subject_id: str) -> bool:
    """Another subject (enrolled, or with a group recorded) has this id but for letter case ("Alice", "alice").

    The verifier keeps ids exact, but people, door controllers and directories
    reading its answers often do not: a second subject under a case variant of an
    enrolled id would read as that person. Ids are ASCII (protocol.endpoints.SUBJECT_ID),
    so NOCASE is the whole folding. Each table has an index under NOCASE (``*_nocase``), so this is
    one index seek per table, not a scan of every enrollment on each first enrollment.
    """
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return any(
        conn.execute(
            f"SELECT 1 FROM {table} WHERE subject_id = ? COLLATE NOCASE AND subject_id != ? LIMIT 1",  # noqa: S608
            (subject_id, subject_id),
        ).fetchone()
        for table in ("subject_groups", *ENROLLMENT_TABLES.values())
        if table in tables
    )
