"""Request bodies one device can make the verifier hold: a budget per connection, and one for all together.

Each test runs the real verifier on 127.0.0.1 over real TLS and HTTP/2, with a raw
h2 client holding a provisioned device's certificate (for what httpx never sends:
many streams of large bodies at once, a body that does not end). hypercorn
acknowledges every DATA frame as soon as it is queued for the app, so flow control
never held such a client back: 100 streams each sending just under 1 MiB made the
verifier hold 100 MiB for one connection (RSS from 98 to 204 MB, measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from agent.client import VerifierClient
from agent.devstack import LocalVerifier, provision_device
from protocol import endpoints
from tests.conftest import raw_client_context
from tests.test_verifier import device_files
from tests.test_verifier_connections import request_headers, rss_mb

pytestmark = pytest.mark.slow

FRAME = 16384  # the verifier's largest DATA frame (hypercorn's h2_max_inbound_frame_size)


@dataclass
class Answers:
    """What the verifier answered on each stream of a raw connection."""

    status: dict[int, int] = field(default_factory=dict)
    headers: dict[int, dict[bytes, bytes]] = field(default_factory=dict)
    body: dict[int, bytes] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)

    def problem(self, stream: int) -> dict:
        return json.loads(self.body[stream])


class RawDevice:
    """One HTTP/2 connection carrying a device's certificate, driven frame by frame, within flow control."""

    def __init__(self, verifier: LocalVerifier, ctx: ssl.SSLContext) -> None:
        raw = socket.create_connection((verifier.host, verifier.port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # else Nagle and delayed ACKs pace the windows
        self.tls = ctx.wrap_socket(raw, server_hostname=verifier.host)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.tls.sendall(self.conn.data_to_send())
        self.answers = Answers()
        self.to_send: dict[int, int] = {}  # body bytes each stream has still to send
        self.ends: set[int] = set()  # streams whose body ends once sent

    def post(self, stream: int, size: int, *, end: bool = True) -> None:
        """Open ``stream`` with a POST to /v1/events whose body is ``size`` spaces (sent by :meth:`pump`)."""
        headers = request_headers("POST", endpoints.EVENTS, **{"idempotency-key": f"k{stream}",
                                                               "content-type": "application/json"})
        self.conn.send_headers(stream, headers)
        self.to_send[stream] = size
        if end:
            self.ends.add(stream)

    def get(self, stream: int, path: str) -> None:
        self.conn.send_headers(stream, request_headers("GET", path), end_stream=True)
        self.tls.sendall(self.conn.data_to_send())

    def end(self, stream: int) -> None:
        self.ends.add(stream)

    def pump(self, until: set[int], limit_s: float = 30.0) -> Answers:
        """Send what flow control allows and read answers until every body is sent and every stream of ``until``
        answered whole."""
        self._exchange(lambda: until <= self.answers.done and not any(self.to_send.values()), limit_s)
        return self.answers

    def wait_for_status(self, stream: int, limit_s: float = 30.0) -> int | None:
        """Read until ``stream``'s answer has begun (its status: headers are not flow-controlled), or ``limit_s``."""
        self._exchange(lambda: stream in self.answers.status, limit_s)
        return self.answers.status.get(stream)

    def _exchange(self, done: Callable[[], bool], limit_s: float) -> None:
        """Send within the windows and read what comes until ``done()``, ``limit_s``, or the connection's end."""
        deadline = time.monotonic() + limit_s
        self.tls.settimeout(0.01)
        while time.monotonic() < deadline and not done():
            try:
                self._send_some()
                data = self.tls.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # the verifier closed the connection (TLS EOF, reset): what was answered stays
                break
            if not data:
                break
            self._receive(data)

    def _send_some(self) -> None:
        """A frame of each stream in turn (as a client multiplexing its requests does), within the windows."""
        for stream, left in list(self.to_send.items()):
            try:
                if left > 0 and (room := min(self.conn.local_flow_control_window(stream), left, FRAME)) > 0:
                    self.conn.send_data(stream, b" " * room)
                    left -= room
                if left == 0 and stream in self.ends:
                    self.conn.end_stream(stream)
                    del self.to_send[stream]
                else:
                    self.to_send[stream] = left
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                del self.to_send[stream]  # answered and closed before its body was all sent
        self.tls.sendall(self.conn.data_to_send())

    def _receive(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                headers = dict(event.headers)
                self.answers.status[event.stream_id] = int(headers[b":status"])
                self.answers.headers[event.stream_id] = headers
            elif isinstance(event, h2.events.DataReceived):
                self.answers.body[event.stream_id] = self.answers.body.get(event.stream_id, b"") + event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                self.answers.done.add(event.stream_id)
        self.tls.sendall(self.conn.data_to_send())

    def close(self) -> None:
        self.tls.close()


@contextlib.contextmanager
def budgeted_verifier(tmp_path: Path) -> Iterator[LocalVerifier]:
    """The verifier with its connection body budgets as they are, and the events route's byte rate
    (device_event_bytes_per_min, 2 MiB a minute) out of the way: these tests hold and send several MiB of bodies
    to that route to reach the connection's budget, and the byte rate would answer 429 first."""
    settings = tmp_path / "verifier.toml"
    settings.write_text("device_event_bytes_per_min = 1073741824\n")
    with LocalVerifier.running(tmp_path / "pki", extra_args=("--config", str(settings))) as verifier:
        yield verifier


def device_context(verifier: LocalVerifier, tmp_path: Path, name: str) -> tuple[ssl.SSLContext, object, object]:
    config, identity = asyncio.run(provision_device(verifier, tmp_path / name, name))
    (tmp_path / name / "raw").mkdir()
    return raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path / name / "raw")), config, identity


def well_behaved(config, identity) -> tuple[int, int]:
    """The agent's own client on its own connection: a health check and a batch of no events."""

    async def run() -> tuple[int, int]:
        async with VerifierClient(config, identity) as client:
            health = await client.request("GET", endpoints.HEALTH)
            events = await client.request("POST", endpoints.EVENTS, json={"events": []})
            return health.status_code, events.status_code

    return asyncio.run(run())


def test_a_body_past_the_connections_budget_is_refused_503_and_other_connections_are_served(tmp_path) -> None:
    """Streams 1, 3, 5 and 7 hold 1,000 KiB each of bodies that do not end (each within max_body_bytes); a 200 KiB
    body on the same connection would take it past connection_body_bytes (4 MiB by default): refused 503
    ``connection-busy`` naming the setting, with Retry-After, while the device's other connection is served. Once
    the four end and are answered, their bytes are given back and the same 200 KiB body is taken. Before, the
    verifier took every body (up to 100 streams of 1 MiB each on one connection)."""
    with budgeted_verifier(tmp_path) as verifier:
        ctx, config, identity = device_context(verifier, tmp_path, "kiosk-1")
        device = RawDevice(verifier, ctx)
        held = [1, 3, 5, 7]
        try:
            for stream in held:
                device.post(stream, 1000 * 1024, end=False)
            device.pump(set())  # all of it sent: the verifier's flow control lets it go (it acknowledges at once)
            device.get(9, endpoints.HEALTH)  # answered once the bodies' bytes, queued before it, were all read
            device.pump({9})
            device.post(11, 200 * 1024)
            refused = device.pump({11})
            other = well_behaved(config, identity)
            for stream in held:
                device.end(stream)
            device.pump(set(held))
            device.post(13, 200 * 1024)
            after = device.pump({13})
        finally:
            device.close()
    assert refused.status[9] == 200 and refused.status[11] == 503, refused.status
    problem = refused.problem(11)
    assert problem["type"].endswith("/connection-busy"), problem
    assert "connection_body_bytes" in problem["detail"] and "wait for the answers" in problem["fix"], problem
    assert refused.headers[11][b"retry-after"] == b"1"
    assert other == (200, 200), "a well-behaved connection of the same device was refused"
    assert [after.status[s] for s in held] == [400] * 4, after.status  # spaces are no JSON: read whole, then judged
    assert after.status[13] == 400, after.status  # taken: the four gave their bytes back once answered


def test_a_body_too_large_is_refused_413_however_much_of_it_the_verifier_reads_and_drops(tmp_path) -> None:
    """6 MiB on one stream: refused 413 ``too-large`` past max_body_bytes, its rest read and dropped. What the drain
    drops is never held, so it spends no budget: when it was counted (the first version of the budget), the drain
    passed connection_body_bytes and raised out of the refusal, and the 413 never came."""
    with LocalVerifier.running(tmp_path / "pki") as verifier:
        ctx, _, _ = device_context(verifier, tmp_path, "kiosk-1")
        device = RawDevice(verifier, ctx)
        try:
            device.post(1, 6 << 20)
            answers = device.pump({1})
            device.post(3, 1000 * 1024)  # and the connection's budget is all there for the next body
            after = device.pump({3})
        finally:
            device.close()
    assert answers.status.get(1) == 413 and answers.problem(1)["type"].endswith("/too-large"), answers.status
    assert after.status.get(3) == 400, after.status  # read whole, then judged (spaces are no JSON)


def test_each_body_budget_must_hold_one_whole_body() -> None:
    """A budget below max_body_bytes would refuse, on an idle verifier, a body the verifier otherwise accepts."""
    from verifier.settings import SettingsError, VerifierSettings

    assert VerifierSettings().updated(connection_body_bytes=1 << 20).connection_body_bytes == 1 << 20
    for values in ({"connection_body_bytes": (1 << 20) - 1}, {"total_body_bytes": 1 << 19},
                   {"connection_body_bytes": 8 << 20, "total_body_bytes": 6 << 20}):
        with pytest.raises(SettingsError) as refused:
            VerifierSettings().updated(**values)
        assert "at least" in refused.value.fix, refused.value.fix


def test_one_connection_of_many_large_bodies_holds_its_budget_not_a_hundred_mebibytes(tmp_path) -> None:
    """100 streams at once, each sending just under max_body_bytes (1 MiB) and then holding it (not ended): at most
    connection_body_bytes (4 MiB by default) are held, the rest refused 503; the verifier's RSS grows by a few MB,
    not the 105 MB measured before, and a well-behaved connection is served meanwhile."""
    with budgeted_verifier(tmp_path) as verifier:
        ctx, config, identity = device_context(verifier, tmp_path, "kiosk-1")
        pid = verifier.process.pid
        assert well_behaved(config, identity) == (200, 200)  # warm: the code paths of a request are in memory
        before = rss_mb(pid)
        device = RawDevice(verifier, ctx)
        streams = list(range(1, 201, 2))
        try:
            for stream in streams:
                device.post(stream, (1 << 20) - 4096, end=False)
            device.pump(set())  # every body sent, none ended: what the verifier kept of them, it holds now
            grown = rss_mb(pid) - before
            other = well_behaved(config, identity)
            for stream in streams:
                device.end(stream)
            answers = device.pump(set(streams), limit_s=60.0)
        finally:
            device.close()
    statuses = [answers.status.get(stream) for stream in streams]
    assert set(statuses) <= {400, 503}, statuses  # each read whole (no JSON: 400) or refused; none left waiting
    assert statuses.count(503) >= 50, statuses
    assert grown < 40, f"RSS grew by {grown:.0f} MB"
    assert other == (200, 200)


def test_answered_bodies_give_their_bytes_back_though_the_client_reads_no_answer(tmp_path) -> None:
    """A client that opens no flow-control window for answers (SETTINGS_INITIAL_WINDOW_SIZE 0): four bodies of
    1,000 KiB are read whole and answered (400, spaces are no JSON), but no answer's body can be sent, so each
    stream's app waits in its last send. What the four bodies held is no longer held (the answers are made): a
    fifth body of 200 KiB on the same connection is read whole (400), not refused 503 ``connection-busy``. Before,
    the bytes were given back only once the answer was out, never for such a client: the connection's budget, and
    with eight such connections per device a share of total_body_bytes, stayed spent until it closed."""
    import h2.settings

    with budgeted_verifier(tmp_path) as verifier:
        ctx, _, _ = device_context(verifier, tmp_path, "kiosk-1")
        device = RawDevice(verifier, ctx)
        try:
            device.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
            held = [1, 3, 5, 7]
            for stream in held:
                device.post(stream, 1000 * 1024)
            device.pump(set())
            first = [device.wait_for_status(stream) for stream in held]
            device.post(11, 200 * 1024)
            device.pump(set())
            fifth = device.wait_for_status(11)
        finally:
            device.close()
    assert first == [400] * 4, first  # answered: the answers' headers came, their bodies wait for a window
    assert fifth == 400, f"the fifth body was answered {fifth}: the unsent answers still held the budget"
