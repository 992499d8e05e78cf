"""The verifier holds under an unauthenticated connection flood (issue 10, connections).

Each test runs the real verifier process on 127.0.0.1 and attacks it as anyone
on the network could, with no client certificate: connection churn, idle
connections against a low descriptor limit, half-sent handshakes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from agent.client import VerifierClient
from agent.devstack import LocalVerifier, provision_device
from bench.flood import H2_PREFACE, HALF_CLIENT_HELLO, h2_frame
from tests.conftest import raw_client_context

pytestmark = pytest.mark.slow


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_sockets(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


async def churn(verifier: LocalVerifier, count: int, concurrency: int = 16) -> int:
    """``count`` TLS connections without a client certificate, each opened (handshake done) and closed."""
    ctx = raw_client_context(verifier.pki_dir)
    done = 0
    limit = asyncio.Semaphore(concurrency)

    async def one() -> None:
        nonlocal done
        async with limit:
            try:
                _, writer = await asyncio.open_connection(verifier.host, verifier.port, ssl=ctx)
            except OSError:
                return
            done += 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await asyncio.gather(*(one() for _ in range(count)))
    return done


def settings_file(tmp_path: Path, **values: object) -> tuple[str, ...]:
    path = tmp_path / "verifier.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return ("--config", str(path))


def log_events(verifier: LocalVerifier) -> list[dict]:
    lines = verifier.log_path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_connection_churn_gives_its_memory_and_sockets_back(tmp_path) -> None:
    """1,000 unauthenticated connect-and-close cycles: RSS within +60 MB, sockets back to baseline in 20 s."""
    with LocalVerifier.running(tmp_path / "pki") as verifier:
        pid = verifier.process.pid
        sockets_before = open_sockets(pid)  # the listening socket and the event loop's own
        asyncio.run(churn(verifier, 50))  # warm up: code paths and allocator arenas in use
        assert wait_for(lambda: open_sockets(pid) <= sockets_before, 10)
        rss_before = rss_mb(pid)
        assert asyncio.run(churn(verifier, 1000)) >= 990
        assert wait_for(lambda: open_sockets(pid) <= sockets_before, 20), open_sockets(pid)
        grown = rss_mb(pid) - rss_before
        assert grown < 60, f"RSS grew by {grown:.0f} MB"
        text = verifier.log_path.read_text(errors="replace")
    assert "Traceback" not in text


def test_idle_flood_under_a_low_descriptor_limit_does_not_lock_devices_out(tmp_path) -> None:
    """900 idle unauthenticated connections against a soft limit of 1,024: a device's health still answers fast."""
    extra = settings_file(tmp_path, handshake_timeout_s=2.0)
    with LocalVerifier.running(tmp_path / "pki", extra_args=extra, nofile=1024) as verifier:
        baseline = open_sockets(verifier.process.pid)
        config, identity = asyncio.run(provision_device(verifier, tmp_path / "device", "kiosk-1"))
        ctx = raw_client_context(verifier.pki_dir)

        async def flood_then_health() -> tuple[int, float, int]:
            held: list[asyncio.StreamWriter] = []

            async def hold() -> None:
                try:
                    _, writer = await asyncio.open_connection(verifier.host, verifier.port, ssl=ctx)
                    held.append(writer)
                except OSError:
                    pass

            for _start in range(0, 900, 50):
                await asyncio.gather(*(hold() for _ in range(50)))
            async with VerifierClient(config, identity) as client:
                started = time.perf_counter()
                answer = await client.call("GET", "/v1/health")
                elapsed = time.perf_counter() - started
            for writer in held:
                writer.transport.abort()
            return len(held), elapsed, answer["device_id"] == "kiosk-1"

        opened, elapsed, ok = asyncio.run(flood_then_health())
        assert opened >= 800, opened  # the flood did get its connections opened (then evicted)
        assert ok and elapsed < 1.0, elapsed
        assert wait_for(lambda: open_sockets(verifier.process.pid) <= baseline, 10)
        events = log_events(verifier)
        text = verifier.log_path.read_text(errors="replace")
    assert "Too many open files" not in text and "Traceback" not in text
    assert any(e["event"] == "connection_evicted" for e in events)
    assert len(events) < 200, "the flood is summarised, not logged one line per connection"


