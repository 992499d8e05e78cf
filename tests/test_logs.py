"""Logs: JSON for machines, readable for people, never a secret in either."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pathlib
import struct

import numpy as np
import pytest
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


# Fixed, so the test is the same every run (the base64 rule is a net with holes: see protocol/redaction.py).
TOKEN = "7Gd-Mg6XH4rAS8fRi3ZDXUren9KkcQSBEfWAy-c7sC4"  # secrets.token_urlsafe(32), as the verifier makes tokens
KEK = "6pj6DQNACM3BpCDFLGinlMRnEiq+W1cKfABD/OR5CVM="  # base64 of 32 random bytes, as the keystore makes a KEK
EMBEDDING = [float(v) for v in np.random.default_rng(1).standard_normal(128).astype(np.float32)]
FACE_RECORD = base64.b64encode(struct.pack("<128f", *EMBEDDING)).decode()


def leaky_events(log) -> None:
    """What audit 16 (F4) found passing the old filter: nested, in text, in lists, in an exception."""
    log.info("a", reason=f"Authorization: Bearer {TOKEN}")
    log.info("b", answer={"token": TOKEN, "decision": "accept", "steps": [{"session_token": TOKEN}]})
    log.info("c", embedding=EMBEDDING[:8], values=EMBEDDING, pair=(1, EMBEDDING))
    log.info("d", data=FACE_RECORD, note=f"the record was {FACE_RECORD}", kek_line=f"kek={KEK}")
    log.info(f"answer carried {TOKEN}")
    try:
        raise ValueError(f"bad answer {TOKEN}: {KEK}")
    except ValueError:
        log.error("e", exc_info=True)


def check_no_secret(out: str) -> None:
    lines = out.splitlines()
    assert len(lines) == 6 and all(json.loads(line) for line in lines), out
    secrets_in = {"token": TOKEN, "kek": KEK, "record": FACE_RECORD, "embedding value": repr(EMBEDDING[3])}
    assert [name for name, value in secrets_in.items() if value in out] == []
    exception = json.loads(lines[-1])["exception"]
    assert "ValueError: bad answer [redacted]: [redacted]" in exception and "Traceback" in exception
    answer = json.loads(lines[1])["answer"]
    assert answer == {"token": REDACTED, "decision": "accept", "steps": [{"session_token": REDACTED}]}
    assert json.loads(lines[0])["reason"] == "Authorization: [redacted]"


def test_the_filter_looks_inside_nested_values_text_lists_and_exceptions() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    leaky_events(structlog.get_logger())
    check_no_secret(stream.getvalue())


def test_the_verifier_logs_through_the_same_filter(capsys) -> None:
    """Audit 16 F4: the verifier's log had no filter at all."""
    from verifier.cli import configure_logging as configure_verifier_logging

    before = structlog.get_config()
    try:
        configure_verifier_logging()  # JSON lines on stderr
        leaky_events(structlog.get_logger())
    finally:
        structlog.configure(**before)  # not left writing to this test's captured stderr
    check_no_secret(capsys.readouterr().err)


@pytest.mark.parametrize(
    "value",
    [
        hashlib.sha256(b"certificate").hexdigest(),  # a certificate or CA fingerprint
        hashlib.sha256(b"certificate").hexdigest().upper(),
        "5f3a9c0e2b7d41a8c6e0f9b3d2a1c4e5f6a7b8c9",  # a certificate serial
        "0e2d1aa2-884b-49cb-89fd-6ba9b2bde49b",  # event ids, idempotency keys (fixed: xdist workers collect alike)
        "kiosk-07",
        "dev-1a2b3c4d",
        "https://verifier.example:8443/v1/subjects/Ana2024/enrollments",
        "http://***@10.0.0.7/videostream.cgi?user=***&pwd=***",  # a camera source as shown
        "/var/lib/capture-agent/identity/current/device.crt",
        "/tmp/pytest-of-root/pytest-279/test_a_reader_fault_in_the_dae0/ttyZFM-unplugged",  # a serial port
        "Kiosk-Lobby-North-Wing-2024",
        "2026-12-01T03:42:28.671687Z",
        'Bearer error="insufficient_user_authentication", acr_values="face"',  # a step-up challenge
        "the camera asks for Basic authentication",
        "the token is empty",
        "sface-2021dec",
    ],
)
def test_legitimately_long_or_wordy_values_pass(value: str) -> None:
    record = json.loads(emit("json", value=value, nested={"items": [value]}))
    assert record["value"] == value and record["nested"] == {"items": [value]}
    assert json.loads(emit("json", **{"event_value": value}))["event_value"] == value


def test_names_that_only_describe_a_secret_keep_their_values() -> None:
    record = json.loads(
        emit("json", token_scope="enroll:face", enrollment_token_issued="enroll:finger", key_type="ec-p256",
             template_count=3, session_token="abc", kek_file="/etc/credstore.encrypted/capture-agent-kek",
             key_path=pathlib.Path("/var/lib/capture-agent/identity/current/device.key"), image_shape=(480, 640),
             template_bytes=512, token_issued_at="2026-12-01T03:42:28+00:00")
    )
    assert "/var/lib/capture-agent/identity/current/device.key" in record["key_path"]  # the renderer's repr of a Path
    assert record["image_shape"] == [480, 640] and record["template_bytes"] == 512
    assert record["token_issued_at"] == "2026-12-01T03:42:28+00:00"
    assert record["token_scope"] == "enroll:face" and record["enrollment_token_issued"] == "enroll:finger"
    assert record["key_type"] == "ec-p256" and record["template_count"] == 3
    assert record["kek_file"] == "/etc/credstore.encrypted/capture-agent-kek"
    assert record["session_token"] == REDACTED


