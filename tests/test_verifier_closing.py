"""A connection that is ending starts no idle timer.

Found by ``fuzz/verifier_requests.py --seed 22``: once in about 7,000 requests the
verifier wrote ``RuntimeWarning: coroutine 'GuardedTCPServer._idle_timeout' was
never awaited`` on its stderr. The sequence, reproduced here on a real TLS
connection to the real server layer: an answer waits for the client's HTTP/2 flow
control window (here 0, so it waits for good); the client then breaks the HTTP/2
protocol, so hypercorn closes the connection; the client sends more data after the
server's close_notify, so closing fails with an SSLError that leaves hypercorn's
read loop and makes the connection's task group cancel its tasks. The cancelled
answer's task ends its stream, and hypercorn answers that with an ``Updated(idle=True)``
event, which made a new idle-timer coroutine the task group, shutting down, refused:
the coroutine was never awaited (and the refusal, a RuntimeError, was one more
error of that connection).

The same restart, after a read loop that ended normally (the peer gone, its request
answered afterwards), kept the connection for the whole keep-alive time: the second
test. The third: a close whose close_notify the peer never answers is counted under
its own reason, not the handshake's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import threading
import warnings
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from hypercorn.asyncio.worker_context import WorkerContext

from agent.devstack import LocalVerifier
from bench.flood import h2_frame
from tests.conftest import TestCA
from tests.test_verifier_connections import log_events, open_h2, request_headers, wait_for
from verifier.server import ConnectionServer, bind_socket
from verifier.settings import VerifierSettings
from verifier.tls import server_context

ANSWER = b'{"type": "bad-csr"}'
DATA_ON_STREAM_0 = h2_frame(0x0, 0, b"")  # a connection error (RFC 9113 6.1): the server closes
PING = h2_frame(0x6, 0, b"8 bytes!")
CONNECTIONS_END_S = 10.0  # a connection whose peer is gone ends in well under this; a lingering one stays 600 s


async def refusing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers 400 with a body, as the verifier does to a bad EST request."""
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(ANSWER)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


class LateAnsweringApp:
    """A device's app that answers once the request is over, as the verifier answers a cut body (a problem)."""

    def active_device(self, certificate: bytes) -> str:
        return "kiosk-1"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        await refusing_app(scope, receive, send)


class ServerThread(threading.Thread):
    """ConnectionServer (the verifier's server layer: GuardedTCPServer per connection) on ``listener``.

    After ``stop`` it waits for its connections' tasks to end on their own, up to ``CONNECTIONS_END_S`` (far
    less than keep_alive_s), then cancels the rest; ``left_open`` counts those, 0 when all ended.
    """

    def __init__(self, app: Any, listener: socket.socket, ca: TestCA) -> None:
        super().__init__()
        self.app, self.listener = app, listener
        self.cert_files = ca.issue("server", ["127.0.0.1"])
        self.ca_file = ca.ca_file
        self.stop = threading.Event()
        self.left_open = -1

    def run(self) -> None:
        asyncio.run(self.serve())

    async def serve(self) -> None:
        server = ConnectionServer(self.app, VerifierSettings(), server_context(*self.cert_files, self.ca_file),
                                  WorkerContext(None))
        accepting = asyncio.create_task(server.accept_loop(self.listener))
        while not self.stop.is_set():
            await asyncio.sleep(0.02)
        accepting.cancel()
        if server.tasks:
            await asyncio.wait(set(server.tasks), timeout=CONNECTIONS_END_S)
        self.left_open = len(server.tasks)
        for task in list(server.tasks):
            task.cancel()
        await asyncio.gather(accepting, *server.tasks, return_exceptions=True)


