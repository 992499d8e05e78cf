"""A connection that ends while an answer is still waiting to be sent starts no idle timer.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import threading
import warnings
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from hypercorn.asyncio.worker_context import WorkerContext

from bench.flood import h2_frame
from tests.conftest import TestCA
from verifier.server import ConnectionServer, bind_socket
from verifier.settings import VerifierSettings

ANSWER = b'{"type": "bad-csr"}'
DATA_ON_STREAM_0 = h2_frame(0x0, 0, b"")  # a connection error (RFC 9113 6.1): the server closes
PING = h2_frame(0x6, 0, b"8 bytes!")


async def refusing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers 400 with a body, as the verifier does to a bad EST request."""
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(ANSWER)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


def serve_in_thread(listener: socket.socket, ca: TestCA, stop: threading.Event) -> threading.Thread:
    server_cert, server_key = ca.issue("server", ["127.0.0.1"])

    async def serve_until_stopped() -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(server_cert, server_key)
        context.set_alpn_protocols(["h2"])
        server = ConnectionServer(refusing_app, VerifierSettings(), context, WorkerContext(None))
        accepting = asyncio.create_task(server.accept_loop(listener))
        while not stop.is_set() or server.tasks:  # the connection's own end first, then the accept loop
            await asyncio.sleep(0.02)
        accepting.cancel()
        await asyncio.gather(accepting, return_exceptions=True)

    thread = threading.Thread(target=asyncio.run, args=(serve_until_stopped(),))
    thread.start()
    return thread


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
    stop = threading.Event()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        thread = serve_in_thread(listener, ca, stop)
        try:
            closed_first = answer_held_then_protocol_broken(listener.getsockname()[:2], ca)
        finally:
            stop.set()
            thread.join(10)
            listener.close()
        gc.collect()  # the refused coroutine is held by the refusal's traceback until a collection
    assert closed_first, "the server had not closed the connection before the client's last data"
    never_awaited = [str(w.message) for w in caught if "was never awaited" in str(w.message)]
    assert never_awaited == [], never_awaited