def test_yes_no_answers_under_a_secret_key_name_stay() -> None:
    record = json.loads(emit("json", with_session_token=False, token=None, password=1234))
    assert record["with_session_token"] is False and record["token"] is None
    assert record["password"] == REDACTED  # a number may be a secret (a sensor's password is one)


# Audit 16 review (r6, r10): values an operator searches by, and secrets the filter let through. Each row is
# checked through the agent's and the verifier's processor chains, at the top level and nested in a dict.
SUBJECT_UID = "Xk3J9aQ2mZpL7rT1vB8nC4dE6fG0"  # 28 characters, a Firebase-style uid: a valid subject id


def verifier_record(capsys, **fields: object) -> dict:
    """One line through the verifier's own chain (verifier.cli.configure_logging, JSON on stderr)."""
    from verifier.cli import configure_logging as configure_verifier_logging

    before = structlog.get_config()
    capsys.readouterr()
    try:
        configure_verifier_logging()
        structlog.get_logger().info("something_happened", audit=True, **fields)
    finally:
        structlog.configure(**before)
    return json.loads(capsys.readouterr().err)


def both_records(capsys, key: str, value: object) -> dict[str, dict]:
    fields = {key: value, "nested": {"steps": [{key: value}]}}
    return {"agent": json.loads(emit("json", **fields)), "verifier": verifier_record(capsys, **fields)}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("device_id", "Site-AMS-Kiosk-Entrance-01"),  # valid device ids (protocol.endpoints.DEVICE_ID)
        ("device_id", "LOBBY-North-Kiosk-2024-A"),
        ("device", "LOBBY-North-Kiosk-2024-A"),
        ("subject", SUBJECT_UID),  # random-looking, but a subject id under a subject key
        ("subject_id", SUBJECT_UID),
        ("group", "Site-AMS-Entrance-Staff-01"),
        ("fix", "capture-verifier device allow Site-AMS-Kiosk-Entrance-01 --groups staff"),
        ("path", "/var/lib/capture-agent/identities/LOBBY-North-Kiosk-2024-A/cert.pem"),
        ("url", f"https://verifier.example:8443/v1/subjects/{SUBJECT_UID}/enrollments"),
        ("reason", "device Site-AMS-Kiosk-Entrance-01 is not allowed"),  # free text: an id made of words
        ("error", "no identity for LOBBY-North-Kiosk-2024-A: run provision"),
    ],
)
def test_identifiers_an_operator_searches_by_pass_both_sides(capsys, key: str, value: str) -> None:
    for side, record in both_records(capsys, key, value).items():
        assert record[key] == value, side
        assert record["nested"] == {"steps": [{key: value}]}, side


@pytest.mark.parametrize(
    ("key", "value", "logged"),
    [
        ("url", "http://admin:Hunter2@cam.local/video.mjpg", "http://admin:[redacted]@cam.local/video.mjpg"),
        ("source", "rtsp://admin:p@ss@10.0.0.5/Streaming/Channels/101",  # a password may hold "@"
         "rtsp://admin:[redacted]@10.0.0.5/Streaming/Channels/101"),
        ("error", "camera door: http://admin:Hunter2@10.0.0.5/video.mjpg refused",
         "camera door: http://admin:[redacted]@10.0.0.5/video.mjpg refused"),
        ("error", "GET http://cam/cgi-bin/mjpg?user=admin&pass=Hunter2 failed",
         "GET http://cam/cgi-bin/mjpg?user=admin&pass=[redacted] failed"),
        # Names ending in a word that used to mean "only describes it", with a value that is no description.
        ("password_file", "Hunter2", REDACTED),  # a file's name would be a path
        ("kek_path", "Hunter2", REDACTED),
        ("token_used", "s3cr3t-token-value", REDACTED),  # the token used
        ("token_revoked", "s3cr3t-token-value", REDACTED),
        ("key_at", "Hunter2", REDACTED),  # a time would be a number or a timestamp
        ("template_bytes", "Rk1SACAyMAAAAADk", REDACTED),  # a size would be a number
    ],
)
def test_secrets_the_filter_let_through_are_redacted_both_sides(capsys, key: str, value: str, logged: str) -> None:
    for side, record in both_records(capsys, key, value).items():
        assert record[key] == logged, side
        assert record["nested"] == {"steps": [{key: logged}]}, side


@pytest.mark.parametrize(
    ("key", "value", "logged"),
    [
        ("fix", f"send Authorization: Bearer {TOKEN}", "send Authorization: [redacted]"),
        ("device_id", f"token={TOKEN}", "token=[redacted]"),
        ("subject", KEK, REDACTED),  # base64: "+", "/", "="
        ("source", FACE_RECORD, REDACTED),
        ("url", "http://cam/videostream.cgi?user=admin&pwd=Hunter2",
         "http://cam/videostream.cgi?user=admin&pwd=[redacted]"),
        ("url", "http://cam/cgi?passwd=Hunter2", "http://cam/cgi?passwd=[redacted]"),
        ("secret_name", SUBJECT_UID, REDACTED),  # an identifier's suffix does not shield a secret's name
        ("reason", f"answer carried {TOKEN}", "answer carried [redacted]"),  # a bare token in free text
    ],
)
def test_identifier_keys_and_ids_do_not_shield_credentials(capsys, key: str, value: str, logged: str) -> None:
    """Bounds of the exemptions above; these were caught before the change too, and must stay caught."""
    for side, record in both_records(capsys, key, value).items():
        assert record[key] == logged, side