def answer_held_then_protocol_broken(address: tuple[str, int], ca: TestCA) -> bool:
    """The client side of the sequence; True when the server closed the connection (close_notify) before
    the client's last data."""
    ctx = ssl.create_default_context(cafile=str(ca.ca_file))
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(address, timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})  # the answer's body must wait
        request = [(":method", "POST"), (":scheme", "https"), (":authority", "127.0.0.1"), (":path", "/est")]
        conn.send_headers(1, request, end_stream=True)
        tls.sendall(conn.data_to_send())
        answered = False
        while not answered:  # the answer's HEADERS: its body now waits in the server's stream buffer
            data = tls.recv(65536)
            assert data, "the server closed before answering"
            answered = any(isinstance(event, h2.events.ResponseReceived) for event in conn.receive_data(data))
        tls.sendall(DATA_ON_STREAM_0)
        with contextlib.suppress(ssl.SSLError):
            while tls.recv(65536):  # the GOAWAY, then b"" at the server's close_notify
                pass
        try:
            tls.sendall(PING)  # data after the server's close_notify: its TLS shutdown fails
        except OSError:
            return False
        return True


def test_an_answer_cancelled_by_a_failed_close_starts_no_idle_timer(ca: TestCA) -> None:
    listener = bind_socket("127.0.0.1", 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        server = ServerThread(refusing_app, listener, ca)
        server.start()
        try:
            closed_first = answer_held_then_protocol_broken(listener.getsockname()[:2], ca)
        finally:
            server.stop.set()
            server.join(CONNECTIONS_END_S + 5)
            listener.close()
        gc.collect()  # the refused coroutine is held by the refusal's traceback until a collection
    assert closed_first, "the server had not closed the connection before the client's last data"
    never_awaited = [str(w.message) for w in caught if "was never awaited" in str(w.message)]
    assert never_awaited == [], never_awaited
    assert server.left_open == 0


def test_an_answer_after_the_device_vanished_leaves_no_connection_behind(ca: TestCA) -> None:
    """A device gone in the middle of a request (power cut: a FIN, no close_notify), answered afterwards.

    The answer's stream end restarted the idle timer after the read loop had ended and stopped it, so the
    connection's task (its slot under the per-device cap, its memory) stayed for the device's keep-alive
    time (600 s by default) instead of ending at once.
    """
    listener = bind_socket("127.0.0.1", 0)
    device_cert, device_key = ca.issue("device", ["kiosk-1"], client=True)
    server = ServerThread(LateAnsweringApp(), listener, ca)
    server.start()
    try:
        ctx = ssl.create_default_context(cafile=str(ca.ca_file))
        ctx.load_cert_chain(device_cert, device_key)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(listener.getsockname()[:2], timeout=5)
        tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        request = [(":method", "POST"), (":scheme", "https"), (":authority", "127.0.0.1"), (":path", "/x")]
        conn.send_headers(1, request)  # and never the body
        tls.sendall(conn.data_to_send())
        assert tls.recv(65536), "the server's SETTINGS: the connection is served"
        socket.socket(fileno=tls.detach()).close()  # as a killed process's: FIN, no TLS close_notify
    finally:
        server.stop.set()
        server.join(CONNECTIONS_END_S + 5)
        listener.close()
    assert server.left_open == 0, "the connection outlived its device"


def test_a_close_notify_the_peer_never_answers_is_named_as_such_not_as_the_handshake(tmp_path: Path) -> None:
    """A client that keeps its socket open after the verifier's close_notify and sends nothing, not even its own:
    asyncio's wait for the close_notify ends at SSL_SHUTDOWN_TIMEOUT_S with a TimeoutError raised out of
    hypercorn's close, and the verifier counted it as `connection_broken` with the reason "handshake deadline
    passed", long after the handshake had succeeded: an operator reading the log looked for slow handshakes."""
    with LocalVerifier.running(tmp_path / "pki") as verifier:
        tls, conn = open_h2(verifier)
        conn.send_headers(1, request_headers("GET", "/.well-known/est/cacerts"), end_stream=True)
        tls.sendall(conn.data_to_send())
        with contextlib.suppress(ssl.SSLError):
            while tls.recv(65536):  # the answer, then b"" at the verifier's close_notify (answered: closed)
                pass
        try:  # and nothing more from this side while the verifier waits
            assert wait_for(lambda: broken(verifier), 10.0), "the close failed: counted as a broken connection"
        finally:
            tls.close()
    assert [event["reason"] for event in broken(verifier)] == ["no close_notify from the peer in time"]


def broken(verifier: LocalVerifier) -> list[dict]:
    return [event for event in log_events(verifier) if event["event"] == "connection_broken"]