def test_half_sent_handshakes_are_closed_at_the_deadline(tmp_path) -> None:
    """Slowloris: a ClientHello started and never finished is dropped within the handshake deadline."""
    extra = settings_file(tmp_path, handshake_timeout_s=1.5)
    with LocalVerifier.running(tmp_path / "pki", extra_args=extra) as verifier:
        sockets = []
        for _ in range(20):
            sock = socket.create_connection((verifier.host, verifier.port))
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a TLS record header and a few bytes
            sockets.append(sock)
        started = time.monotonic()
        closed_after = []
        for sock in sockets:
            sock.settimeout(max(0.1, started + 5.0 - time.monotonic()))
            try:
                data = sock.recv(100)  # the server's close (or an alert, then the close)
                while data:
                    data = sock.recv(100)
            except TimeoutError:
                pass
            except OSError:
                pass
            closed_after.append(time.monotonic() - started)
            sock.close()

        def deadline_logged() -> bool:  # asyncio drops the socket before our handler logs why: poll briefly
            events = log_events(verifier)
            return any(e["event"] == "tls_handshake_failed" and "deadline" in e["reason"] for e in events)

        logged = wait_for(deadline_logged, 5)
    assert max(closed_after) < 1.5 + 1.5, closed_after
    assert logged, "a handshake past its deadline is logged as tls_handshake_failed with the reason"


def open_h2(verifier: LocalVerifier) -> tuple[ssl.SSLSocket, h2.connection.H2Connection]:
    """A raw HTTP/2 connection without a client certificate (for what httpx would never send)."""
    raw = socket.create_connection((verifier.host, verifier.port))
    tls = raw_client_context(verifier.pki_dir).wrap_socket(raw, server_hostname=verifier.host)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    return tls, conn


def read_until_closed(tls: ssl.SSLSocket, conn: h2.connection.H2Connection, limit_s: float) -> tuple[float, int, float]:
    """Until the verifier closes: (seconds, the status it answered or 0, seconds until that answer)."""
    started, status, answered = time.monotonic(), 0, 0.0
    tls.settimeout(limit_s)
    with contextlib.suppress(OSError):
        while data := tls.recv(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status, answered = int(dict(event.headers)[b":status"]), time.monotonic() - started
            tls.sendall(conn.data_to_send())
    return time.monotonic() - started, status, answered


def request_headers(method: str, path: str, **extra: str) -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "https"), (":authority", "localhost"), (":path", path), *extra.items()]


def test_a_connection_without_a_certificate_lives_for_its_est_request_only(tmp_path) -> None:
    """EST over a connection with no client certificate: answered, then closed; an idle one closed on its own."""
    extra = settings_file(tmp_path, unauthenticated_idle_s=1.0)
    with LocalVerifier.running(tmp_path / "pki", extra_args=extra) as verifier:
        tls, conn = open_h2(verifier)
        conn.send_headers(1, request_headers("GET", "/.well-known/est/cacerts"), end_stream=True)
        tls.sendall(conn.data_to_send())
        closed_after, status, _ = read_until_closed(tls, conn, 5.0)
        tls.close()
        idle, idle_conn = open_h2(verifier)
        idle_after, idle_status, _ = read_until_closed(idle, idle_conn, 5.0)
        idle.close()
    assert status == 200 and closed_after < 1.0, (status, closed_after)
    assert idle_status == 0 and 0.8 < idle_after < 3.0, idle_after


def test_a_body_that_never_finishes_gets_408_and_the_connection_is_closed(tmp_path) -> None:
    """A request body that stops coming: 408 within body_timeout_s, and the connection does not stay."""
    extra = settings_file(tmp_path, body_timeout_s=1.0)
    with LocalVerifier.running(tmp_path / "pki", extra_args=extra) as verifier:
        tls, conn = open_h2(verifier)
        headers = request_headers("POST", "/.well-known/est/simpleenroll", authorization="Bearer x")
        conn.send_headers(1, [*headers, ("idempotency-key", "k")])
        conn.send_data(1, b"MIIB")  # and never the rest
        tls.sendall(conn.data_to_send())
        closed_after, status, answered_after = read_until_closed(tls, conn, 8.0)
        tls.close()
    assert status == 408 and 0.9 < answered_after < 2.5, (status, answered_after)
    assert closed_after < 4.0, closed_after


