"""A small TLS + HTTP/2 server for tests that need to misbehave on purpose.

The real verifier (hypercorn) is what production runs, and most tests use it.
This harness exists for what a well-behaved server never does: cut a request
with GOAWAY after handling it, speak only HTTP/1.1, offer only TLS 1.1, or record
exactly which bytes reached it (to show a refused client sent none). It runs any
ASGI app, the verifier's included, with the client certificate taken from its own
TLS connection, exactly as the verifier's server layer does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events

from verifier.tls import tls_scope_extension

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


@dataclass
class ServerLog:
    """What reached the server, for assertions from the test's side."""

    handshakes_ok: int = 0
    handshakes_failed: int = 0
    app_bytes: int = 0  # application bytes received after a completed handshake
    requests: list[tuple[str, str]] = field(default_factory=list)
    idempotency_keys: list[str | None] = field(default_factory=list)
    client_subjects: list[str] = field(default_factory=list)  # peer certificate CN per request
    handled: int = 0  # requests the app ran to completion
    goaways_sent: int = 0


class H2TestServer:
    """Serve an ASGI app over TLS + HTTP/2 on 127.0.0.1, in a thread, with fault knobs."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        app: ASGIApp | None = None,
        *,
        goaway_after_handling: int = 0,
        http1_only: bool = False,
    ) -> None:
        self.ssl_context = ssl_context
        self.app = app or hello_app
        self.goaway_after_handling = goaway_after_handling  # cut the Nth handled request
        self.http1_only = http1_only
        self.log = ServerLog()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> H2TestServer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._stop_event.set)
        assert self._thread is not None
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop_event.wait()
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    # -- connections -------------------------------------------------------
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(self.ssl_context)
        except (ssl.SSLError, OSError, ConnectionError):
            self.log.handshakes_failed += 1
            writer.close()
            return
        self.log.handshakes_ok += 1
        ssl_object = writer.get_extra_info("ssl_object")
        try:
            if self.http1_only:
                await self._serve_http1(reader, writer)
            else:
                await self._serve_h2(reader, writer, ssl_object)
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            writer.close()

    async def _serve_http1(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(65536)
        self.log.app_bytes += len(data)
        if data:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    async def _serve_h2(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ssl_object: ssl.SSLObject
    ) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, dict[str, Any]] = {}
        while True:
            data = await reader.read(65536)
            if not data:
                return
            self.log.app_bytes += len(data)
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    streams[event.stream_id] = {"headers": event.headers, "body": b""}
                elif isinstance(event, h2.events.DataReceived):
                    streams[event.stream_id]["body"] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    request = streams.pop(event.stream_id)
                    cut = await self._handle(conn, event.stream_id, request, ssl_object)
                    if cut:
                        writer.write(conn.data_to_send())
                        await writer.drain()
                        return
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return
            writer.write(conn.data_to_send())
            await writer.drain()

    async def _handle(
        self,
        conn: h2.connection.H2Connection,
        stream_id: int,
        request: dict[str, Any],
        ssl_object: ssl.SSLObject,
    ) -> bool:
        headers = {k.decode() if isinstance(k, bytes) else k: v for k, v in request["headers"]}
        pseudo = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in headers.items() if k.startswith(":")}
        method, full_path = pseudo[":method"], pseudo[":path"]
        path, _, query = full_path.partition("?")
        self.log.requests.append((method, path))
        key = headers.get("idempotency-key")
        self.log.idempotency_keys.append(key.decode() if isinstance(key, bytes) else key)
        peer = ssl_object.getpeercert() or {}
        cns = [v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"]
        self.log.client_subjects.append(cns[0] if cns else "")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "2",
            "method": method,
            "scheme": "https",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "client": ("127.0.0.1", 0),
            "server": ("127.0.0.1", self.port),
            "headers": [
                (k.encode() if isinstance(k, str) else k, v if isinstance(v, bytes) else v.encode())
                for k, v in request["headers"]
                if not (k.startswith(":") if isinstance(k, str) else k.startswith(b":"))
            ],
            "extensions": {"tls": tls_scope_extension(ssl_object)},
        }
        body_sent = False

        async def receive() -> dict:
            nonlocal body_sent
            if body_sent:
                await asyncio.Event().wait()
            body_sent = True
            return {"type": "http.request", "body": request["body"], "more_body": False}

        response: dict[str, Any] = {"status": 500, "headers": [], "body": b""}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["headers"] = message.get("headers", [])
            elif message["type"] == "http.response.body":
                response["body"] += message.get("body", b"")

        await self.app(scope, receive, send)
        self.log.handled += 1
        if self.goaway_after_handling and self.log.handled == self.goaway_after_handling:
            # Handled, but the answer never leaves: GOAWAY says no stream was processed.
            conn.close_connection(last_stream_id=0)
            self.log.goaways_sent += 1
            return True
        out_headers = [(":status", str(response["status"]))] + [
            (k.decode(), v.decode()) for k, v in response["headers"] if k.lower() not in (b"connection",)
        ]
        conn.send_headers(stream_id, out_headers)
        conn.send_data(stream_id, response["body"], end_stream=True)
        return False


async def hello_app(
    scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]
) -> None:
    """A minimal JSON answer, for tests that only care about the transport."""
    await receive()
    body = b'{"status": "ok"}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
