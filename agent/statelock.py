"""One daemon per state directory: ``flock`` on the directory and on ``<state_dir>/agent.lock``.

Why a lock and not a PID file alone: two daemons on one state directory would
write into one outbox and one hash chain (a fork for the verifier) and fight
over the reader. ``flock`` is released by the kernel when the holder dies, even
by SIGKILL, so a stale file never blocks a restart; the PID written inside is
only there to tell the second daemon who holds it where the kernel's /proc/locks
cannot (a holder on a read-only disk writes none, and the file may be stale).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from agent.errors import AgentError
from agent.identity import IdentityStore
from drivers.flock_holder import flock_holder

LOCK_FILE = "agent.lock"
# A state directory on a disk that is full or read-only: the daemon starts degraded there (its outbox retried,
# sessions refused with the fix), so the lock is taken without writing rather than refused.
_UNWRITABLE = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT})


class StateDirLocked(AgentError):
    """Another process holds the state directory; ``holder`` is FORGET when it is a forget erasing without the
    daemon (another forget is then told to wait for it, not that a daemon runs)."""

    def __init__(self, message: str, fix: str = "", holder: str = "") -> None:
        super().__init__(message, fix)
        self.holder = holder


FORGET = "forget"  # the holder's word in the lock file: `capture-agent forget` erasing without the daemon


def _holder_words(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return []


def holder_pid(path: Path) -> int | None:
    """The PID written by the holder, if the file says one."""
    words = _holder_words(path)
    return int(words[0]) if words and words[0].isdigit() else None


def _holder_purpose(path: Path, pid: int | None) -> str:
    """What the holder ``pid`` said it holds the directory for (FORGET; "" for a daemon, which writes its PID
    alone), when the file is its own (a stale file names another PID)."""
    words = _holder_words(path)
    return words[1] if len(words) > 1 and pid is not None and words[0] == str(pid) else ""


def _kernel_holder(fd: int) -> int | None:
    """The PID holding a flock on ``fd``'s file; None when that cannot be told.

    Why not the file alone: a holder on a read-only disk cannot write its PID, so the file may still say the one
    a daemon killed before its exit left there, by now another process, and the refusal's fix said to kill it.
    """
    try:
        return flock_holder(os.fstat(fd))
    except OSError:
        return None


@contextlib.contextmanager
def hold_state_dir(state_dir: Path, purpose: str = "") -> Iterator[Path]:
    """Hold the state directory for this process while the block runs, or refuse naming the holder.

    Two locks: the directory's own descriptor, always (it needs no write, so it holds on a full or read-only
    disk, where the daemon starts degraded), and the lock file, the one an older daemon holds, opened read-only
    when it cannot be made or written. Why both: with the file alone, a daemon that had to fall back to the
    directory on a read-only disk was not excluded by one started once the disk was writable again.

    ``purpose`` (FORGET) is written after the PID, so that a daemon started meanwhile says a forget is erasing
    and to start again once it has ended, not to kill it as a second daemon.
    """
    path = state_dir / LOCK_FILE
    # Never made here: the state directory is provisioning's (or the unit's StateDirectory=). A daemon started
    # before provisioning, or on a mistyped state_dir, says so and leaves nothing behind; a folder it may not
    # use is the store's own error (a file, root's folder: the chown), never a traceback.
    try:
        folder = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise IdentityStore(state_dir).no_identity("the folder does not exist") from None
    except OSError as exc:
        raise IdentityStore(state_dir).access_error(exc, f"lock the state directory ({LOCK_FILE})") from None
    try:
        # Another user's folder (the agent's, to `sudo capture-agent run`) is refused before the lock file is made:
        # root made it root's and 0600, and the agent's own daemon could then not open it at its next start.
        owner = os.fstat(folder).st_uid
        if owner != os.getuid():
            raise IdentityStore(state_dir).foreign_owner_error(owner)
        _exclusive(folder, path, state_dir)
        fd, writable = _lock_file(path, state_dir)
        try:
            if fd is not None:
                _exclusive(fd, path, state_dir)
            if fd is not None and writable:
                with contextlib.suppress(OSError):  # a full disk: the PID only informs a second daemon
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()}{' ' + purpose if purpose else ''}\n".encode("ascii"), 0)
            try:
                yield path
            finally:
                if fd is not None and writable:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, 0)
        finally:
            if fd is not None:
                os.close(fd)  # closing releases its lock
    finally:
        os.close(folder)


def _exclusive(fd: int, path: Path, state_dir: Path) -> None:
    """Lock ``fd`` for this process, or refuse naming the holder the lock file tells."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        # The kernel's word first; the file's only where /proc/locks cannot tell (another OS, a hidden /proc).
        pid = _kernel_holder(fd) or holder_pid(path)
        who = f"process {pid}" if pid else "another process"
        if _holder_purpose(path, pid) == FORGET:  # erasing without the daemon: never to be killed midway
            raise StateDirLocked(
                f"a `capture-agent forget` ({who}) is erasing prints without the daemon in the state directory "
                f"{state_dir}",
                fix="wait for it to end (it does once the readers have answered), then start the agent again "
                "(`systemctl start capture-agent`; after repeated refusals `systemctl reset-failed capture-agent` "
                "first)",
                holder=FORGET,
            ) from None
        raise StateDirLocked(
            f"another `capture-agent run` ({who}) already uses the state directory {state_dir}",
            fix=(f"stop it first (`systemctl stop capture-agent` or `kill {pid}`)" if pid else "stop it first")
            + ", or give this daemon its own --state-dir and config",
        ) from None


def _lock_file(path: Path, state_dir: Path) -> tuple[int | None, bool]:
    """The lock file's descriptor and whether it may be written: made and opened for writing when the disk
    allows, read-only when it is there on a full or read-only disk, else none (the directory's lock holds
    alone; a second descriptor of the directory would be refused by the first's lock, this process's own)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600), True
    except OSError as exc:
        if exc.errno not in _UNWRITABLE:
            raise IdentityStore(state_dir).access_error(exc, f"lock the state directory ({LOCK_FILE})") from None
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
    except FileNotFoundError:
        return None, False
    except OSError as exc:
        raise IdentityStore(state_dir).access_error(exc, f"lock the state directory ({LOCK_FILE})") from None