def test_the_guard_evicts_the_oldest_unauthenticated_connection_never_an_authenticated_one() -> None:
    from verifier.connections import ConnectionGuard

    closed: list[str] = []
    guard = ConnectionGuard(max_connections=4, max_unauthenticated=3, max_per_address=3)

    def admit(address: str, label: str):
        conn, evicted = guard.admit(address)
        if conn is not None:
            conn.close = lambda: closed.append(label)
        return conn, evicted

    device, _ = admit("10.0.0.1", "device")
    guard.authenticated(device)
    for i in range(2):
        admit("10.0.0.1", f"flood-{i}")
    assert closed == [] and len(guard) == 3
    third, evicted = admit("10.0.0.1", "flood-2")  # the address is full: its oldest unauthenticated goes
    assert third is not None and closed == ["flood-0"] and evicted == ["per-address cap"]
    other, evicted = admit("10.0.0.2", "other")  # under every cap: nobody goes
    assert other is not None and evicted == [] and len(guard) == 4 and guard.unauthenticated == 3
    another, evicted = admit("10.0.0.3", "another")  # the global cap: the oldest unauthenticated goes
    assert another is not None and closed == ["flood-0", "flood-1"] and evicted == ["connection cap"]
    for conn in (third, other, another):
        guard.authenticated(conn)
    refused, _ = admit("10.0.0.4", "late")  # every connection in the way is authenticated: refused
    assert refused is None and "device" not in closed
    guard.release(device)
    assert admit("10.0.0.4", "late")[0] is not None


def test_the_guard_evicts_connections_stalled_before_their_hello_ahead_of_a_handshake_under_way() -> None:
    from verifier.connections import ConnectionGuard

    closed: list[str] = []
    guard = ConnectionGuard(max_connections=100, max_unauthenticated=4, max_per_address=3)

    def admit(address: str, label: str, *, stalled: bool = True):
        conn, _ = guard.admit(address, stalled=stalled)  # stalled: its ClientHello not in whole
        if conn is not None:
            conn.close = lambda: closed.append(label)
        return conn

    admit("10.0.0.1", "device", stalled=False)  # the oldest, its handshake under way
    for i in range(6):  # half-sent hellos from the device's address
        admit("10.0.0.1", f"half-{i}")
    assert closed == ["half-0", "half-1", "half-2", "half-3"]  # the per-address cap took them, not the device
    late = [admit(f"10.0.1.{i}", f"late-{i}") for i in range(3)]  # the unauthenticated cap (4): same ranks
    assert closed[4:] == ["half-4", "half-5"] and late[2] is not None
    for conn in late:
        guard.hello_received(conn)  # their hellos came in the end: nobody is stalled now
    assert admit("10.0.2.1", "burst", stalled=True) is None  # a stalled newcomer pushes out no handshake: refused
    assert closed[-1] == "half-5"
    admit("10.0.2.2", "whole", stalled=False)  # a newcomer with its hello in: the oldest goes, as before the ranks
    assert closed[-1] == "device"


def slow_device_health(verifier: LocalVerifier, ctx: ssl.SSLContext, pause_s: float) -> int:
    """GET /v1/health over a handshake whose second flight (certificate, Finished) leaves ``pause_s`` late.

    A device on a slow link or a loaded board, played with OpenSSL through memory
    BIOs: the status answered, or 0 if the verifier closed the connection first.
    """
    sock = socket.create_connection((verifier.host, verifier.port), timeout=5)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=verifier.host)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))

    def receive() -> bool:
        data = sock.recv(65536)
        incoming.write(data)
        return bool(data)

    with sock, contextlib.suppress(OSError):
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                if not receive():
                    return 0
        time.sleep(pause_s)
        conn.initiate_connection()
        conn.send_headers(1, request_headers("GET", "/v1/health"), end_stream=True)
        tls.write(conn.data_to_send())
        sock.sendall(outgoing.read())
        while receive():
            for event in conn.receive_data(read_records(tls)):
                if isinstance(event, h2.events.ResponseReceived):
                    return int(dict(event.headers)[b":status"])
    return 0


