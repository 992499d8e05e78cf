"""Floods of cheap requests: what one connection without a certificate, or one stolen device, can make the verifier
do and write to its audit log.

Each test runs the real verifier on 127.0.0.1 over real TLS and HTTP/2. An HTTP/2
connection carries any number of streams, and a stream reset at once (RST_STREAM,
the "rapid reset" of CVE-2023-44487) no longer counts against the concurrent
streams the server allows, while its request still reaches the application. So
the bounds are per request and per connection, not per stream.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from collections import Counter

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from agent.client import VerifierClient
from agent.devstack import LocalVerifier, provision_device
from protocol import endpoints
from tests.conftest import raw_client_context
from tests.test_verifier import device_files
from tests.test_verifier_connections import log_events, open_h2, read_until_closed, request_headers
from verifier.connections import SUMMARY_BURST
from verifier.server import UNAUTHENTICATED_REQUESTS

pytestmark = pytest.mark.slow


def counted(events: list[dict], event: str) -> tuple[int, int]:
    """(events logged one by one, events only counted in the flood summaries) of one kind."""
    one_by_one = sum(e["event"] == event for e in events)
    summarised = sum(
        n
        for e in events
        if e["event"] == "connection_events_summary"
        for kind, n in e["counts"].items()
        if kind.startswith(f"{event}: ")
    )
    return one_by_one, summarised


def test_a_connection_without_a_certificate_gets_no_more_requests_than_est_needs(tmp_path) -> None:
    """Hundreds of streams opened and reset at once on one anonymous connection: before, each reached the app
    and wrote its own `request_refused` audit line (about 450 per TLS handshake, up to the byte budget)."""
    with LocalVerifier.running(tmp_path / "pki") as verifier:
        tls, conn = open_h2(verifier)
        for stream in range(1, 601, 2):  # 300 requests, each reset as soon as it is sent
            conn.send_headers(stream, request_headers("GET", "/v1/health"), end_stream=True)
            conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        tls.sendall(conn.data_to_send())
        closed_after, _, _ = read_until_closed(tls, conn, 5.0)
        tls.close()
        est, est_conn = open_h2(verifier)  # EST on a new connection is served as before
        est_conn.send_headers(1, request_headers("GET", "/.well-known/est/cacerts"), end_stream=True)
        est.sendall(est_conn.data_to_send())
        _, est_status, _ = read_until_closed(est, est_conn, 5.0)
        est.close()
        verifier.stop()  # the flood summary of the last window is written at the stop
    events = log_events(verifier)
    one_by_one, summarised = counted(events, "request_refused")
    assert closed_after < 2.0, closed_after
    assert one_by_one <= SUMMARY_BURST, one_by_one
    assert one_by_one + summarised <= UNAUTHENTICATED_REQUESTS, (one_by_one, summarised)
    assert est_status == 200
    refused = [e for e in events if e["event"] == "connection_refused"]
    assert any("requests without a client certificate" in e["reason"] for e in refused), refused


def test_a_stolen_device_flooding_past_its_rate_or_revoked_writes_a_bounded_audit_log(tmp_path) -> None:
    """600 challenges at once (120 a minute are allowed), then, revoked, 300 health checks on its open connection:
    each refusal is counted, the first few of a window logged one by one, the rest in the flood summary. Before,
    every one of them was its own audit line (480, then 300), about a thousand per HTTP/2 connection."""
    with LocalVerifier.running(tmp_path / "pki") as verifier:
        config, identity = asyncio.run(provision_device(verifier, tmp_path / "device", "kiosk-1"))

        async def flood() -> tuple[Counter[int], Counter[int]]:
            async with VerifierClient(config, identity) as client:
                asked = [client.request("POST", endpoints.CHALLENGES, json={}) for _ in range(600)]
                challenges = Counter(r.status_code for r in await asyncio.gather(*asked))
                await asyncio.to_thread(verifier.revoke, identity.device_id)
                checks = [client.request("GET", endpoints.HEALTH) for _ in range(300)]
                health = Counter(r.status_code for r in await asyncio.gather(*checks))
                return challenges, health

        challenges, health = asyncio.run(flood())
        verifier.stop()  # the flood summary of the last window is written at the stop
    events = log_events(verifier)
    assert challenges == {201: 120, 429: 480}, challenges
    assert health == {403: 300}, health
    refused, refused_summarised = counted(events, "biometric_request_refused")
    assert refused <= SUMMARY_BURST and refused + refused_summarised == 480, (refused, refused_summarised)
    revoked, revoked_summarised = counted(events, "request_refused")
    assert revoked <= SUMMARY_BURST and revoked + revoked_summarised == 300, (revoked, revoked_summarised)
    first = next(e for e in events if e["event"] == "biometric_request_refused")
    assert (first["device_id"], first["reason"], first["status"]) == ("kiosk-1", "challenge rate limit", 429)


def device_connection(verifier: LocalVerifier, ctx) -> tuple[socket.socket | None, h2.connection.H2Connection]:
    """A raw HTTP/2 connection with a device's certificate; None when the verifier refused it."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    try:
        tls = ctx.wrap_socket(socket.create_connection((verifier.host, verifier.port)), server_hostname=verifier.host)
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
    except OSError:
        return None, conn
    return tls, conn


