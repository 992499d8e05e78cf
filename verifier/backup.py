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

Restoring (:func:`restore`) is a command too, because by hand it has traps: a
``verifier.sqlite-wal`` left beside the database being replaced is replayed into
the restored file at the next open, and damages it; a file copied in as root is
one serve cannot open. The command holds the database's lock (no `serve` runs
meanwhile, none starts), checks the backup is a verifier database whose sealed
rows this verifier's key opens, keeps a backup of what it replaces, and copies
the backup into the live database through sqlite itself (one transaction).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from verifier.durable import flush
from verifier.pki_folder import PKIFolderError, database_error
from verifier.storage_faults import primary_code

# sqlite's primary result codes that, during a backup, are the source's side (opened read-only, checked before):
# BUSY 5, LOCKED 6, CORRUPT 11, NOTADB 26. Any other (full, I/O, read-only...) is the copy's.
SOURCE_CODES = frozenset({5, 6, 11, 26})


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
        conn = _read_only(database)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise database_error(database, exc) from None
    return conn


def _read_only(path: Path) -> sqlite3.Connection:
    """``path`` opened read-only: a missing file is not made, and nothing is written to it."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)


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
    except (sqlite3.Error, OSError) as exc:  # OSError: the copy's flush (EIO, ENOSPC at fsync)
        with contextlib.suppress(OSError):
            destination.unlink()
        if isinstance(exc, sqlite3.Error) and primary_code(exc) in SOURCE_CODES:
            raise database_error(source, exc) from None
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise PKIFolderError(
            f"cannot write the backup to {destination}: {reason}",
            fix=f"check where it goes: free space (`df -h {destination.parent}`), a read-only or failing disk "
            "(`dmesg`), a file size limit (FAT32: 4 GiB); or give --to another disk",
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
    flush(path)
    flush(path.parent)


@dataclass(frozen=True)
class RestoreResult:
    database: Path
    replaced: Path | None  # a backup of the database it replaced (None: there was none)
    devices: int
    subjects: int


COMPANIONS = ("-wal", "-shm", "-journal")  # sqlite's files beside a database, named after it


def restore(backup: Path, database: Path, key: Path) -> RestoreResult:
    """Put ``backup``'s content into ``database`` while no `serve` runs; the key at ``key`` must open its rows.

    Through sqlite's backup API into the live database, not by renaming files: the copy is one transaction
    (an interruption leaves the database as it was), the name never goes missing (an operator command
    opened meanwhile would make a new database there, and its WAL would be replayed into the restored
    file), the file keeps its owner and mode, and sqlite itself deals with the live database's WAL. What
    it replaced is first backed up beside it (:func:`back_up`, a name of its own).
    """
    from verifier.at_rest_key import check_key_opens
    from verifier.serve_lock import RESTORE_THEN, hold_database

    _check_owner(database)
    source = _open_backup(backup)
    try:
        check_key_opens(key, source)
        with hold_database(database, then=RESTORE_THEN):  # refused while serve runs; and no serve starts meanwhile
            _move_strays(database)
            live = sqlite3.connect(database, timeout=10)
            try:
                replaced = _kept(live, database) if _has_tables(live) else None
                source.backup(live)
                verdict = live.execute("PRAGMA quick_check").fetchone()[0]
            except sqlite3.Error as exc:
                raise database_error(database, exc) from None
            finally:
                live.close()
            if verdict != "ok":
                raise PKIFolderError(f"{database} does not check after the restore ({verdict})",
                                     fix="check the disk (`dmesg`), then restore again")
        devices = source.execute("SELECT count(*) FROM devices").fetchone()[0]
        subjects = _subjects(source)
    finally:
        source.close()
    return RestoreResult(database, replaced, devices, subjects)


def _check_owner(database: Path) -> None:
    """Refuse a caller who is not the owner of the database's folder: run as root (`sudo`), the restored
    database and its lock would be root's, and serve, as its own user, could not open them."""
    folder = database.parent
    try:
        owner = folder.stat().st_uid
    except FileNotFoundError:
        raise PKIFolderError(f"{folder} does not exist",
                             fix="give --pki (and --config, if it sets db_path) as serve has them") from None
    if owner != os.geteuid():
        import pwd

        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = str(owner)
        raise PKIFolderError(
            f"{folder} belongs to {name}, not to the user running restore",
            fix=f"run it as the verifier's user: sudo -u {name} capture-verifier restore ...",
        )


def _move_strays(database: Path) -> None:
    """A -wal (or -shm, -journal) with no database beside it: renamed away, or sqlite would replay it into the
    restored database at its next open."""
    if database.exists():
        return  # its own: sqlite reads them with it
    for suffix in COMPANIONS:
        stray = database.with_name(database.name + suffix)
        if stray.exists():
            os.rename(stray, _free_name(database.with_name(f"{stray.name}.stray")))


def _has_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0


def _kept(live: sqlite3.Connection, database: Path) -> Path:
    """A backup of the database about to be replaced, beside it, under a name nothing holds yet."""
    aside = _free_name(database.with_name(f"{database.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}"))
    return back_up(live, aside, database).path


def _free_name(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``...: the first name no file has (a second restore in the same second)."""
    candidate, n = path, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _open_backup(backup: Path) -> sqlite3.Connection:
    """The backup, read-only, refused unless it is a whole verifier database."""
    if not backup.is_file():
        raise PKIFolderError(f"no backup at {backup}", fix="give --from the file `capture-verifier backup` wrote")
    try:
        conn = _read_only(backup)
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
