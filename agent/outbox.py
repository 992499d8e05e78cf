"""The outbox: what the verifier must get, kept encrypted on disk until it has it.

* sqlite in WAL mode with ``synchronous=FULL``: an event whose transaction
  committed survives a power cut or a SIGKILL;
* every payload encrypted with AES-GCM (96-bit random nonce, the event id as
  associated data, so a row cannot be swapped for another) under a data key
  derived from the key-encryption key (HKDF-SHA256): the file holds no payload in
  clear, and the data key is never stored;
* the audit chain head (sequence number, hash) is updated in the same
  transaction as the event it describes, so a crash never forks the chain;
* bounded by rows and bytes (counted by triggers, not a scan per event): when full, the oldest
  tenth is dropped at once (all the excess, when far over) and
  the drop becomes an audit event itself, carrying the cumulative count and
  sequence range from a ledger, so the newest report always tells the whole loss
  even if older reports were dropped in turn;
* a row that does not decrypt (the file altered, a disk error, another KEK) is
  moved aside into the ``quarantine`` table, sealed as it was, and the move
  becomes an audit event: one bad row must not stop the rows behind it from
  being delivered, and it is kept, not deleted, for whoever can still open it.

The outbox is synchronous on purpose: each write is one small transaction, far
below a millisecond on a Pi's SD card with WAL; the daemon calls it from its
event loop.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.audit import ChainHead, make_event
from agent.errors import AuditStorageError

log = structlog.get_logger()

# sqlite's result codes (their names' prefixes, extended codes included) for a file that cannot be used as it is:
# full, failing, read-only, held by another process, damaged. Any other error is a bug of ours.
_STORAGE_CODES = frozenset({
    "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CORRUPT",
    "SQLITE_NOTADB", "SQLITE_CANTOPEN", "SQLITE_PROTOCOL",
})


def is_storage_fault(exc: sqlite3.DatabaseError) -> bool:
    """The file's fault (a code of _STORAGE_CODES, extended ones such as SQLITE_IOERR_WRITE included), not ours."""
    name = getattr(exc, "sqlite_errorname", "")
    return any(name == code or name.startswith(code + "_") for code in _STORAGE_CODES)


# What a file fault is, by sqlite's result name (extended names included) or the OS's errno: picks its fix.
_CAUSE_BY_SQLITE = {"SQLITE_CORRUPT": "damaged", "SQLITE_NOTADB": "damaged", "SQLITE_FULL": "full",
                    "SQLITE_IOERR": "full", "SQLITE_READONLY": "read-only", "SQLITE_BUSY": "held",
                    "SQLITE_LOCKED": "held"}
_CAUSE_BY_ERRNO = {errno.ENOSPC: "full", errno.EDQUOT: "full", errno.EIO: "full", errno.EROFS: "read-only"}


def _cause(exc: sqlite3.DatabaseError | OSError) -> str:
    """"damaged", "full" (a full disk shows as an I/O error too: the WAL's shared memory cannot grow),
    "read-only", "held", or "" for another fault."""
    if isinstance(exc, OSError):
        return _CAUSE_BY_ERRNO.get(exc.errno or 0, "")
    name = getattr(exc, "sqlite_errorname", "")
    return next((cause for code, cause in _CAUSE_BY_SQLITE.items() if name == code or name.startswith(code + "_")), "")