def read_records(tls: ssl.SSLObject) -> bytes:
    """Every whole record's plaintext in ``tls``'s incoming buffer (one ``read`` stops at a record's end)."""
    plaintext = []
    with contextlib.suppress(ssl.SSLWantReadError):
        while chunk := tls.read(65536):
            plaintext.append(chunk)
    return b"".join(plaintext)


LONG_RECORD = bytes.fromhex("160301400001000000")  # a 16 KiB record announced, holding an empty ClientHello


@pytest.mark.parametrize(
    ("burst", "opening"),
    [(1, HALF_CLIENT_HELLO), (8, HALF_CLIENT_HELLO), (1, LONG_RECORD)],
    ids=["churn", "bursts", "long-record"],
)
def test_a_slow_handshake_outlives_a_flood_of_half_sent_hellos_from_its_address(
    tmp_path, burst: int, opening: bytes
) -> None:
    """Before the ranks, every handshake slower than 8 of the flood's arrivals was evicted from under the device.

    ``bursts``: 8 connections opened silently, then their half hellos sent at once,
    so that the verifier admits them in one turn of its event loop. ``long-record``:
    nine bytes that OpenSSL would wait on, dressed as a whole hello.
    """
    from tests.test_verifier import device_files

    extra = settings_file(tmp_path, max_connections_per_address=8)
    with LocalVerifier.running(tmp_path / "pki", extra_args=extra) as verifier:
        _, identity = asyncio.run(provision_device(verifier, tmp_path / "device", "kiosk-1"))
        ctx = raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path))
        stop = threading.Event()
        opened = 0

        def flood() -> None:  # 127.0.0.1 too: the device's address, as behind one NAT
            nonlocal opened
            held: collections.deque[socket.socket] = collections.deque()
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    batch = [socket.create_connection((verifier.host, verifier.port), timeout=1) for _ in range(burst)]
                    for sock in batch:
                        sock.sendall(opening)
                    held.extend(batch)
                    opened += len(batch)
                while len(held) > 64:
                    held.popleft().close()
                time.sleep(0.002 * burst)
            for sock in held:
                sock.close()

        flooder = threading.Thread(target=flood)
        flooder.start()
        try:
            time.sleep(0.5)
            statuses = [slow_device_health(verifier, ctx, 0.4) for _ in range(3)]
        finally:
            stop.set()
            flooder.join()
        events = log_events(verifier)
    assert opened > 100, opened  # the flood did churn the address's 8 places many times over
    assert any(e["event"] == "connection_evicted" for e in events)
    assert statuses == [200, 200, 200], statuses


@pytest.mark.skipif(not hasattr(socket, "TCP_DEFER_ACCEPT"), reason="a Linux socket option")
def test_the_verifier_accepts_a_connection_once_its_first_bytes_are_in() -> None:
    """TCP_DEFER_ACCEPT: a device's ClientHello is there when it is admitted, so it is never seen stalled."""
    from verifier.server import bind_socket

    listener = bind_socket("127.0.0.1", 0)
    listener.settimeout(0.5)
    with listener, socket.create_connection(listener.getsockname()) as client:
        with pytest.raises(TimeoutError):
            listener.accept()  # connected, nothing sent: not handed over
        client.sendall(HALF_CLIENT_HELLO[:1])
        accepted, _ = listener.accept()
        accepted.close()


