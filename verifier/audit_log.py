"""Audit events from devices: stored once by (device, event id), their hash chain checked per device.

The chain rule is the protocol's (DESIGN.md): each event's ``hash`` is the
SHA-256 of its canonical JSON without ``hash`` (:mod:`protocol.audit`);
``prev`` is the previous event's hash; ``seq`` counts from 1. A missing sequence
number is a *gap* (explained when the device later reports an ``outbox_dropped``
covering it), a second event for a sequence number already held, or one that
does not link to the previous hash, is a *fork*; an event larger than
:data:`protocol.audit.MAX_EVENT_BYTES` is *oversized* and, like one whose hash
does not match, is not stored (its content is the device's to make up, and the
database must not grow by a request body a request). Anomalies are stored and logged
as audit events of the verifier; they do not stop delivery, so a device never
retries a batch forever.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import structlog

from protocol.audit import EVENT_FIELDS, GENESIS, MAX_BATCH, MAX_EVENT_BYTES, MAX_SEQ, event_hash
from protocol.wire import canonical_json

log = structlog.get_logger()

HEX64 = re.compile(r"^[0-9a-f]{64}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_events (
    device_id   TEXT NOT NULL,
    event_id    TEXT NOT NULL,             -- the device's id: unique per device, not across devices
    seq         INTEGER NOT NULL,
    hash        TEXT NOT NULL,
    body        TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (device_id, event_id)
);
CREATE INDEX IF NOT EXISTS audit_events_device_seq ON audit_events (device_id, seq);
CREATE TABLE IF NOT EXISTS audit_heads (
    device_id TEXT PRIMARY KEY,
    seq       INTEGER NOT NULL,
    hash      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_anomalies (
    device_id  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    detail     TEXT NOT NULL,
    explained  INTEGER NOT NULL DEFAULT 0,
    at         REAL NOT NULL
);
"""


class EventFormatError(ValueError):
    """A batch or an event that is not the protocol; the message names the field."""


