"""One `capture-verifier serve` per database: an ``fcntl`` lock on ``<database>.lock``.

Why: the rate limits and the EST refusal counts live in each server's memory
(verifier/policy.py), so two servers on one database would each grant the full
allowance: twice the identifications a stolen device may try per minute, twice
the claims of one subject, twice the renewals. sqlite would let them both run
without a word. The operator's other commands (tokens, rules, lists) take no lock:
they are meant to run beside the server. ``flock`` is released by the kernel when
the holder dies, even by SIGKILL, so a stale file never blocks a restart; the PID
inside only tells the second server who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from verifier.pki_folder import PKIFolderError
from verifier.store import give_to_folder_owner

SERVE_THEN = "; two servers on one database would each grant every rate limit in full"
RESTORE_THEN = ", run the restore, then start it again (it opens the restored database)"


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


@contextlib.contextmanager
def hold_database(database: Path, *, then: str = SERVE_THEN) -> Iterator[Path]:
    """Hold the database for this server while the block runs, or refuse naming the server that holds it.

    ``then`` ends the refusal's fix: why a second server must not run, or (`restore`) what to do once the
    server is stopped; a restore refused with the second server's reason, rate limits, told the operator
    nothing about the restore.
    """
    path = lock_path(database)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise PKIFolderError(
            f"cannot lock {path}: {exc.strerror}",
            fix=f"run the verifier as its user (the owner of {database.parent}); remove {path} if it is not a file",
        ) from None
    try:
        give_to_folder_owner(fd, database.parent)  # made by root (`sudo ... serve`): still the unit user's to open
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            who = f"process {pid}" if pid else "another process"
            raise PKIFolderError(
                f"another `capture-verifier serve` ({who}) already serves the database {database}",
                fix=(f"stop it first (`systemctl stop capture-verifier` or `kill {pid}`)" if pid else "stop it first")
                + then,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(fd: int) -> int | None:
    """The PID the holder wrote, if the file says one."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None
