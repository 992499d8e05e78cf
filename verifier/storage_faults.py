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

# sqlite's primary result codes (the low byte of an extended code) of a database file that cannot be used as it
# is: BUSY 5, LOCKED 6, READONLY 8, IOERR 10, CORRUPT 11, FULL 13, CANTOPEN 14, PROTOCOL 15 (a WAL lock race),
# NOTADB 26.
STORAGE_RESULT_CODES = frozenset({5, 6, 8, 10, 11, 13, 14, 15, 26})


def primary_code(exc: sqlite3.Error) -> int:
    """sqlite's primary result code of ``exc`` (the low byte of its extended code); 0 when it carries none."""
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF


def is_storage_fault(exc: BaseException) -> bool:
    """A fault of the database's storage (full, read-only, I/O, locked, damaged), not a bug of ours.

    By sqlite's result code, not by the exception's class: a syntax error, "no such table" or "no such
    column" are OperationalErrors too, and they are the verifier's own mistakes (500 ``internal``, with
    their traceback), as are IntegrityError and ProgrammingError.
    """
    return isinstance(exc, sqlite3.DatabaseError) and primary_code(exc) in STORAGE_RESULT_CODES


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