def check_event(event: Any, index: int) -> dict[str, Any]:
    where = f"events[{index}]"
    if not isinstance(event, dict):
        raise EventFormatError(f"{where} is not an object")
    for name, kind in EVENT_FIELDS.items():
        value = event.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise EventFormatError(f"{where}.{name} is missing or not a {kind.__name__}")
    if not 1 <= event["seq"] <= MAX_SEQ:  # a seq SQLite cannot hold, or whose successor it cannot: not a device's
        raise EventFormatError(f"{where}.seq must be from 1 to {MAX_SEQ}")
    if not HEX64.match(event["hash"]) or not HEX64.match(event["prev"]):
        raise EventFormatError(f"{where}: hash and prev must be 64 lowercase hex digits")
    return event


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    anomalies: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AuditLog:
    conn: sqlite3.Connection

    def __post_init__(self) -> None:
        self._migrate()
        self.conn.executescript(SCHEMA)

    def _migrate(self) -> None:
        """Databases from before event ids were per device: rebuild the table keyed by (device, id)."""
        table = "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'audit_events'"
        row = self.conn.execute(table).fetchone()
        if row is None or "PRIMARY KEY (device_id, event_id)" in row[0]:
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("ALTER TABLE audit_events RENAME TO audit_events_global_ids")
        self.conn.execute("DROP INDEX IF EXISTS audit_events_device_seq")
        for statement in filter(str.strip, SCHEMA.split(";")):
            self.conn.execute(statement)
        self.conn.execute(
            "INSERT INTO audit_events (device_id, event_id, seq, hash, body, received_at) "
            "SELECT device_id, event_id, seq, hash, body, received_at FROM audit_events_global_ids"
        )
        self.conn.execute("DROP TABLE audit_events_global_ids")
        self.conn.execute("COMMIT")

    def _head(self, device_id: str) -> tuple[int, str]:
        row = self.conn.execute("SELECT seq, hash FROM audit_heads WHERE device_id = ?", (device_id,)).fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    def _anomaly(self, result: IngestResult, device_id: str, kind: str, first: int, last: int, detail: str) -> None:
        self.conn.execute(
            "INSERT INTO audit_anomalies (device_id, kind, first_seq, last_seq, detail, at) VALUES (?, ?, ?, ?, ?, ?)",
            (device_id, kind, first, last, detail, time.time()),
        )
        result.anomalies.append({"kind": kind, "first_seq": first, "last_seq": last, "detail": detail})

    def ingest(self, device_id: str, batch: Any) -> IngestResult:
        """Store a batch (call inside a transaction). Idempotent by event id."""
        if not isinstance(batch, dict) or not isinstance(batch.get("events"), list):
            raise EventFormatError('the body must be {"events": [...]}')
        if len(batch["events"]) > MAX_BATCH:
            raise EventFormatError(f"at most {MAX_BATCH} events per batch")
        events = sorted((check_event(e, i) for i, e in enumerate(batch["events"])), key=lambda e: e["seq"])
        result = IngestResult()
        for event in events:
            known = "SELECT 1 FROM audit_events WHERE device_id = ? AND event_id = ?"
            if self.conn.execute(known, (device_id, event["id"])).fetchone():
                result.duplicates += 1
                continue
            seq = event["seq"]
            size = len(canonical_json(event))
            if size > MAX_EVENT_BYTES:  # kept out like a bad hash: the chain goes on after it as after a gap
                self._anomaly(result, device_id, "oversized", seq, seq,
                              f"the event is {size} bytes, over {MAX_EVENT_BYTES}: not stored")
                continue
            if event_hash(event) != event["hash"]:
                self._anomaly(result, device_id, "bad_hash", seq, seq, "the event's hash does not match its content")
                continue
            head_seq, head_hash = self._head(device_id)
            if seq <= head_seq:
                self._anomaly(result, device_id, "fork", seq, seq, "a second event for a sequence number already held")
                continue
            if seq > head_seq + 1:
                self._anomaly(result, device_id, "gap", head_seq + 1, seq - 1, "events missing before this one")
            elif event["prev"] != head_hash:
                self._anomaly(result, device_id, "fork", seq, seq, "the event does not follow the previous one")
            self.conn.execute(
                "INSERT INTO audit_events (event_id, device_id, seq, hash, body, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (event["id"], device_id, seq, event["hash"], json.dumps(event), time.time()),
            )
            self.conn.execute(
                "INSERT INTO audit_heads (device_id, seq, hash) VALUES (?, ?, ?) "
                "ON CONFLICT(device_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                (device_id, seq, event["hash"]),
            )
            if event["type"] == "outbox_dropped":
                self._explain_drop(device_id, event["data"])
            result.accepted += 1
        if result.anomalies:
            # One line per batch, not per event: a batch of 500 forged events was 500 audit lines (each is a row).
            kinds = Counter(a["kind"] for a in result.anomalies)
            log.warning(
                "audit_chain_anomaly",
                audit=True,
                device_id=device_id,
                anomalies=len(result.anomalies),
                kinds=",".join(f"{kind}:{n}" for kind, n in sorted(kinds.items())),
                first_seq=min(a["first_seq"] for a in result.anomalies),
                last_seq=max(a["last_seq"] for a in result.anomalies),
            )
        return result

    def _explain_drop(self, device_id: str, data: dict[str, Any]) -> None:
        first, last = data.get("first_seq"), data.get("last_seq")
        if isinstance(first, int) and isinstance(last, int):
            self.conn.execute(
                "UPDATE audit_anomalies SET explained = 1 WHERE device_id = ? AND kind = 'gap' "
                "AND first_seq >= ? AND last_seq <= ?",
                (device_id, first, last),
            )

    def events(self, device_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT body FROM audit_events WHERE device_id = ? ORDER BY seq", (device_id,)
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def anomalies(self, device_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT kind, first_seq, last_seq, detail, explained FROM audit_anomalies WHERE device_id = ? ORDER BY at",
            (device_id,),
        ).fetchall()
        return [dict(zip(("kind", "first_seq", "last_seq", "detail", "explained"), r, strict=True)) for r in rows]
