"""Audit events reach journald as structured fields, over a real datagram socket."""

from __future__ import annotations

import socket
import struct

from agent.audit import ChainHead, make_event
from agent.journal import JournalSender, audit_fields, encode_entry


def parse_entry(data: bytes) -> dict[str, str]:
    """A reader of the native protocol, written from its description, for the test."""
    fields: dict[str, str] = {}
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            data = rest
        else:
            (size,) = struct.unpack("<Q", rest[:8])
            fields[line.decode()] = rest[8 : 8 + size].decode()
            data = rest[8 + size + 1 :]
    return fields


def test_an_audit_event_becomes_queryable_fields(tmp_path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "journal.sock"))
    server.settimeout(2)
    event = make_event(ChainHead(), "certificate_renewed", {"old_serial": "ab", "serial": "cd", "note": "x\ny"})
    sender = JournalSender(str(tmp_path / "journal.sock"))
    try:
        assert sender.send(audit_fields(event))
        fields = parse_entry(server.recv(65536))
    finally:
        sender.close()
        server.close()
    assert fields["CAPTURE_AUDIT_TYPE"] == "certificate_renewed"
    assert fields["CAPTURE_AUDIT_SEQ"] == "1"
    assert fields["CAPTURE_AUDIT_HASH"] == event["hash"]
    assert fields["CAPTURE_SERIAL"] == "cd"
    assert fields["CAPTURE_NOTE"] == "x\ny"  # a value with a newline uses the length-prefixed form
    assert fields["SYSLOG_IDENTIFIER"] == "capture-agent"


def test_field_names_are_made_valid() -> None:
    assert encode_entry({"weird-key.x": 1}) == b"WEIRD_KEY_X=1\n"


def test_without_systemd_nothing_is_sent(monkeypatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert JournalSender().send({"MESSAGE": "x"}) is False
