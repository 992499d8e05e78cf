"""Logs: JSON for machines, readable for people, never a secret in either."""

from __future__ import annotations

import io
import json

import numpy as np
import structlog

from agent.logs import REDACTED, configure_logging


def emit(fmt: str, **fields: object) -> str:
    stream = io.StringIO()
    configure_logging("info", fmt, stream=stream)
    structlog.get_logger().info("something_happened", **fields)
    return stream.getvalue()


def test_json_lines_off_a_terminal() -> None:
    line = emit("auto", device_id="kiosk-1", attempt=2)
    record = json.loads(line)
    assert record["event"] == "something_happened"
    assert record["device_id"] == "kiosk-1" and record["attempt"] == 2
    assert record["level"] == "info" and "timestamp" in record


def test_console_format_is_not_json() -> None:
    line = emit("console", device_id="kiosk-1")
    assert "something_happened" in line and "device_id" in line
    assert not line.lstrip().startswith("{")


def test_secret_values_are_redacted_whatever_their_key() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----"
    record = json.loads(
        emit(
            "json",
            token="s3cr3t-token-value",
            bootstrap_token="another",
            kek="k" * 40,
            blob=b"\x00\x01template",
            note=pem,
            pixels=np.zeros((4, 4), np.uint8),
            template="FMR\x00",
            serial="abc123",
        )
    )
    for key in ("token", "bootstrap_token", "kek", "blob", "note", "pixels", "template"):
        assert record[key] == REDACTED, key
    assert record["serial"] == "abc123"  # ordinary values pass
    assert "s3cr3t" not in json.dumps(record)