def test_a_connection_evicted_before_its_task_ran_is_closed_at_once() -> None:
    """A burst is admitted without a yield: its early members are evicted before their tasks start.

    Cancelling such a task does not run its body, so the server must close the
    socket itself; otherwise the client waits on a connection nobody serves.
    """
    from hypercorn.asyncio.worker_context import WorkerContext

    from verifier.server import ConnectionServer, bind_socket
    from verifier.settings import VerifierSettings

    settings = VerifierSettings(max_connections_per_address=1, handshake_timeout_s=5.0)
    listener = bind_socket("127.0.0.1", 0)
    burst = []
    for _ in range(3):  # queued before the accept loop runs: it takes all three in one go
        client = socket.create_connection(listener.getsockname(), timeout=2)
        client.sendall(HALF_CLIENT_HELLO)  # the first bytes: TCP_DEFER_ACCEPT hands the connection over
        burst.append(client)

    async def accept_for_a_while() -> None:
        server = ConnectionServer(object(), settings, ssl.create_default_context(), WorkerContext(None))
        accepting = asyncio.create_task(server.accept_loop(listener))
        await asyncio.sleep(0.5)
        accepting.cancel()
        for task in list(server.tasks):
            task.cancel()
        await asyncio.gather(accepting, *server.tasks, return_exceptions=True)

    try:
        done = threading.Thread(target=asyncio.run, args=(accept_for_a_while(),))
        done.start()
        closed = []
        for client in burst[:2]:  # evicted by the next one, before their tasks ran
            started = time.monotonic()
            with contextlib.suppress(OSError):
                client.recv(1)  # end of file (or a reset) when closed; a timeout after 2 s if not
            closed.append(time.monotonic() - started < 1.0)
        done.join()
    finally:
        listener.close()
        for client in burst:
            client.close()
    assert closed == [True, True]


def seconds_until_closed(verifier: LocalVerifier, ctx: ssl.SSLContext, frames: bytes) -> float:
    """Seconds until the verifier closes a connection that sent the preface and ``frames``; 0: still open at 1.5 s."""
    raw = socket.create_connection((verifier.host, verifier.port))
    with ctx.wrap_socket(raw, server_hostname=verifier.host) as tls:
        tls.sendall(H2_PREFACE + h2_frame(0x4, 0, b"") + frames)  # the preface, an empty SETTINGS, the frames
        started = time.monotonic()
        tls.settimeout(1.5)
        with contextlib.suppress(TimeoutError):
            while tls.recv(65536):
                pass
            return time.monotonic() - started
    return 0.0


def unknown_frames(kib: int) -> bytes:
    """Frames of an unknown type (0xfa), 1 KiB each: RFC 9113 5.5 says ignore them, so h2 does."""
    return b"".join(h2_frame(0xFA, 0, bytes(1024)) for _ in range(kib))


def test_a_connection_without_a_certificate_is_dropped_past_its_byte_budget(tmp_path) -> None:
    """EST needs about 2 KiB: past unauthenticated_bytes of HTTP/2, anonymous traffic is cut; a device's is not."""
    from tests.test_verifier import device_files

    extra = settings_file(tmp_path, unauthenticated_bytes=32768, unauthenticated_idle_s=10.0)
    with LocalVerifier.running(tmp_path / "pki", extra_args=extra) as verifier:
        anonymous = raw_client_context(verifier.pki_dir)
        within = seconds_until_closed(verifier, anonymous, unknown_frames(24))
        past = seconds_until_closed(verifier, anonymous, unknown_frames(40))
        _, identity = asyncio.run(provision_device(verifier, tmp_path / "device", "kiosk-1"))
        device = raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path))
        device_past = seconds_until_closed(verifier, device, unknown_frames(200))
        log = verifier.log_path.read_text(errors="replace")
    assert within == 0.0 and device_past == 0.0, (within, device_past)
    assert 0.0 < past < 1.0, past
    assert "unauthenticated byte budget spent" in log  # the drop is logged with its reason


