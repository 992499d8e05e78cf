"""A daemon whose certificate the verifier refuses records its handshake failure once, then counts the retries.

A real verifier over mTLS, the daemon's own delivery retrying: one `tls_handshake_failed` event per retry filled
the bounded outbox in about a week, pushing out the events recorded before it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

from structlog.testing import capture_logs

import agent.delivery as delivery_module
from agent.daemon import AgentDaemon
from agent.identity import IdentityStore
from agent.keystore import load_kek
from protocol.audit import event_hash

RETRIES_BEFORE_THE_FIX = 6


def _delivered(verifier, device_id: str) -> list[dict]:
    with sqlite3.connect(verifier.pki_dir / "verifier.sqlite") as db:
        rows = db.execute("SELECT body FROM audit_events WHERE device_id = ? ORDER BY seq", (device_id,)).fetchall()
    return [json.loads(body) for (body,) in rows]


async def _delivered_once(verifier, device_id: str, kind: str, *, within_s: float = 30) -> list[dict]:
    """The events the verifier holds from ``device_id`` once one of ``kind`` is among them (or at ``within_s``,
    for the test's assertions to say what came instead)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        delivered = _delivered(verifier, device_id)
        if any(e["type"] == kind for e in delivered):
            return delivered
        await asyncio.sleep(0.1)
    return _delivered(verifier, device_id)


def test_a_refused_certificate_is_one_event_and_a_count_that_reaches_the_verifier_once_fixed(
    provisioned, verifier, make_test_ca, monkeypatch
) -> None:
    config, identity = provisioned
    monkeypatch.setattr(delivery_module, "BACKOFF_MAX_S", 0.2)  # the retries of a week, a few per second
    kek = load_kek(config).encode()
    store = IdentityStore(config.agent.state_dir)
    good = store.load(kek)
    assert good.key is not None
    # A certificate of a CA the verifier does not trust (a CA changed, a device restored from another site's
    # backup): every handshake is refused, as for an expired one.
    foreign = make_test_ca("another site's device CA")
    store.write(*foreign.issue_key_and_cert([identity.device_id], client=True), good.ca_certificates, kek)
    daemon = AgentDaemon(config)

    def failures(logs: list[dict]) -> list[str]:
        """The handshakes the client saw refused (its own log line, one per failure, coalesced or not)."""
        return [e["reason"] for e in logs if e["event"] == "tls_handshake_failed"]

    async def scenario(logs: list[dict]) -> list[dict]:
        await daemon.start()
        try:
            deadline = time.monotonic() + 60
            while len(failures(logs)) < RETRIES_BEFORE_THE_FIX and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert len(failures(logs)) >= RETRIES_BEFORE_THE_FIX, "the delivery did not retry"
            store.write(good.key, good.certificate, good.ca_certificates, kek)  # fixed: re-provisioned, say
            return await _delivered_once(verifier, identity.device_id, "tls_handshake_failed_repeated")
        finally:
            await daemon.stop()

    with capture_logs() as logs:
        delivered = asyncio.run(scenario(logs))
    seen = failures(logs)
    firsts = [e["data"] for e in delivered if e["type"] == "tls_handshake_failed"]
    summaries = [e["data"] for e in delivered if e["type"] == "tls_handshake_failed_repeated"]
    # One event per distinct failure (the same one here: one reason throughout), not one per retry ...
    assert len(firsts) == len(set(seen)) == 1, (firsts, seen)
    assert firsts[0] == {"url": config.verifier.url, "reason": seen[0]}
    # ... and the count, recorded when the verifier answered again, accounts for every other retry.
    assert summaries and summaries[-1]["until"] == "ended", summaries
    assert sum(s["repeats"] for s in summaries) == len(seen) - 1, (summaries, len(seen))
    assert all(s["url"] == config.verifier.url and s["reason"] == seen[0] for s in summaries)
    assert all(s["first_at"] <= s["last_at"] for s in summaries)
    # The chain the verifier holds is whole: a summary is an ordinary event of it.
    assert [e["seq"] for e in delivered] == list(range(1, len(delivered) + 1))
    assert all(event_hash(e) == e["hash"] for e in delivered)
    assert any(e["type"] == "identity_switched" for e in delivered)


def test_a_count_still_running_when_the_daemon_stops_is_recorded_before_the_outbox_closes(
    provisioned, make_test_ca, monkeypatch
) -> None:
    """Stopped while refused: the count goes into the outbox (delivered once the certificate is fixed)."""
    from agent.outbox import Outbox

    config, identity = provisioned
    monkeypatch.setattr(delivery_module, "BACKOFF_MAX_S", 0.2)
    kek = load_kek(config)
    store = IdentityStore(config.agent.state_dir)
    ca_certificates = store.load(kek.encode()).ca_certificates
    foreign = make_test_ca("another site's device CA")
    store.write(*foreign.issue_key_and_cert([identity.device_id], client=True), ca_certificates, kek.encode())
    daemon = AgentDaemon(config)

    async def scenario(logs: list[dict]) -> None:
        await daemon.start()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and sum(e["event"] == "tls_handshake_failed" for e in logs) < 4:
                await asyncio.sleep(0.05)
        finally:
            await daemon.stop()

    with capture_logs() as logs:
        asyncio.run(scenario(logs))
    seen = sum(e["event"] == "tls_handshake_failed" for e in logs)
    assert seen >= 4
    outbox = Outbox(config.agent.state_dir / "outbox.sqlite", kek)
    try:
        queued = outbox.pending(1000)
    finally:
        outbox.close()
    kinds = [e["type"] for e in queued]
    # the flush on stop may itself meet one more refusal (after the summary): counted as a first of its own
    assert kinds.count("tls_handshake_failed") in (1, 2), kinds
    summary = next(e["data"] for e in queued if e["type"] == "tls_handshake_failed_repeated")
    assert summary["until"] == "stopping"
    assert kinds.count("tls_handshake_failed") + summary["repeats"] == seen
    assert kinds.index("tls_handshake_failed_repeated") < kinds.index("agent_stopping")


def test_a_device_failing_the_same_way_is_one_fault_and_counts_ended_by_its_reopen(
    provisioned, verifier, monkeypatch
) -> None:
    """A reader that fails each session the same way (DeviceSupervisor records a `device_fault` per session):
    through the daemon's record path, one event, the count summarised by the timer while it goes on, and the
    rest counted when the device is plugged again; all delivered to the verifier over mTLS."""
    import datetime as dt

    import agent.daemon as daemon_module
    from agent.repeats import RepeatCoalescer

    config, identity = provisioned
    daemon = AgentDaemon(config)
    daemon.repeats = RepeatCoalescer(clock=lambda: dt.datetime.now(dt.UTC), every_s=2.0)
    # the timer's look when nothing is counted (raising=False: the test must fail on code without it, not error)
    monkeypatch.setattr(daemon_module, "SUMMARY_EVERY_S", 0.1, raising=False)
    fault = {"device": "finger", "kind": "zfm", "port": "/dev/ttyUSB0", "error": "no packet", "fix": "check the cable"}

    def kinds_in(logs: list[dict]) -> list[str]:
        return [e["type"] for e in logs if e["event"] == "audit_event"]

    async def scenario(logs: list[dict]) -> list[dict]:
        await daemon.start()
        try:
            for _ in range(5):
                assert daemon.record("device_fault", dict(fault))
            deadline = time.monotonic() + 10  # no event prompts it: the timer's summary
            while "device_fault_repeated" not in kinds_in(logs) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            for _ in range(3):
                daemon.record("device_fault", dict(fault))
            daemon.record("device_plugged", {"device": "finger", "kind": "zfm", "port": "/dev/ttyUSB0"})
            return await _delivered_once(verifier, identity.device_id, "device_plugged")
        finally:
            await daemon.stop()

    with capture_logs() as logs:
        delivered = asyncio.run(scenario(logs))
    kinds = [e["type"] for e in delivered]
    assert kinds.count("device_fault") == 1, kinds
    summaries = [e["data"] for e in delivered if e["type"] == "device_fault_repeated"]
    assert [(s["repeats"], s["until"]) for s in summaries] == [(4, "ongoing"), (3, "ended")], summaries
    assert all(s["device"] == "finger" and s["error"] == "no packet" for s in summaries)
    assert kinds.index("device_fault_repeated") < kinds.index("device_plugged") == len(kinds) - 1, kinds
