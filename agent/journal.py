"""Audit events to the systemd journal as structured fields (the native protocol).

A JSON line on stderr reaches journald as one MESSAGE string; an installer then
cannot ask `journalctl CAPTURE_AUDIT_TYPE=certificate_renewed`. The native
protocol (one datagram to /run/systemd/journal/socket, ``KEY=value`` lines, or
``KEY\\n<64-bit little-endian length><value>\\n`` for values with a newline)
keeps each field queryable. Written here, like sd_notify, so a failed send is
reported instead of swallowed.
"""

from __future__ import annotations

import os
import re
import struct
from typing import Any

import structlog

from agent.datagram import DatagramSender

log = structlog.get_logger()

JOURNAL_SOCKET = "/run/systemd/journal/socket"
MAX_DATAGRAM = 200_000  # larger entries need memfd passing; audit events are far smaller
_FIELD = re.compile(r"[^A-Z0-9_]")


def field_name(key: str) -> str:
    name = _FIELD.sub("_", key.upper()).lstrip("_")
    return name or "X"


def encode_entry(fields: dict[str, Any]) -> bytes:
    parts: list[bytes] = []
    for key, value in fields.items():
        name = field_name(key).encode()
        data = str(value).encode()
        if b"\n" in data:
            parts.append(name + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(name + b"=" + data + b"\n")
    return b"".join(parts)


def audit_fields(event: dict[str, Any]) -> dict[str, Any]:
    """Journal fields for an audit event: its identity in the chain and its scalar data."""
    fields: dict[str, Any] = {
        "MESSAGE": f"audit {event['type']} #{event['seq']}",
        "PRIORITY": 6,
        "SYSLOG_IDENTIFIER": "capture-agent",
        "CAPTURE_AUDIT_TYPE": event["type"],
        "CAPTURE_AUDIT_SEQ": event["seq"],
        "CAPTURE_AUDIT_ID": event["id"],
        "CAPTURE_AUDIT_HASH": event["hash"],
        "CAPTURE_AUDIT_PREV": event["prev"],
    }
    for key, value in event.get("data", {}).items():
        if isinstance(value, str | int | float | bool):
            fields[f"CAPTURE_{key}"] = value
    return fields


class JournalSender(DatagramSender):
    """Sends entries to journald; disabled when not running under systemd."""

    def __init__(self, path: str | None = None) -> None:
        if path is None and os.environ.get("JOURNAL_STREAM") and os.path.exists(JOURNAL_SOCKET):
            path = JOURNAL_SOCKET
        super().__init__(path or "")

    def send(self, fields: dict[str, Any]) -> bool:
        entry = encode_entry(fields)
        if len(entry) > MAX_DATAGRAM:
            log.error("journal_entry_too_large", size=len(entry))
            return False
        return self._send(entry, "journal_send_failed")
