"""The audit event hash chain rule, shared by the agent (who chains) and the verifier (who checks).

Each event carries a device-local sequence number ``seq`` (from 1), ``prev``
(the previous event's hash, :data:`GENESIS` for the first) and ``hash``: the
SHA-256 of the event's canonical JSON without ``hash``. Event ids are the
device's: the verifier keeps them per device, so one device's id never shadows
another's.
"""

from __future__ import annotations

import hashlib
from typing import Any

from protocol.wire import canonical_json

GENESIS = "0" * 64
MAX_BATCH = 500  # events per POST /v1/events
# The largest seq: I-JSON's (RFC 7493) exact integers, far below SQLite's 2**63 - 1, so the next one still fits.
MAX_SEQ = 2**53 - 1
# The largest event the verifier stores, as canonical JSON: an agent's are a few hundred bytes (a kind, a port, an
# error and its fix). Larger ones are an anomaly ("oversized"), counted but never stored: the 1 MiB body bounded
# nothing else, and a stolen device stored 1 MiB an event, a batch a request.
MAX_EVENT_BYTES = 4096
EVENT_FIELDS: dict[str, type] = {
    "id": str,
    "seq": int,
    "prev": str,
    "type": str,
    "time": str,
    "data": dict,
    "hash": str,
}


def event_hash(event: dict[str, Any]) -> str:
    """The hash of an event: over every field but ``hash`` itself."""
    return hashlib.sha256(canonical_json({k: v for k, v in event.items() if k != "hash"})).hexdigest()
