"""The audit trail end to end: outbox → /v1/events → the verifier's chain check."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from agent.audit import ChainHead, make_event, verify_chain
from agent.client import VerifierClient
from agent.delivery import EventDelivery
from agent.devstack import LocalVerifier, provision_device, write_config_file
from agent.errors import AgentError
from agent.keystore import load_kek
from agent.outbox import Outbox
from tests.conftest import start_agent_daemon


def verifier_events(verifier, device_id: str) -> list[dict]:
    with sqlite3.connect(verifier.pki_dir / "verifier.sqlite") as db:
        rows = db.execute("SELECT body FROM audit_events WHERE device_id = ? ORDER BY seq", (device_id,)).fetchall()
    return [json.loads(r[0]) for r in rows]


def verifier_anomalies(verifier, device_id: str) -> list[tuple]:
    with sqlite3.connect(verifier.pki_dir / "verifier.sqlite") as db:
        return db.execute(
            "SELECT kind, first_seq, last_seq, explained FROM audit_anomalies WHERE device_id = ?", (device_id,)
        ).fetchall()


def test_verifier_down_for_a_while_then_everything_delivered_once(verifier, provisioned) -> None:
    config, identity = provisioned
    outbox = Outbox(config.agent.state_dir / "outbox.sqlite", load_kek(config))

    async def story() -> None:
        async with VerifierClient(config, identity) as client:
            delivery = EventDelivery(outbox, client, batch_size=4)
            for i in range(5):
                outbox.record("attempt", {"n": i})
            await delivery.deliver_once()  # 4 delivered, 1 pending
            verifier.stop()
            for i in range(5, 10):
                outbox.record("attempt", {"n": i})
            with pytest.raises(AgentError):
                await delivery.deliver_once()
            assert outbox.size() == 6, "nothing is lost while the verifier is down"
            verifier.start(verifier.port)
            while await delivery.deliver_once():
                pass

    asyncio.run(story())
    events = verifier_events(verifier, "kiosk-1")
    assert [e["data"]["n"] for e in events] == list(range(10))
    assert verify_chain(events) == []
    assert verifier_anomalies(verifier, "kiosk-1") == []
    assert outbox.size() == 0


def test_the_verifier_flags_a_gap_and_a_fork(verifier, provisioned) -> None:
    config, identity = provisioned
    e1 = make_event(ChainHead(), "a", {})
    e2 = make_event(ChainHead(1, e1["hash"]), "b", {})
    e4 = make_event(ChainHead(3, "f" * 64), "d", {})
    e2_fork = make_event(ChainHead(1, e1["hash"]), "b-rewritten", {})

    async def story() -> list[dict]:
        async with VerifierClient(config, identity) as client:
            answers = [
                await client.call("POST", "/v1/events", json={"events": batch})
                for batch in ([e1, e2], [e2], [e4], [e2_fork])
            ]
        return answers

    answers = asyncio.run(story())
    assert answers[0] == {"accepted": 2, "duplicates": 0, "anomalies": []}
    assert answers[1]["duplicates"] == 1  # the same event again: stored once
    assert [a["kind"] for a in answers[2]["anomalies"]] == ["gap"]
    assert [a["kind"] for a in answers[3]["anomalies"]] == ["fork"]
    assert [e["seq"] for e in verifier_events(verifier, "kiosk-1")] == [1, 2, 4]


def test_malformed_events_are_refused_with_the_fix(verifier, provisioned) -> None:
    config, identity = provisioned
    from agent.errors import VerifierError

    async def story() -> None:
        async with VerifierClient(config, identity) as client:
            await client.call("POST", "/v1/events", json={"events": [{"seq": "one"}]})

    with pytest.raises(VerifierError) as info:
        asyncio.run(story())
    assert info.value.status == 422 and "events[0]" in str(info.value)


def _outbox_head(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute("SELECT seq FROM chain WHERE id = 1").fetchone()
            return int(row[0]) if row else 0
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
# A heartbeat every 5 ms is far past what a device may send a minute: this test is about crashes, not rates.
@pytest.mark.verifier_settings("device_event_batches_per_min = 1000000", "device_events_per_min = 10000000")
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(verifier, provisioned, tmp_path) -> None:
    """20+ SIGKILLs while the daemon writes and delivers; then every committed event arrives once, in order."""
    config, identity = provisioned
    config_file = write_config_file(
        tmp_path / "agent.toml", config, '[audit]\nheartbeat_s = 0.005\nbatch_size = 7\n[logging]\nlevel = "error"\n'
    )
    outbox_file = config.agent.state_dir / "outbox.sqlite"
    rng = random.Random(20261123)
    committed = kills = 0
    # 22 kills at least; on a loaded machine a daemon may spend most of its life
    # starting, so go on killing (up to 60 times, within 70 s) until it has written
    # 50 events, and let a daemon that wrote nothing new live twice as long next time.
    stretch, deadline = 1.0, time.monotonic() + 70.0
    while kills < 22 or (committed <= 50 and kills < 60 and time.monotonic() < deadline):
        proc = start_agent_daemon(config_file)
        time.sleep(rng.uniform(0.4, 1.0) * stretch)
        head = _outbox_head(outbox_file)  # committed, as a reader sees it
        stretch = 1.0 if head > committed else 2.0
        committed = max(committed, head)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        kills += 1
    assert committed > 50, "the daemon did write events between the kills"
    # Last run: let it deliver everything, then stop it cleanly.
    starts_before = sum(e["type"] == "agent_started" for e in verifier_events(verifier, "kiosk-1"))
    proc = start_agent_daemon(config_file)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until this run is up and has delivered the backlog
            events = verifier_events(verifier, "kiosk-1")
            started = sum(e["type"] == "agent_started" for e in events)
            if started > starts_before and events[-1]["seq"] >= committed:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    # The stop flush is bounded in time; whatever it left is still in the outbox: deliver it.
    outbox = Outbox(outbox_file, load_kek(config))

    async def drain() -> None:
        async with VerifierClient(config, identity) as client:
            delivery = EventDelivery(outbox, client)
            while await delivery.deliver_once():
                pass

    asyncio.run(drain())
    events = verifier_events(verifier, "kiosk-1")
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "in order, no gap, no duplicate"
    assert seqs[-1] >= committed, "every event committed before a kill reached the verifier"
    assert verify_chain(events) == []
    assert verifier_anomalies(verifier, "kiosk-1") == []
    # Each run that got far enough started with agent_started (a kill can come earlier);
    # the last run stopped cleanly and flushed its agent_stopping too.
    assert 2 <= sum(e["type"] == "agent_started" for e in events) <= kills + 1
    assert events[-1]["type"] == "agent_stopping"


def test_the_daemon_renews_on_schedule_and_audits_it(tmp_path) -> None:
    """A 9-second certificate is renewed at about two thirds of its life, with no person involved."""
    with LocalVerifier.running(tmp_path / "pki", extra_args=("--cert-days", "0.0001")) as verifier:
        config, first = asyncio.run(provision_device(verifier, tmp_path / "device", "kiosk-r"))
        config_file = write_config_file(tmp_path / "agent.toml", config, '[logging]\nlevel = "error"\n')
        proc = start_agent_daemon(config_file)
        try:
            deadline = time.monotonic() + 30
            renewed: list[dict] = []
            while not renewed and time.monotonic() < deadline:
                time.sleep(0.3)
                renewed = [e for e in verifier_events(verifier, "kiosk-r") if e["type"] == "certificate_renewed"]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        assert renewed, "no renewal within 30 s of a 9 s certificate"
        assert renewed[0]["data"]["old_serial"] == first.serial_hex
        assert renewed[0]["data"]["serial"] != first.serial_hex


def test_a_failed_delivery_is_logged_with_its_fix(verifier, provisioned) -> None:
    """A daemon whose certificate expired, or whose verifier moved, said so only in `event_delivery_failed`,
    every backoff, and that line had the error without its fix ("re-provision with a new token ...")."""
    from structlog.testing import capture_logs

    config, identity = provisioned
    outbox = Outbox(config.agent.state_dir / "outbox.sqlite", load_kek(config))
    outbox.record("attempt", {"n": 0})
    verifier.stop()

    async def story() -> list[dict]:
        async with VerifierClient(config, identity) as client:
            with capture_logs() as logs:
                running = asyncio.create_task(EventDelivery(outbox, client).run())
                while not any(e["event"] == "event_delivery_failed" for e in logs):
                    await asyncio.sleep(0.05)
                running.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await running
            return logs

    failed = next(e for e in asyncio.run(story()) if e["event"] == "event_delivery_failed")
    assert "could not be reached" in failed["error"], failed
    assert "check the network and that the verifier runs" in failed["fix"], failed
    assert outbox.size() == 1