def test_a_header_block_of_many_continuation_frames_is_refused_at_once(tmp_path) -> None:
    """h2 alone would buffer 64 frames (1 MiB) of one header block; a 9th is refused (a device's connection)."""
    from tests.test_verifier import device_files

    def block(continuations: int) -> bytes:  # HEADERS (:method GET) without END_HEADERS, then CONTINUATIONs
        return h2_frame(0x1, 1, b"\x82") + b"".join(h2_frame(0x9, 1, bytes(16384)) for _ in range(continuations))

    with LocalVerifier.running(tmp_path / "pki") as verifier:
        _, identity = asyncio.run(provision_device(verifier, tmp_path / "device", "kiosk-1"))
        device = raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path))
        short_block = seconds_until_closed(verifier, device, block(7))  # 8 frames with its HEADERS: the most
        long_block = seconds_until_closed(verifier, device, block(8))
        large, conn = open_h2(verifier)  # a long but honest block still passes: 40 KB of header values
        headers = request_headers("GET", "/.well-known/est/cacerts", **{f"x-pad-{i}": "a1B/" * 1250 for i in range(8)})
        conn.send_headers(1, headers, end_stream=True)
        large.sendall(conn.data_to_send())
        _, large_status, _ = read_until_closed(large, conn, 5.0)
        large.close()
    assert short_block == 0.0  # still waiting for the rest of its block
    assert 0.0 < long_block < 1.0, long_block
    assert large_status == 200


def test_an_authenticated_connection_stays_while_used_and_closes_when_idle(tmp_path) -> None:
    """keep_alive_s counts from the last request: requests keep one connection alive past it, silence ends it."""
    from tests.test_verifier import device_files

    extra = settings_file(tmp_path, keep_alive_s=1.5)
    with LocalVerifier.running(tmp_path / "pki", extra_args=extra) as verifier:
        _, identity = asyncio.run(provision_device(verifier, tmp_path / "device", "kiosk-1"))
        ctx = raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path))
        tls = ctx.wrap_socket(socket.create_connection((verifier.host, verifier.port)), server_hostname=verifier.host)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
        statuses = []
        for stream in (1, 3, 5, 7, 9):  # one request every 0.8 s for 3.2 s, over the same connection
            conn.send_headers(stream, request_headers("GET", "/v1/health"), end_stream=True)
            tls.sendall(conn.data_to_send())
            tls.settimeout(5.0)
            done = False
            while not done:
                data = tls.recv(65536)
                if not data:  # closed by the verifier: the test fails on the statuses below
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        statuses.append(int(dict(event.headers)[b":status"]))
                    done = done or isinstance(event, h2.events.StreamEnded)
                tls.sendall(conn.data_to_send())
            time.sleep(0.8)
        closed_after, _, _ = read_until_closed(tls, conn, 6.0)
        tls.close()
    assert statuses == [200] * 5
    assert closed_after < 1.5 + 1.0, closed_after  # 0.8 s of it had passed already


def test_a_client_that_vanishes_mid_request_leaves_no_connection_behind(tmp_path) -> None:
    """A device killed or unpowered in the middle of a request (headers sent, or part of its body) frees its
    connection at once: before, the answer the app still sent waited for good in hypercorn's send buffer, so
    the connection's task, its slot and its memory stayed, and a shutdown waited its whole graceful timeout."""
    with LocalVerifier.running(tmp_path / "pki") as verifier:
        for part_of_the_body in (b"MIIB", b""):
            tls, conn = open_h2(verifier)
            headers = request_headers("POST", "/.well-known/est/simpleenroll", authorization="Bearer x")
            conn.send_headers(1, [*headers, ("idempotency-key", "k")])
            if part_of_the_body:
                conn.send_data(1, part_of_the_body)
            tls.sendall(conn.data_to_send())
            time.sleep(0.5)  # the request reaches the app
            socket.socket(fileno=tls.detach()).close()  # as a killed process's: FIN, no TLS close_notify
        time.sleep(1.5)  # the verifier reads the end (its TLS shutdown waits SSL_SHUTDOWN_TIMEOUT_S at most)
        started = time.monotonic()
        verifier.stop()
        stopped_after = time.monotonic() - started
    stopping = [e for e in log_events(verifier) if e["event"] == "verifier_stopping"]
    assert stopping[-1]["open_connections"] == 0, stopping[-1]
    assert stopped_after < 5.0, stopped_after  # not the graceful timeout (10 s) spent waiting for them


