"""Which group each subject belongs to, so that access rules can name groups of people.

A subject's group is set at its first enrollment (the request's ``group``, or
``default``) and changed only by the operator (`capture-verifier subject group`):
a device cannot move a person into a group it may act on by enrolling them again.
A subject enrolled before groups existed is in ``default``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field

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
CREATE TABLE IF NOT EXISTS removal_epoch (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL                 -- counts `subject remove`s: a running server reloads what it keeps
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


# What a removal deletes besides the enrollments: per-subject state that only means something while the subject's
# templates exist. Live session and enrollment tokens (a token of the removed person would add templates to
# whoever enrolls the id next) and the lockout counts (failures against templates that are gone).
# (portable_grants: the operator's grant of one portable enrollment to a sensor-only subject, verifier.sensor_prints;
# dropped with the prints it was for, or it would pass to whoever enrolls the id on a sensor next)
SUBJECT_STATE_TABLES = {"session_tokens": "session_tokens", "lockout_rows": "lockouts",
                        "portable_grants": "portable_grants"}
# The operator's rules on the id (verifier.subjects, verifier.stepup, verifier.faces): kept unless ``forget``.
RULE_DELETES = {
    "group": ("subject_groups", "DELETE FROM subject_groups WHERE subject_id = ?"),
    "high_risk": ("subject_risk", "DELETE FROM subject_risk WHERE subject_id = ?"),
    "factor_rule": ("required_factors", "DELETE FROM required_factors WHERE scope = 'subject' AND name = ?"),
}


@dataclass(frozen=True)
class Removed:
    """Counts of what :func:`remove_subject` deleted (rows, never their content)."""

    enrollments: dict[str, int]  # per modality: finger and face templates, sensor print records
    state: dict[str, int]  # session tokens, lockout rows
    rules: dict[str, int] = field(default_factory=dict)  # group, high_risk, factor_rule (``forget`` only)

    @property
    def anything(self) -> bool:
        return any(self.enrollments.values()) or any(self.state.values()) or any(self.rules.values())


def held_rules(conn: sqlite3.Connection, subject_id: str) -> dict[str, str]:
    """The operator's rules naming the id: its recorded group, a high-risk mark, its own factor rule."""
    tables = _tables(conn)
    held: dict[str, str] = {}
    queries = {
        "group": ("subject_groups", "SELECT group_name FROM subject_groups WHERE subject_id = ?"),
        "high_risk": ("subject_risk", "SELECT CASE WHEN high_risk THEN 'on' ELSE 'off' END FROM subject_risk "
                      "WHERE subject_id = ?"),  # a mark cleared (`--off`) is still a row naming the id
        "factor_rule": ("required_factors",
                        "SELECT factors FROM required_factors WHERE scope = 'subject' AND name = ?"),
    }
    for name, (table, query) in queries.items():
        row = conn.execute(query, (subject_id,)).fetchone() if table in tables else None
        if row is not None:
            held[name] = str(row[0])
    return held


def remove_subject(conn: sqlite3.Connection, subject_id: str, *, forget: bool = False) -> Removed:
    """Delete everything biometric held for ``subject_id``, in one transaction; ``forget`` drops its rules too.

    Deleted: its finger and face templates, its match-on-sensor print records, its live
    session and enrollment tokens and its lockout counts: afterwards the id is not
    enrolled, and its next enrollment is a first one. Kept unless ``forget``: the
    operator's rules on the id (group, high-risk mark, factor rule), so that a person
    re-enrolling (a print that became unreadable) lands under the same rules; with
    ``forget`` nothing naming the id is left but the audit trail, which is evidence
    and holds ids and outcomes, never a template.

    The removal epoch moves in the same transaction: a running ``serve`` keeps the
    galleries in memory, and reloads them when it sees the epoch move, at its next
    biometric request (:meth:`verifier.biometric.BiometricRoutes.sync_removals`).
    """
    conn.executescript(SCHEMA)  # before the transaction: executescript commits whatever is open
    tables = _tables(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        enrollments = {kind: _delete(conn, tables, table, "DELETE FROM {} WHERE subject_id = ?", subject_id)
                       for kind, table in ENROLLMENT_TABLES.items()}
        state = {name: _delete(conn, tables, table, "DELETE FROM {} WHERE subject_id = ?", subject_id)
                 for name, table in SUBJECT_STATE_TABLES.items()}
        rules: dict[str, int] = {}
        if forget:
            for name, (table, statement) in RULE_DELETES.items():
                rules[name] = conn.execute(statement, (subject_id,)).rowcount if table in tables else 0
        conn.execute("INSERT INTO removal_epoch (id, epoch) VALUES (1, 1) "
                     "ON CONFLICT(id) DO UPDATE SET epoch = epoch + 1")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return Removed(enrollments, state, rules)


def removal_epoch(conn: sqlite3.Connection) -> int:
    """How many removals the database has seen (0: none); a server compares it with the one it loaded under."""
    row = conn.execute("SELECT epoch FROM removal_epoch WHERE id = 1").fetchone()
    return 0 if row is None else int(row[0])


def _delete(conn: sqlite3.Connection, tables: set[str], table: str, statement: str, subject_id: str) -> int:
    if table not in tables:
        return 0
    return conn.execute(statement.format(table), (subject_id,)).rowcount


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


@dataclass(frozen=True)
class Seen:
    """What a template route's handler saw, in its transaction: the removal epoch and, per enrollment table
    (ENROLLMENT_TABLES' kinds), the highest row id then (0: no row).

    Why the row ids: a subject removed while its request was matched can be enrolled
    again, by another person, before the decision; the id is then enrolled, but not
    with the templates the request was matched on. A subject holding a row at or below
    the handler's mark still holds what was there when it was matched; one whose rows
    are all above it was enrolled anew (:func:`held_since`).
    """

    epoch: int
    marks: dict[str, int]


def seen_now(conn: sqlite3.Connection, epoch: int) -> Seen:
    """``epoch`` with each enrollment table's highest row id (one statement; the tables exist in a server)."""
    columns = ", ".join(f"(SELECT COALESCE(MAX(rowid), 0) FROM {table})"  # noqa: S608 (constant names)
                        for table in ENROLLMENT_TABLES.values())
    row = conn.execute(f"SELECT {columns}").fetchone()
    return Seen(epoch, {kind: int(mark) for kind, mark in zip(ENROLLMENT_TABLES, row, strict=True)})


def held_since(conn: sqlite3.Connection, subject_id: str, seen: Seen, kinds: Iterable[str]) -> bool:
    """The subject still holds a row of ``kinds`` (finger, face, sensor) that was there at ``seen``.

    Finger and face rows are AUTOINCREMENT (an id is never used twice), so a row at or
    below the mark was stored before the handler ran. A sensor print record's rowid can be
    used again after the newest records were removed (the table has its own key): a
    sensor-only subject removed and enrolled again meanwhile may read as still held.
    """
    return any(
        conn.execute(f"SELECT 1 FROM {ENROLLMENT_TABLES[kind]} WHERE subject_id = ? AND rowid <= ? "  # noqa: S608
                     "LIMIT 1", (subject_id, seen.marks[kind])).fetchone()
        for kind in kinds
    )
