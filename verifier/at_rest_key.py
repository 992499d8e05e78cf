"""The enrollment key (the templates' key at rest): made once, durably, and never silently replaced.

Why a module of its own: everything the verifier stores sealed (fingerprint and
face templates, stored answers) is sealed under this one 32-byte file, kept apart
from the database so that a copy of ``verifier.sqlite`` alone reveals nothing. That
makes the file the one thing whose loss loses every enrollment, and the ways it
was lost or damaged were all silent or a traceback:

- Made with ``O_EXCL`` and then written, a power cut or a SIGTERM between the two
  (a Raspberry Pi losing power on its first start) left an empty file, and every
  later start a ``ValueError`` traceback. It is now written to a temporary file,
  flushed to disk, and linked into place, so the name holds 32 bytes or nothing,
  and the folder is flushed so the name itself survives the power cut.
- A missing file was made anew even when the database held enrollments sealed
  under the old one (a database restored without its key, ``enrollment_key_file``
  pointed elsewhere): every verification then failed to decrypt. A new key is
  made only for a database that holds nothing sealed.
- A key that is not the one the rows were sealed with (another verifier's) is
  found at start by opening one sealed row, not at the first verification.
- A key others may read (a ``cp -r`` under umask 022) is refused, as ca.key is.
  Its fix was always ``chmod 600``, which does nothing on a file system that
  keeps no modes (vfat or exfat, a USB stick mounted with ``umask=022``): every
  file there shows the mount's mode, so the verifier could never start and the
  fix named could never work. The refusal now checks whether the key's folder
  keeps a mode (:func:`keeps_modes`) and, when it does not, names the real remedy
  (another file system, or the mount's ``umask=077``). A key made on such a
  folder is refused at once, before anything is sealed under a key every local
  user may read, rather than at the next start, and removed (so the start after
  the fix makes a fresh key rather than take the one others could read).

Each fault is a :class:`EnrollmentKeyError` (a :class:`PKIFolderError`, so the
command line prints it as ``error:`` and ``fix:``). Nothing here logs the key.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from verifier import enrollments, faces
from verifier.durable import flush
from verifier.pki_folder import PKIFolderError
from verifier.store import give_to_folder_owner

KEY_BYTES = 32  # AES-256

# The tables whose rows are sealed under the key, each with its store's associated data (made from the subject id).
SEALED_TABLES: tuple[tuple[str, Callable[[str], bytes]], ...] = (
    ("enrollments", enrollments.associated_data),
    ("face_enrollments", faces.associated_data),
)


class EnrollmentKeyError(PKIFolderError):
    """The enrollment key cannot be used as it is; ``fix`` says what to do (never a new key over sealed rows)."""


def load_or_create_key(path: Path, conn: sqlite3.Connection | None = None) -> bytes:
    """The 32-byte enrollment key at ``path``; made (0600, durably) only when ``conn`` holds nothing sealed.

    ``conn`` is the verifier's database; without it (a test's own store) the key is made whenever it is missing.
    """
    sealed = sealed_rows(conn) if conn is not None else 0
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if sealed:
            raise EnrollmentKeyError(
                f"{path} is missing, but the database holds {sealed} enrollment(s) sealed under it: a new key "
                "would leave every one unreadable",
                fix=f"restore {path.name} from this verifier's backup (or set enrollment_key_file to where it is "
                "kept); to start over without those enrollments, move verifier.sqlite aside",
            ) from None
        return _create(path)
    except OSError as exc:
        raise EnrollmentKeyError(f"cannot read {path}: {exc.strerror}", fix=_owner_fix(path)) from None
    key = _read_checked(path, mode, sealed)
    if conn is not None:
        _check_opens_a_row(path, key, conn)
    return key


def check_key_opens(path: Path, conn: sqlite3.Connection) -> None:
    """The key at ``path`` opens what ``conn`` holds sealed (a backup about to be restored); EnrollmentKeyError if not.

    Never makes a key: a restore whose rows this verifier's key cannot open would put back enrollments nobody can
    read, and the next start would refuse them anyway.
    """
    sealed = sealed_rows(conn)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if sealed:
            raise EnrollmentKeyError(
                f"{path} is missing: the backup's {sealed} enrollment(s) are sealed under the key it had",
                fix=f"put this verifier's {path.name} back first (its copy kept apart from the backups), then "
                "restore",
            ) from None
        return
    except OSError as exc:
        raise EnrollmentKeyError(f"cannot read {path}: {exc.strerror}", fix=_owner_fix(path)) from None
    _check_opens_a_row(path, _read_checked(path, mode, sealed), conn)


def sealed_rows(conn: sqlite3.Connection) -> int:
    """How many rows of the database are sealed under the enrollment key (0 for a new database)."""
    return sum(
        conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608 (names of ours)
        for table, _ in _sealed_tables(conn)
    )


def _sealed_tables(conn: sqlite3.Connection) -> list[tuple[str, Callable[[str], bytes]]]:
    """The SEALED_TABLES ``conn`` holds (a new database has none yet)."""
    present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return [(table, aad) for table, aad in SEALED_TABLES if table in present]


def _read_checked(path: Path, mode: int, sealed: int) -> bytes:
    """The file's bytes, refused when it is not a private regular file of exactly 32 bytes."""
    if not stat.S_ISREG(mode):
        raise EnrollmentKeyError(
            f"{path} is not a regular file", fix=f"put this verifier's {path.name} there (a 32-byte file, mode 0600)"
        )
    if mode & 0o077:
        raise _readable_by_others(path, mode)
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise EnrollmentKeyError(f"cannot read {path}: {exc.strerror}", fix=_owner_fix(path)) from None
    if len(key) != KEY_BYTES:
        start_over = (
            "with no enrollment stored yet, delete it and the verifier makes a new one at start"
            if not sealed
            else f"the database holds {sealed} enrollment(s) sealed under the right one"
        )
        raise EnrollmentKeyError(
            f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte key: damaged, or not an enrollment key",
            fix=f"restore {path.name} from this verifier's backup; {start_over}",
        )
    return key


