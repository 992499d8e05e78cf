"""The audit trail: a hash chain of events, so a gap or a rewrite is visible.

Each event carries a device-local sequence number and the SHA-256 of the event
before it; its own hash covers its canonical JSON (the rule is protocol.audit's). The
verifier re-computes every hash and checks, per device, that each event follows
the last one it has: a missing sequence number is a gap, a second event for a
sequence number it already has is a fork.

Events never hold a template, an image, a key or a token: only what happened,
when, and the outcome.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from protocol.audit import GENESIS, event_hash

__all__ = ["GENESIS", "ChainHead", "event_hash", "make_event", "verify_chain"]


@dataclass(frozen=True)
class ChainHead:
    seq: int = 0
    hash: str = GENESIS


def make_event(head: ChainHead, kind: str, data: dict[str, Any], now: dt.datetime | None = None) -> dict[str, Any]:
    """The next event after ``head``; the caller stores it and the new head together."""
    event = {
        "id": str(uuid.uuid4()),
        "seq": head.seq + 1,
        "prev": head.hash,
        "type": kind,
        "time": (now or dt.datetime.now(dt.UTC)).isoformat(),
        "data": data,
    }
    event["hash"] = event_hash(event)
    return event


def verify_chain(events: list[dict[str, Any]], head: ChainHead = ChainHead()) -> list[str]:
    """Problems in a run of events that should follow ``head``; empty when the chain holds."""
    problems: list[str] = []
    current = head
    for event in events:
        if event_hash(event) != event.get("hash"):
            problems.append(f"event {event.get('seq')}: hash does not match its content")
        if event.get("seq") != current.seq + 1:
            problems.append(f"event {event.get('seq')}: expected sequence {current.seq + 1}")
        elif event.get("prev") != current.hash:
            problems.append(f"event {event.get('seq')}: does not follow the previous event")
        current = ChainHead(int(event.get("seq", 0)), str(event.get("hash", "")))
    return problems
