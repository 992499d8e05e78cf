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


def test_an_audit_event_larger_than_any_agent_makes_is_not_stored(provisioned, verifier) -> None:
    """An event is stored as the device sent it, and nothing bounded one but the 1 MiB body: a stolen device
    stored a 1 MiB event per batch, 600 batches a minute (``device_event_batches_per_min``), some 600 MiB of
    database a minute. Past ``protocol.audit.MAX_EVENT_BYTES`` (an agent's events are a few hundred bytes)
    an event is an ``oversized`` anomaly, as a bad hash is: counted in the receipt (the agent's outbox lets it go,
    its delivery goes on), never its content stored; the chain goes on after it as after a gap."""
    from agent.audit import ChainHead, make_event
    from agent.delivery import receipt_of

    config, identity = provisioned
    huge = make_event(ChainHead(), "reader_fault", {"error": "x" * 600_000})
    after = make_event(ChainHead(huge["seq"], huge["hash"]), "reader_fault", {"error": "timeout", "port": "/dev/x"})

    async def send(client):
        return [await client.call("POST", endpoints.EVENTS, json={"events": [event]}) for event in (huge, after)]

    first, second = Device(config, identity).run(send)
    assert [a["kind"] for a in receipt_of(first, 1).anomalies] == ["oversized"], first
    assert first["accepted"] == 0, first
    assert second["accepted"] == 1 and [a["kind"] for a in second["anomalies"]] == ["gap"], second
    with sqlite3.connect(verifier.pki_dir / "verifier.sqlite") as db:
        stored = db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0), COUNT(*) FROM audit_events").fetchone()
        details = db.execute("SELECT detail FROM audit_anomalies").fetchall()
    assert stored[1] == 1 and stored[0] < 4096, stored  # only the next event, whole
    assert all("xxxx" not in detail for (detail,) in details)


def test_an_event_batch_s_stored_answer_lives_minutes_not_a_day(provisioned, verifier) -> None:
    """Every POST's first answer is kept for its repeats, a day unless its route says less; a device may send 600
    event batches a minute (``device_event_batches_per_min``), so a stolen one kept some 864,000 stored answers a
    day in the database, each with its key (empty batches do). Events are idempotent by their ids: a batch sent
    again once its answer is gone is answered from the events themselves (all duplicates, which the agent's
    receipt check accepts), so the answer is kept only for a retry after a cut connection."""
    from agent.audit import ChainHead, make_event
    from agent.delivery import batch_key, receipt_of

    config, identity = provisioned
    event = make_event(ChainHead(), "heartbeat", {})

    async def send(client):
        first = await client.call("POST", endpoints.EVENTS, json={"events": [event]},
                                  idempotency_key=batch_key([event["id"]]))
        empties = [await client.call("POST", endpoints.EVENTS, json={"events": []}) for _ in range(5)]
        # The same batch under another key: what a retry finds once its stored answer has gone.
        again = await client.call("POST", endpoints.EVENTS, json={"events": [event]})
        return first, empties, again

    first, empties, again = Device(config, identity).run(send)
    assert first["accepted"] == 1 and all(e["accepted"] == 0 for e in empties)
    assert receipt_of(again, 1).duplicates == 1  # accounted for: the outbox lets it go
    with sqlite3.connect(verifier.pki_dir / "verifier.sqlite") as db:
        kept = db.execute("SELECT MAX(expires_at - created_at), COUNT(*) FROM idempotency WHERE principal = ?",
                          (identity.device_id,)).fetchone()
    assert kept[1] == 7, kept
    assert kept[0] <= 3600, f"an event batch's answer is kept {kept[0]:.0f} s"


def test_a_device_repeating_one_request_cannot_write_a_log_line_a_repeat(provisioned, verifier) -> None:
    """A repeat (the same Idempotency-Key and bytes) is answered from the store before any rate is looked at: it
    must be, a retry after GOAWAY is no new request. Each one was also its own ``idempotent_repeat`` log line, so a
    stolen device replaying one stored answer wrote the verifier's log as fast as its connection carried requests,
    and no rate stopped it. The repeats are now logged as the other flood-prone events are: the first few of a
    window one by one, the rest counted in ``connection_events_summary`` (every one still accounted for)."""
    from tests.test_verifier_connections import log_events

    config, identity = provisioned
    repeats = 60

    async def replay(client):
        answers = [await client.request("POST", endpoints.CHALLENGES, json={}, idempotency_key="the-same-key")
                   for _ in range(repeats)]
        return {a.json()["nonce"] for a in answers}, {a.status_code for a in answers}

    nonces, statuses = Device(config, identity).run(replay)
    assert statuses == {201} and len(nonces) == 1  # every repeat got the first answer
    verifier.stop()  # the summary of the last window is flushed at the stop
    events = log_events(verifier)
    one_by_one = sum(e["event"] == "idempotent_repeat" for e in events)
    summarised = sum(n for e in events if e["event"] == "connection_events_summary"
                     for kind, n in e["counts"].items() if kind.startswith("idempotent_repeat"))
    assert one_by_one <= 10, f"{one_by_one} log lines for {repeats - 1} repeats"
    assert one_by_one + summarised == repeats - 1, (one_by_one, summarised)


def test_a_device_s_audit_events_are_bounded_in_bytes_a_minute(provisioned, verifier) -> None:
    """6,000 events a minute (``device_events_per_min``) of up to 4 KiB each was still some 24 MiB of database a
    minute from one stolen device; an agent's events are a few hundred bytes, so its backlog drains at that rate
    in a tenth of it. Past ``device_event_bytes_per_min`` (2 MiB) of bodies in a minute, a batch is a 429
    ``device-rate-limited`` with Retry-After, like the other event limits (the agent's outbox keeps it)."""
    from agent.audit import ChainHead, make_event

    config, identity = provisioned
    head, batches = ChainHead(), []
    for _ in range(3):  # three batches of 250 events of ~3.8 KiB: a little under 1 MiB each
        events = []
        for _ in range(250):
            event = make_event(head, "reader_fault", {"error": "e" * 3600})
            head = ChainHead(event["seq"], event["hash"])
            events.append(event)
        batches.append(events)

    async def send(client):
        answers = []
        for events in batches:
            response = await client.request("POST", endpoints.EVENTS, json={"events": events})
            answers.append((response.status_code, response.json(), response.headers.get("retry-after")))
        return answers

    answers = Device(config, identity).run(send)
    assert [(s, a.get("accepted")) for s, a, _ in answers[:2]] == [(200, 250), (200, 250)], answers[:2]
    status, problem, retry_after = answers[2]
    assert status == 429 and problem["type"].endswith("device-rate-limited") and retry_after, problem
