"""A consistent copy of the verifier's database, taken while `serve` runs, and its way back in.

Why a command: the database is in WAL mode, so the most recent commits live in
``verifier.sqlite-wal`` until a checkpoint; a ``cp`` of ``verifier.sqlite`` alone
(what a backup script copies) misses them, and a copy of the two files taken
while the server writes can be torn. sqlite's online backup reads one snapshot
under a read transaction (writers go on meanwhile) and writes it as one whole
database file. The copy is made 0600, never over an existing file, checked with
``PRAGMA quick_check`` and flushed to disk before it is reported.

What it does not hold: ``enrollment.key``. The templates in the copy are sealed
under it, and the key is kept apart from the database on purpose (a stolen
backup then reveals no template); it never changes, so one copy of it, kept
elsewhere, serves every backup.

Restoring (:func:`restore`) is a command too, because by hand it has a trap: a
``verifier.sqlite-wal`` left beside the database being replaced is replayed into
the restored file at the next open, and damages it. The command holds the
database's lock (no `serve` runs meanwhile, none starts), checks the backup is a
verifier database whose sealed rows this verifier's key opens, copies it in
whole, flushed, under the name, and keeps the replaced database (its WAL with
it) aside rather than deleting it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from verifier.pki_folder import PKIFolderError, database_error

# sqlite's primary result codes that, during a backup, are the copy's side: FULL 13, READONLY 8, CANTOPEN 14.
# The others (a damaged or locked source) are the database's, said as every command says them.
DESTINATION_CODES = frozenset({8, 13, 14})


@dataclass(frozen=True)
class BackupResult:
    path: Path
    bytes: int
    devices: int
    subjects: int


def open_source(database: Path) -> sqlite3.Connection:
    """The verifier's database, read-only: never made, migrated or written by a backup.

    Why not the commands' own opening: it makes a missing database (and its schema), so a wrong --pki, or
    a missing --config whose db_path serve uses, backed up a new empty database and said it had.
    """
    if not database.is_file():
        raise PKIFolderError(
            f"no verifier database at {database}",
            fix="point --pki at the folder serve uses, and give --config its settings file if it sets db_path",
        )
    try:
        conn = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise database_error(database, exc) from None
    return conn


def back_up(conn: sqlite3.Connection, destination: Path, source: Path) -> BackupResult:
    """Copy the open database ``conn`` (at ``source``) to ``destination`` (a new file), checked and flushed;
    PKIFolderError naming the side at fault if not."""
    if destination.exists() or destination.is_symlink():
        raise PKIFolderError(
            f"{destination} exists: a backup is never written over a file",
            fix="give --to a new file name (e.g. with the date: verifier-$(date +%F).sqlite)",
        )
    if not destination.parent.is_dir():
        raise PKIFolderError(f"{destination.parent} is not a folder", fix="create the folder first, or give --to a "
                             "path in an existing folder")
    try:
        os.close(os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # 0600 before sqlite writes
    except OSError as exc:
        raise PKIFolderError(f"cannot create {destination}: {exc.strerror}",
                             fix="give --to a path in a folder this user may write") from None
    try:
        copy = sqlite3.connect(destination)
        try:
            conn.backup(copy)  # one step: a single read snapshot of the source, writers go on meanwhile
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal to carry along
            verdict = copy.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise PKIFolderError(f"the copy in {destination} does not check ({verdict})",
                                     fix="run the backup again; if it repeats, check the disks (`dmesg`)")
            devices = copy.execute("SELECT count(*) FROM devices").fetchone()[0]
            subjects = _subjects(copy)
        finally:
            copy.close()
        _flush(destination)
    except sqlite3.Error as exc:
        with contextlib.suppress(OSError):
            destination.unlink()
        if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF not in DESTINATION_CODES:
            raise database_error(source, exc) from None
        raise PKIFolderError(
            f"cannot write the backup to {destination}: {exc}",
            fix=f"free space where it goes (`df -h {destination.parent}`), or give --to another disk",
        ) from None
    except BaseException:
        with contextlib.suppress(OSError):
            destination.unlink()  # a partial copy is no backup
        raise
    return BackupResult(destination, destination.stat().st_size, devices, subjects)


def _subjects(copy: sqlite3.Connection) -> int:
    """Enrolled subjects (finger or face) in the copy: what the operator checks the backup against."""
    tables = {row[0] for row in copy.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    parts = [f"SELECT subject_id FROM {name}" for name in ("enrollments", "face_enrollments") if name in tables]  # noqa: S608
    if not parts:
        return 0
    return copy.execute(f"SELECT count(*) FROM ({' UNION '.join(parts)})").fetchone()[0]  # noqa: S608 (names of ours)


def _flush(path: Path) -> None:
    """The copy and its folder entry on disk before "backed up" is printed (a power cut right after keeps it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@dataclass(frozen=True)
class RestoreResult:
    database: Path
    replaced: Path | None  # where the database it replaced was kept (None: there was none)
    devices: int
    subjects: int


COMPANIONS = ("-wal", "-shm")  # sqlite's files beside a WAL database, named after it


def restore(backup: Path, database: Path, key: Path) -> RestoreResult:
    """Put ``backup`` in place of ``database`` while no `serve` runs; the key at ``key`` must open its rows."""
    from verifier.at_rest_key import check_key_opens
    from verifier.serve_lock import hold_database

    source = _open_backup(backup)
    try:
        check_key_opens(key, source)
        with hold_database(database):  # refused while serve runs; and no serve starts halfway
            incoming = _copy_in(source, database)
            replaced = _keep_aside(database)
            os.rename(incoming, database)
            _flush(database)
        devices = source.execute("SELECT count(*) FROM devices").fetchone()[0]
        subjects = _subjects(source)
    finally:
        source.close()
    return RestoreResult(database, replaced, devices, subjects)


def _open_backup(backup: Path) -> sqlite3.Connection:
    """The backup, read-only, refused unless it is a whole verifier database."""
    if not backup.is_file():
        raise PKIFolderError(f"no backup at {backup}", fix="give --from the file `capture-verifier backup` wrote")
    try:
        conn = sqlite3.connect(f"{backup.resolve().as_uri()}?mode=ro", uri=True)
        verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise PKIFolderError(
            f"{backup} cannot be read as a database ({exc})",
            fix="give --from a file `capture-verifier backup` wrote (a copy of another file?)",
        ) from None
    if verdict != "ok" or "devices" not in tables:
        conn.close()
        why = f"does not check ({verdict})" if verdict != "ok" else "is not a verifier database"
        raise PKIFolderError(f"{backup} {why}", fix="give --from another backup (an older one, if this one is damaged)")
    return conn


def _copy_in(source: sqlite3.Connection, database: Path) -> Path:
    """The backup copied whole to a new file beside ``database`` (0600), checked and flushed; its path."""
    incoming = database.with_name(f".{database.name}.restoring")
    with contextlib.suppress(FileNotFoundError):
        incoming.unlink()  # an interrupted restore's: ours, and never in use
    os.close(os.open(incoming, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        copy = sqlite3.connect(incoming)
        try:
            source.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")  # no -wal of its own to carry: one whole file
        finally:
            copy.close()
        _flush(incoming)
    except BaseException:
        with contextlib.suppress(OSError):
            incoming.unlink()
        raise
    return incoming


def _keep_aside(database: Path) -> Path | None:
    """The database being replaced, renamed with its -wal and -shm (so they stay its own); None when there is none."""
    if not database.exists():
        return None
    aside = database.with_name(f"{database.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in COMPANIONS:
        companion = database.with_name(database.name + suffix)
        if companion.exists():
            os.rename(companion, aside.with_name(aside.name + suffix))
    os.rename(database, aside)
    return aside
