"""One daemon per state directory: an ``fcntl`` lock on ``<state_dir>/agent.lock``.

Why a lock and not a PID file alone: two daemons on one state directory would
write into one outbox and one hash chain (a fork for the verifier) and fight
over the reader. ``flock`` is released by the kernel when the holder dies, even
by SIGKILL, so a stale file never blocks a restart; the PID written inside is
only there to tell the second daemon who holds it.
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

LOCK_FILE = "agent.lock"
# A state directory on a disk that is full or read-only: the daemon starts degraded there (its outbox retried,
# sessions refused with the fix), so the lock is taken without writing rather than refused.
_UNWRITABLE = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT})


class StateDirLocked(AgentError):
    """Another process holds the state directory."""


def holder_pid(path: Path) -> int | None:
    """The PID written by the holder, if the file says one."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def hold_state_dir(state_dir: Path) -> Iterator[Path]:
    """Hold the state directory for this process while the block runs, or refuse naming the holder."""
    path = state_dir / LOCK_FILE
    # Never made here: the state directory is provisioning's (or the unit's StateDirectory=). A daemon started
    # before provisioning, or on a mistyped state_dir, says so and leaves nothing behind; a folder it may not
    # use is the store's own error (a file, root's folder: the chown), never a traceback.
    writable = True
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        raise IdentityStore(state_dir).no_identity("the folder does not exist") from None
    except OSError as exc:
        if exc.errno not in _UNWRITABLE:
            raise IdentityStore(state_dir).access_error(exc, f"lock the state directory ({LOCK_FILE})") from None
        fd, writable = _lock_without_writing(path, state_dir), False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = holder_pid(path)
            who = f"process {pid}" if pid else "another process"
            raise StateDirLocked(
                f"another `capture-agent run` ({who}) already uses the state directory {state_dir}",
                fix=(f"stop it first (`systemctl stop capture-agent` or `kill {pid}`)" if pid else "stop it first")
                + ", or give this daemon its own --state-dir and config",
            ) from None
        if writable:
            with contextlib.suppress(OSError):  # a full disk: the PID only informs a second daemon, the lock holds
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        try:
            yield path
        finally:
            if writable:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _lock_without_writing(path: Path, state_dir: Path) -> int:
    """What to lock when the lock file cannot be made or opened for writing (a full or read-only disk).

    The file, read-only, when it is there: a daemon started before the disk went read-only holds that one. Else
    the state directory itself (a flock on its descriptor), so two daemons started on that disk still exclude
    each other.
    """
    try:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise IdentityStore(state_dir).access_error(exc, f"lock the state directory ({LOCK_FILE})") from None