RESERVED_LOG_KEYS = frozenset({"event", "level", "timestamp", "audit", "seq", "type", "logger"})
PROBLEM_WORDS = ("fault", "failed", "refused", "unplugged", "dropped", "held")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    rowid      INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL UNIQUE,
    seq        INTEGER NOT NULL,
    nonce      BLOB NOT NULL,
    ciphertext BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS chain (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  TEXT NOT NULL
);
-- The drop ledger: cumulative, so the newest drop report always tells the whole loss
-- even when older reports were dropped in turn.
-- Rows that did not decrypt, moved aside as they were (Outbox.pending).
CREATE TABLE IF NOT EXISTS quarantine (
    event_id   TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    nonce      BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    moved_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS drops (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    total     INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL
);
"""
# What the outbox holds, kept by triggers in the transaction that changes it: the bounds are checked on
# every event, and counting a full outbox (10,000 rows) on each took 2 ms here, far more on a Pi's SD card,
# on the daemon's event loop. Made in one transaction with its first count, so a file an older version
# wrote starts right and no row slips between the count and the triggers.
USAGE_SCHEMA = (
    "CREATE TABLE usage (id INTEGER PRIMARY KEY CHECK (id = 1), rows INTEGER NOT NULL, bytes INTEGER NOT NULL)",
    "INSERT INTO usage (id, rows, bytes) SELECT 1, COUNT(*), COALESCE(SUM(LENGTH(ciphertext)), 0) FROM outbox",
    "CREATE TRIGGER usage_insert AFTER INSERT ON outbox BEGIN "
    "UPDATE usage SET rows = rows + 1, bytes = bytes + LENGTH(NEW.ciphertext) WHERE id = 1; END",
    "CREATE TRIGGER usage_delete AFTER DELETE ON outbox BEGIN "
    "UPDATE usage SET rows = rows - 1, bytes = bytes - LENGTH(OLD.ciphertext) WHERE id = 1; END",
    "CREATE TRIGGER usage_update AFTER UPDATE OF ciphertext ON outbox BEGIN "
    "UPDATE usage SET bytes = bytes - LENGTH(OLD.ciphertext) + LENGTH(NEW.ciphertext) WHERE id = 1; END",
)
HKDF_INFO = b"capture-agent outbox v1"
QUARANTINE_FIX = (
    "rows of the outbox did not decrypt (the file was altered, the disk failed, or the key-encryption key "
    "changed since they were written): they are kept sealed in its quarantine table; check the disk and "
    "that the agent's credential is the one it was provisioned with"
)


def data_key(kek: str) -> bytes:
    """The outbox's AES-256 key, derived from the KEK (never stored)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(kek.encode())


OUTBOX_FILE = "outbox.sqlite"  # in the state directory: the device's one audit trail (daemon and offline forget)


@dataclass(frozen=True)
class OutboxLimits:
    max_rows: int = 10_000
    max_bytes: int = 16 * 1024 * 1024


class Outbox:
    """Encrypted, bounded, crash-safe queue of audit events for the verifier."""

    def __init__(self, path: Path, kek: str, limits: OutboxLimits | None = None) -> None:
        self.path = path
        self.limits = limits or OutboxLimits()
        self._aead = AESGCM(data_key(kek))
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # 0600 before sqlite opens it, whatever the umask: sqlite gives the -wal and -shm files
            # the database file's mode (a chmod after WAL was on left them 0644 under umask 022).
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            for file in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))):
                if file.exists():  # and the companions an older version left behind
                    file.chmod(0o600)
        except PermissionError:
            raise  # another user's file: the caller says which chown
        except OSError as exc:  # a read-only or full file system: a traceback at start, before
            raise self.storage_error(exc) from None
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=10)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(SCHEMA)
            self._keep_usage()
        except sqlite3.DatabaseError as exc:  # a damaged or full file at start: said as a record would say it
            self.conn.close()
            if not is_storage_fault(exc):
                raise
            raise self.storage_error(exc) from None

    def close(self) -> None:
        self.conn.close()

    def _keep_usage(self) -> None:
        """The ``usage`` row and its triggers, made once (with the first count) if the file has none."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            made = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage'").fetchone()
            if not made:
                for statement in USAGE_SCHEMA:  # not executescript: it would commit the open transaction
                    self.conn.execute(statement)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def usage(self) -> tuple[int, int]:
        """Rows and ciphertext bytes in the outbox (the triggers' count: no scan)."""
        rows, size = self.conn.execute("SELECT rows, bytes FROM usage WHERE id = 1").fetchone()
        return int(rows), int(size)

    # ---------------------------------------------------------------- writing
    def head(self) -> ChainHead:
        row = self.conn.execute("SELECT seq, hash FROM chain WHERE id = 1").fetchone()
        return ChainHead(int(row[0]), str(row[1])) if row else ChainHead()

    def record(self, kind: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Append an audit event to the chain and the outbox, durably, in one transaction.

        A file that cannot be written is :class:`AuditStorageError`, naming why and the fix. (On a full disk
        sqlite ends the transaction itself when COMMIT fails: the ROLLBACK that followed raised "cannot
        rollback - no transaction is active", which hid the cause.)
        """
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                event = self._append(kind, data or {})
                dropped = self._enforce_limits()
                if dropped:
                    event = self._append("outbox_dropped", dropped)
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            if not is_storage_fault(exc):
                raise  # our own SQL or API misuse: a bug, with its traceback
            raise self.storage_error(exc) from None
        if dropped:
            log.warning("outbox_dropped", audit=True, **dropped)
        # The daemon's log says what happened, not only that something did: the event's own fields
        # (port, error, fix of a reader fault...) go with it. Audit data never holds secrets, and the
        # log filter redacts anything that looks like one.
        fields = {k: v for k, v in (data or {}).items() if k not in RESERVED_LOG_KEYS}
        level = log.warning if any(word in kind for word in PROBLEM_WORDS) else log.info
        level("audit_event", audit=True, seq=event["seq"], type=kind, **fields)
        return event

    def storage_error(self, exc: sqlite3.DatabaseError | OSError) -> AuditStorageError:
        """Why the outbox file cannot be written, and what the installer does about it.

        By the cause's code (sqlite's result name, or the OS's errno), not the wording of its message.
        """
        reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
        cause = _cause(exc)
        return AuditStorageError(
            f"the audit trail cannot be stored in {self.path}: {reason}", self._fix(cause), cause=cause
        )

    def _fix(self, cause: str) -> str:
        folder = self.path.parent
        return {
            "damaged": f"{self.path} is damaged (a failing SD card?): stop the agent, move it aside (its undelivered "
            "events stay in it, for inspection), start the agent again (it makes a new one); check the card "
            "(`dmesg`)",
            "full": f"free space on the file system of {folder} (`df -h {folder}`); then check the disk (`dmesg`)",
            "read-only": f"the file system of {folder} is read-only (an SD card that failed remounts so): see `dmesg` "
            f"and `findmnt -T {folder}`; or give the agent's user {self.path.name} (its owner)",
            "held": f"another process holds {self.path} in a long write (an sqlite3 shell, a backup): end it",
        }.get(cause, f"check {self.path} and its disk (`dmesg`); the agent retries at each event")

    def _append(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        event = make_event(self.head(), kind, data)
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, json.dumps(event).encode(), event["id"].encode())
        self.conn.execute(
            "INSERT INTO outbox (event_id, seq, nonce, ciphertext) VALUES (?, ?, ?, ?)",
            (event["id"], event["seq"], nonce, sealed),
        )
        self.conn.execute(
            "INSERT INTO chain (id, seq, hash) VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET seq = ?, hash = ?",
            (event["seq"], event["hash"], event["seq"], event["hash"]),
        )
        return event

    def _enforce_limits(self) -> dict[str, int] | None:
        """Past a bound, drop the oldest tenth; the drop report's data, or None."""
        rows, size = self.usage()
        if rows < self.limits.max_rows and size <= self.limits.max_bytes:
            return None
        # Down to a tenth under each bound: a tenth at a time when the outbox just filled, all the excess at
        # once when it was far over (bounds lowered, or a file from before they held).
        target_rows = self.limits.max_rows - max(1, self.limits.max_rows // 10)
        target_bytes = self.limits.max_bytes - self.limits.max_bytes // 10
        victims: list[tuple[int, int]] = []
        for rowid, seq, length in self.conn.execute("SELECT rowid, seq, LENGTH(ciphertext) FROM outbox ORDER BY rowid"):
            if rows - len(victims) <= target_rows and size <= target_bytes:
                break
            victims.append((rowid, seq))
            size -= length
        self.conn.executemany("DELETE FROM outbox WHERE rowid = ?", [(rowid,) for rowid, _ in victims])
        ledger = self.conn.execute("SELECT total, first_seq FROM drops WHERE id = 1").fetchone()
        total = (ledger[0] if ledger else 0) + len(victims)
        first = ledger[1] if ledger else victims[0][1]
        last = victims[-1][1]
        self.conn.execute(
            "INSERT INTO drops (id, total, first_seq, last_seq) VALUES (1, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET total = excluded.total, last_seq = excluded.last_seq",
            (total, first, last),
        )
        return {"count": len(victims), "total": total, "first_seq": first, "last_seq": last}

    # ---------------------------------------------------------------- delivery
    def pending(self, limit: int) -> list[dict[str, Any]]:
        """The oldest events not yet delivered, decrypted, in chain order; rows that do not decrypt go aside.

        Empty only when the outbox is: a batch whose every row went aside is
        followed by the next one (the report of the move, at least), so that
        delivery never takes a quarantined batch for an empty outbox.
        """
        while True:
            rows = self.conn.execute(
                "SELECT rowid, event_id, seq, nonce, ciphertext FROM outbox ORDER BY rowid LIMIT ?", (limit,)
            ).fetchall()
            events, corrupt = [], []
            for rowid, event_id, seq, nonce, sealed in rows:
                try:
                    events.append(json.loads(self._aead.decrypt(nonce, sealed, event_id.encode())))
                except Exception:  # InvalidTag, or bytes that are not the JSON we sealed
                    corrupt.append((rowid, seq))
            if corrupt:
                self._quarantine(corrupt)
            if events or not corrupt:
                return events

    def _quarantine(self, rows: list[tuple[int, int]]) -> None:
        """Move rows that do not decrypt into the quarantine table, and say so in the audit chain."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for rowid, _ in rows:
                self.conn.execute(
                    "INSERT INTO quarantine (event_id, seq, nonce, ciphertext, moved_at) "
                    "SELECT event_id, seq, nonce, ciphertext, ? FROM outbox WHERE rowid = ?",
                    (time.time(), rowid),
                )
                self.conn.execute("DELETE FROM outbox WHERE rowid = ?", (rowid,))
            seqs = [seq for _, seq in rows]
            report = {"count": len(rows), "first_seq": min(seqs), "last_seq": max(seqs),
                      "total": self.quarantined(), "fix": QUARANTINE_FIX}
            self._append("outbox_quarantined", report)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        log.warning("outbox_quarantined", audit=True, **report)

    def quarantined(self) -> int:
        """Rows set aside because they did not decrypt (kept sealed in the ``quarantine`` table)."""
        return int(self.conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0])

    def delivered(self, event_ids: list[str]) -> None:
        """Forget a delivered batch, in one transaction: one sync to disk, not one per event."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.executemany("DELETE FROM outbox WHERE event_id = ?", [(i,) for i in event_ids])
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def size(self) -> int:
        return self.usage()[0]