def health_statuses(tls: socket.socket | None, conn: h2.connection.H2Connection, streams: list[int]) -> list[int]:
    """GET /v1/health on each of ``streams`` at once: the statuses answered before the verifier closed or 2 s."""
    if tls is None:
        return []
    statuses: list[int] = []
    try:
        for stream in streams:
            conn.send_headers(stream, request_headers("GET", endpoints.HEALTH), end_stream=True)
        tls.sendall(conn.data_to_send())
        tls.settimeout(2.0)
        while len(statuses) < len(streams) and (data := tls.recv(65536)):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    statuses.append(int(dict(event.headers)[b":status"]))
            tls.sendall(conn.data_to_send())
    except (OSError, h2.exceptions.ProtocolError):
        pass
    return statuses


def test_one_devices_certificate_holds_a_few_connections_and_a_revoked_one_none_a_device_keeps(tmp_path) -> None:
    """A stolen certificate opening connection after connection: before, each was "authenticated", never evicted,
    so one device (from enough addresses) could take every slot of max_connections and lock every other device
    out; and a revoked certificate, which still passes the handshake, was just as good for it."""
    settings = tmp_path / "verifier.toml"
    settings.write_text(f"max_connections = {json.dumps(12)}\n")
    with LocalVerifier.running(tmp_path / "pki", extra_args=("--config", str(settings))) as verifier:
        ctx = {}
        for name in ("kiosk-1", "kiosk-2"):
            _, identity = asyncio.run(provision_device(verifier, tmp_path / name, name))
            (tmp_path / name / "raw").mkdir()
            ctx[name] = raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path / name / "raw"))
        stolen, opened = [], []
        for _ in range(12):  # one after the other, each with a request answered
            stolen.append(device_connection(verifier, ctx["kiosk-1"]))
            opened.append(health_statuses(*stolen[-1], [1]))
        other = health_statuses(*device_connection(verifier, ctx["kiosk-2"]), [1])
        oldest, newest = health_statuses(*stolen[0], [3]), health_statuses(*stolen[-1], [3])
        verifier.revoke("kiosk-1")
        again, revoked = device_connection(verifier, ctx["kiosk-1"]), []
        for stream in range(1, 21, 2):  # ten requests, one after the other, until the verifier closes
            answered = health_statuses(*again, [stream])
            if not answered:
                break
            revoked += answered
        for tls, _ in stolen:
            if tls is not None:
                tls.close()
    assert opened == [[200]] * 12, opened
    assert other == [200], "a second device got no connection: the stolen certificate held them all"
    assert oldest == [] and newest == [200], (oldest, newest)  # the device's oldest connections made room
    assert revoked == [403] * UNAUTHENTICATED_REQUESTS, revoked  # a revoked certificate is anybody's: 4 requests


def forged_event(seq: int) -> dict:
    """An audit event in the protocol's shape whose hash is not its content's: stored as an anomaly."""
    return {"id": f"forged-{seq}", "seq": seq, "prev": "0" * 64, "type": "x", "time": "t", "data": {}, "hash": "1" * 64}


def test_a_stolen_device_sending_forged_event_batches_is_slowed_and_logged_once_a_batch(tmp_path) -> None:
    """100 batches of 100 forged events, as fast as the device can: before, all were taken and each event was
    its own audit line (10,000 lines and anomaly rows in a few seconds; a 1 MiB batch holds 500)."""
    with LocalVerifier.running(tmp_path / "pki") as verifier:
        config, identity = asyncio.run(provision_device(verifier, tmp_path / "device", "kiosk-1"))

        async def flood() -> Counter[int]:
            async with VerifierClient(config, identity) as client:
                statuses: Counter[int] = Counter()
                for batch in range(100):
                    events = [forged_event(batch * 100 + i + 1) for i in range(100)]
                    statuses[(await client.request("POST", endpoints.EVENTS, json={"events": events})).status_code] += 1
                return statuses

        statuses = asyncio.run(flood())
        verifier.stop()
    events = log_events(verifier)
    with sqlite3.connect(tmp_path / "pki" / "verifier.sqlite") as db:
        rows = db.execute("SELECT COUNT(*) FROM audit_anomalies").fetchone()[0]
    assert statuses == {200: 60, 429: 40}, statuses  # device_events_per_min: 6,000
    assert rows == 60 * 100
    anomalies = [e for e in events if e["event"] == "audit_chain_anomaly"]
    assert len(anomalies) == 60 and {e["kinds"] for e in anomalies} == {"bad_hash:100"}, anomalies[:2]
    refused, summarised = counted(events, "events_refused")
    assert refused <= SUMMARY_BURST and refused + summarised == 40, (refused, summarised)
