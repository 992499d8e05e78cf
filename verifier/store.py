"""The verifier's sqlite database: one file, WAL mode, the schema in one place.

Every table the verifier keeps lives here so that the schema is readable at a
glance; the classes that use each table (registry, tokens, idempotency,
challenges) are in their own modules.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token_hash  TEXT PRIMARY KEY,          -- SHA-256 of the token; the token itself is never stored
    device_id   TEXT NOT NULL,
    expires_at  REAL NOT NULL,
    used_at     REAL,
    revoked_at  REAL                       -- the operator revoked it unused (`token revoke`, `device revoke`)
);
CREATE TABLE IF NOT EXISTS devices (
    device_id   TEXT PRIMARY KEY,
    status      TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    created_at  REAL NOT NULL,
    revoked_at  REAL
);
CREATE TABLE IF NOT EXISTS certificates (
    serial        TEXT PRIMARY KEY,        -- hex
    device_id     TEXT NOT NULL REFERENCES devices(device_id),
    spki_sha256   TEXT NOT NULL,
    not_after     REAL NOT NULL,
    issued_at     REAL NOT NULL,
    superseded_at REAL
);
CREATE TABLE IF NOT EXISTS idempotency (
    principal     TEXT NOT NULL,           -- device id, or the token hash for enrollment
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        INTEGER NOT NULL,
    content_type  TEXT NOT NULL,
    body          BLOB NOT NULL,
    created_at    REAL NOT NULL,
    PRIMARY KEY (principal, key)
);
CREATE TABLE IF NOT EXISTS nonces (
    nonce       TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    expires_at  REAL NOT NULL,
    used_at     REAL
);
"""


def open_database(path: Path) -> sqlite3.Connection:
    """Open (and create) the database; autocommit mode, explicit transactions where needed.

    ``synchronous=FULL``, as the agent's outbox: a commit is on disk before the answer that reports it
    leaves. With NORMAL (WAL's usual trade) a power cut could take back the last commits after they
    were answered: audit events the agent was told were stored (it then deletes them from its outbox,
    so they were lost on both sides), an enrollment the person saw succeed, a consumed nonce or
    one-time token (usable again), the failures that count toward a lockout.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _create_private(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(SCHEMA)
    if "revoked_at" not in {row[1] for row in conn.execute("PRAGMA table_info(tokens)")}:
        conn.execute("ALTER TABLE tokens ADD COLUMN revoked_at REAL")  # databases from before tokens were revocable
    return conn


def give_to_folder_owner(fd: int, folder: Path) -> None:
    """A file root makes in the verifier's folder (the database, the enrollment key, serve's lock) is the folder
    owner's, as sqlite does with its ``-wal``.

    Why: an installer's `sudo capture-verifier token new` before the first `serve` made a root-owned
    ``verifier.sqlite`` (0600) in ``/var/lib/capture-verifier``, and the unit's `serve`, as the verifier's
    user, could then not open it. Only root may give a file away; anyone else makes it their own, as before.
    """
    if os.geteuid() != 0:
        return
    owner = os.stat(folder)
    if owner.st_uid != 0:
        os.fchown(fd, owner.st_uid, owner.st_gid)


def _create_private(path: Path) -> None:
    """Make the database file 0600 before sqlite opens it, whatever the umask.

    sqlite creates the ``-wal`` and ``-shm`` files with the database file's mode, so
    they are 0600 too (a chmod after the WAL was switched on left them 0644 under
    umask 022). Companions an older version left behind are made 0600 as well.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            give_to_folder_owner(fd, path.parent)
        finally:
            os.close(fd)
    for file in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))):
        if file.exists():
            file.chmod(0o600)
