"""A database that cannot be written while serving: a 503 the device retries, and one line the operator can act on.

Why: a verifier whose disk filled up (its logs, a backup beside the database),
whose file system went read-only after an I/O error, or whose database another
process holds in a long write answered every request with 500 ``internal`` and
logged a traceback per request. The device was told the verifier failed (not to
retry), and the operator had to read tracebacks to learn the disk was full.
Nothing is lost meanwhile: the transaction is rolled back, the device's outbox
keeps its events, and the same request (same Idempotency-Key) succeeds once the
database can be written again.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from verifier.pki_folder import database_error
from verifier.problems import Problem

RETRY_AFTER_S = 10  # a full disk is not freed in a second; a lock held by a backup may be


def is_storage_fault(exc: BaseException) -> bool:
    """A fault of the database's storage (full, read-only, I/O, locked, damaged), not a bug of ours.

    IntegrityError and ProgrammingError are DatabaseErrors too, but they are the verifier's own
    mistakes: they stay 500 ``internal``, with their traceback.
    """
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def storage_problem(database: Path, exc: sqlite3.DatabaseError) -> tuple[Problem, str, str]:
    """The device's 503 problem, and the operator's reason and fix (from the command line's own wording)."""
    operator = database_error(database, exc)
    problem = Problem(
        "storage-unavailable",
        "the verifier cannot store this request now",
        f"retry after {RETRY_AFTER_S} s (the agent does so by itself); if it persists, ask the verifier's "
        "operator: its log says why (storage_refused)",
        headers=((b"retry-after", str(RETRY_AFTER_S).encode()),),
    )
    return problem, str(operator), operator.fix