def _readable_by_others(path: Path, mode: int) -> EnrollmentKeyError:
    """The refusal of a key its group or other users may read, with the fix that works on its file system."""
    said = f"{path} may be read by {'other users' if mode & 0o007 else 'its group'} (mode {stat.S_IMODE(mode):04o})"
    if not keeps_modes(path.parent):
        return EnrollmentKeyError(
            f"{said}, and chmod cannot help: the file system of {path.parent} does not keep file modes (vfat? "
            "exfat?), so every local user could decrypt every enrolled template",
            fix=f"put the verifier's data folder ({path.parent}) on ext4 or another file system that keeps modes "
            "(or point enrollment_key_file there), or mount this one with umask=077 and the verifier's user as "
            "its owner (uid=, gid=)",
        )
    return EnrollmentKeyError(
        f"{said}: they could decrypt every enrolled template", fix=f"chmod 600 {path} (the verifier makes it so)"
    )


def keeps_modes(folder: Path) -> bool:
    """Whether a file made in ``folder`` keeps the mode 0600 it is made and chmod-ed with (False on vfat, exfat).

    A file of its own, never the key: chmod-ing the key to see would quietly repair a
    refusal the operator should hear about. Made and removed at once; True when no
    file can be made there (read-only, not ours): then it cannot tell, and the usual
    fix stands.
    """
    probe = folder / f".modes-probe.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return True
    try:
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o600)  # a file system without modes may also refuse this (vfat with quiet off)
        return not os.fstat(fd).st_mode & 0o077
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            probe.unlink()


def _check_opens_a_row(path: Path, key: bytes, conn: sqlite3.Connection) -> None:
    """Refuse a key that does not open the first sealed row: another verifier's, or a damaged copy of 32 bytes."""
    aead = AESGCM(key)
    for table, aad in _sealed_tables(conn):
        query = f"SELECT subject_id, nonce, ciphertext FROM {table} ORDER BY id LIMIT 1"  # noqa: S608 (names of ours)
        row = conn.execute(query).fetchone()
        if row is None:
            continue
        subject_id, nonce, sealed = row
        try:
            aead.decrypt(nonce, sealed, aad(subject_id))
        except InvalidTag:
            raise EnrollmentKeyError(
                f"{path} does not open the enrollments stored in the database: it is not the key they were "
                "sealed under (another verifier's, or a damaged copy)",
                fix=f"restore this verifier's own {path.name} (its backup, or enrollment_key_file's former path)",
            ) from None


def _create(path: Path) -> bytes:
    """A new key, written whole to a temporary file, flushed, then linked to ``path`` (never over an existing one).

    ``os.link`` fails when ``path`` appeared meanwhile (two starts at once): that one is read instead. Where the
    file system has no hard links, a rename takes its place (serve holds the database's lock while it makes the
    key, so no other start races it).
    """
    key = secrets.token_bytes(KEY_BYTES)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise EnrollmentKeyError(f"cannot make {path}: {exc.strerror}", fix=_owner_fix(path)) from None
    try:
        give_to_folder_owner(fd, path.parent)  # a `sudo capture-verifier serve` leaves a key the unit's user can read
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:  # made meanwhile: that one, checked as any key found there
            return _read_checked(path, path.stat().st_mode, 0)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            os.rename(temporary, path)  # a file system without hard links (vfat, some FUSE): serve's lock is held
        flush(path.parent)  # the new name survives a power cut as the file's bytes do
        mode = path.stat().st_mode
    except OSError as exc:
        raise EnrollmentKeyError(f"cannot make {path}: {exc.strerror}", fix=_owner_fix(path)) from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    if mode & 0o077:  # made 0600, shown looser: a file system that keeps no modes; refused before any use
        # ... and removed: others may have read it, so a start once the mount is fixed must make a fresh one
        # rather than seal under this one. Nothing is sealed under it yet (``conn`` held nothing sealed).
        with contextlib.suppress(OSError):
            path.unlink()
            flush(path.parent)
        raise _readable_by_others(path, mode)
    return key


def _owner_fix(path: Path) -> str:
    return (
        f"run the verifier as its own user (the owner of {path.parent}), and give that user the folder; "
        "a full disk: free space (`df -h`)"
    )
