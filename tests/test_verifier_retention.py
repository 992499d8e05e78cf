"""What a device's requests leave in the verifier's database, and for how long: bounded, never for ever.

Why: a stolen kiosk (a valid device certificate) may send every request it is
allowed as fast as its rates let it. What each one stores must go away once it
can no longer be used, and be no larger than what a real agent sends, else the
database grows until the disk is full and every device gets 503
``storage-unavailable`` (the rates bound how fast, not how much).
"""

from __future__ import annotations

import sqlite3
import time

import pytest

from protocol import endpoints
from tests.test_biometric_api import Device, enroll_fingers, verify_call


def _rows(verifier, table: str) -> int:
    with sqlite3.connect(verifier.pki_dir / "verifier.sqlite") as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608 (the test's names)


def _restarted(verifier) -> None:
    """The same verifier (state, port) stopped and started again: its first POST runs its minutely housekeeping."""
    verifier.stop()
    verifier.start(verifier.port)


@pytest.mark.verifier_settings("session_ttl_s = 1.0", "step_up_first_use = false")
def test_expired_session_tokens_leave_the_database(provisioned, verifier, synthetic_templates) -> None:
    """Every accepted verification stores its session token's hash; most are never used (only an enrollment
    takes one). They were never deleted: one row per accept, for ever (a kiosk's day of people, or a stolen
    kiosk verifying its holder in a loop). Past its expiry a token is refused anyway, so it goes with the
    nonces at the housekeeping."""
    device = Device(*provisioned)
    enroll_fingers(device, synthetic_templates, "alice", [0])

    async def accepted(client):
        return [await verify_call(device, client, "alice", synthetic_templates[0][2]) for _ in range(3)]

    answers = device.run(accepted)
    assert all(status == 200 and answer["decision"] == "accept" for status, answer in answers), answers
    assert _rows(verifier, "session_tokens") == 3
    time.sleep(1.2)  # every token expired
    _restarted(verifier)

    async def any_post(client):
        return await client.call("POST", endpoints.CHALLENGES, json={})

    assert device.run(any_post)["nonce"]
    assert _rows(verifier, "session_tokens") == 0
