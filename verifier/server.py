"""Serving the app with hypercorn, with the client certificate handed to the app.

hypercorn (0.18) builds every scope with empty ``extensions``: the verified
client certificate never reaches the application. Rather than patch hypercorn,
this module runs its own accept loop (``asyncio.start_server`` with our
``SSLContext``) and hands each connection to hypercorn's ``TCPServer`` with an
app wrapper bound to that connection, which puts the ASGI TLS extension into
every scope of that connection. The extension is built from the connection's
``SSLObject`` after OpenSSL verified the chain, so it cannot come from anything
a client sends inside HTTP.

A connection that did not negotiate ``h2`` by ALPN is closed at once: HTTP/2
is required. SIGTERM/SIGINT stop accepting, let requests finish (hypercorn sends
GOAWAY), and close.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import structlog
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config

from verifier.tls import ALPN_H2, server_context, tls_scope_extension

log = structlog.get_logger()

HANDSHAKE_TIMEOUT_S = 10.0
GRACEFUL_TIMEOUT_S = 10.0
COALESCE_MAX_BYTES = 64 * 1024


class CoalescingWriter:
    """A StreamWriter front that sends what hypercorn writes within two loop turns as one TLS record.

    hypercorn writes each HTTP/2 frame as soon as it is made: the WINDOW_UPDATE for
    a request body, the response HEADERS, then (from its sending task, one loop
    turn later) the DATA. Each write is a TLS record and a wake-up of the client,
    which on a small device or a VM costs more than the bytes. Holding the writes
    for two loop turns (no timer: ``call_soon`` twice) lets the frames of one
    answer leave together. Large writes are not held (bounded memory).
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._buffer: list[bytes] = []
        self._size = 0
        self._scheduled = False

    def write(self, data: bytes) -> None:
        self._buffer.append(data)
        self._size += len(data)
        if self._size >= COALESCE_MAX_BYTES:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._loop.call_soon, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._buffer:
            data, self._buffer, self._size = b"".join(self._buffer), [], 0
            if not self._writer.is_closing():
                self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()  # backpressure on what already left; held bytes are bounded

    def write_eof(self) -> None:
        self._flush()
        self._writer.write_eof()

    def close(self) -> None:
        self._flush()
        self._writer.close()

    async def wait_closed(self) -> None:
        await self._writer.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._writer.get_extra_info(name, default)


class ConnectionTLSApp:
    """hypercorn's app-wrapper interface, adding one connection's TLS facts to each scope."""

    def __init__(self, app: Any, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: dict, receive: Any, send: Any, sync_spawn: Any, call_soon: Any) -> None:
        extensions = scope.setdefault("extensions", {})
        extensions["tls"] = self.tls  # replaces anything else: the TLS layer is the only source
        await self.app(scope, receive, send)


def hypercorn_config(keep_alive_s: float) -> Config:
    config = Config()
    config.keep_alive_timeout = keep_alive_s  # hypercorn's default is 5 s; kiosks idle for minutes
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    config.accesslog = None
    config.errorlog = None
    return config


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets whose proto
    # says TCP; without it Nagle and delayed ACKs add ~40 ms to every HTTP/2 answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


async def serve(
    app: Any,
    settings: Any,
    *,
    on_listening: Callable[[str, int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set)."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ssl_context = server_context(settings.server_cert, settings.server_key, settings.ca_file)
    config = hypercorn_config(settings.keep_alive_s)
    context = WorkerContext(None)
    connections: set[asyncio.Task[Any]] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        task.add_done_callback(connections.discard)
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != ALPN_H2:
            log.warning("connection_refused", audit=True, reason="client did not negotiate HTTP/2 (ALPN h2)")
            writer.close()
            return
        wrapped = ConnectionTLSApp(app, tls_scope_extension(ssl_object))
        await TCPServer(wrapped, loop, config, context, {}, reader, CoalescingWriter(writer))  # type: ignore[arg-type]

    sock = bind_socket(settings.host, settings.port)
    server = await asyncio.start_server(
        on_connection, sock=sock, ssl=ssl_context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S
    )
    host, port = sock.getsockname()[:2]
    log.info("verifier_listening", host=host, port=port)
    if on_listening is not None:
        on_listening(host, port)
    try:
        await stop.wait()
    finally:
        log.info("verifier_stopping", open_connections=len(connections))
        await context.terminated.set()  # hypercorn closes idle connections and sends GOAWAY
        server.close()
        await server.wait_closed()
        if connections:
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*connections, return_exceptions=True), GRACEFUL_TIMEOUT_S)
        for task in connections:
            task.cancel()