def test_an_anonymous_flood_neither_silences_nor_unnames_a_devices_refusals() -> None:
    """The flood summary's lines per window were per event name: requests without a certificate (anyone can send
    them) used up `request_refused`'s lines, so a revoked or expired device's refusals were only counted, under a
    reason that names no device (an expired certificate's serial was gone from the audit trail)."""
    from structlog.testing import capture_logs

    from verifier.connections import SUMMARY_BURST, EventSummary

    summary = EventSummary(window_s=3600.0)
    with capture_logs() as logs:
        for _ in range(50):
            summary.note("request_refused", "no client certificate", path="/v1/health")
        for _ in range(SUMMARY_BURST + 3):
            summary.note("request_refused", "certificate expired", path="/v1/health", serial="5eed")
        summary.flush()
    named = [e for e in logs if e["event"] == "request_refused" and e.get("serial") == "5eed"]
    assert len(named) == SUMMARY_BURST, logs  # its own lines, whatever the anonymous flood spent
    (flushed,) = [e for e in logs if e["event"] == "connection_events_summary"]
    assert flushed["counts"] == {
        "request_refused: certificate expired": 3,
        "request_refused: no client certificate": 50 - SUMMARY_BURST,
    }
    assert flushed["by_device"] == {"request_refused: certificate expired": {"5eed": 3}}


@pytest.mark.parametrize(
    ("fault", "event"),
    [("locked", "connection_failed"), ("reset", "connection_broken")],
    ids=["a-fault-of-ours", "the-peer-broke-it"],
)
def test_a_failure_after_the_handshake_closes_that_connection_and_says_whose(tmp_path, fault, event) -> None:
    """The registry's database locked while a device connects: that device's connection is closed at once.

    The fault used to end the connection's task with its TLS transport still open, so the device waited on a
    connection nobody served (until garbage collection closed it) and the log said nothing useful. A broken
    connection (an OSError: a reset, a peer's data after its close_notify) is the peer's doing: counted in the
    flood summary as connection_broken, never an error with a traceback.
    """
    import sqlite3

    from hypercorn.asyncio.worker_context import WorkerContext
    from structlog.testing import capture_logs

    from tests.conftest import TestCA
    from verifier.server import ConnectionServer, bind_socket
    from verifier.settings import VerifierSettings
    from verifier.tls import server_context

    class LockedRegistryApp:
        def active_device(self, certificate: bytes) -> str | None:
            if fault == "reset":
                raise ConnectionResetError(104, "Connection reset by peer")
            raise sqlite3.OperationalError("database is locked")

    ca = TestCA("devices", tmp_path)
    server_cert, server_key = ca.issue("server", ["127.0.0.1"])
    device_cert, device_key = ca.issue("device", ["kiosk-1"], client=True)
    listener = bind_socket("127.0.0.1", 0)
    stop = threading.Event()

    async def serve_until_stopped() -> None:
        server = ConnectionServer(
            LockedRegistryApp(), VerifierSettings(), server_context(server_cert, server_key, ca.ca_file),
            WorkerContext(None),
        )
        accepting = asyncio.create_task(server.accept_loop(listener))
        while not stop.is_set():
            await asyncio.sleep(0.05)
        accepting.cancel()
        for task in list(server.tasks):
            task.cancel()
        await asyncio.gather(accepting, *server.tasks, return_exceptions=True)

    ctx = ssl.create_default_context(cafile=str(ca.ca_file))
    ctx.load_cert_chain(device_cert, device_key)
    ctx.set_alpn_protocols(["h2"])
    with capture_logs() as logs:
        thread = threading.Thread(target=asyncio.run, args=(serve_until_stopped(),))
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=3) as raw,
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                tls.sendall(H2_PREFACE)
                try:
                    closed = tls.recv(1) == b""  # end of file: closed; a timeout (3 s) if left open
                except (ConnectionError, ssl.SSLError):
                    closed = True  # aborted: a reset is a close too
                except TimeoutError:
                    closed = False
        finally:
            stop.set()
            thread.join()
            listener.close()
    assert closed, "the device's connection was left open after the server's fault"
    said = [entry for entry in logs if entry["event"] in ("connection_failed", "connection_broken")]
    assert [entry["event"] for entry in said] == [event], logs
    if fault == "locked":
        assert said[0]["error"] == "OperationalError" and said[0]["log_level"] == "error", said
    else:
        assert said[0]["reason"] == "ConnectionResetError" and "exc_info" not in said[0], said
