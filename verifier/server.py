"""Serving the app with hypercorn: our own accept loop, TLS handshake and connection limits.

hypercorn (0.18) builds every scope with empty ``extensions``: the verified
client certificate never reaches the application. Rather than patch hypercorn,
this module runs its own accept loop and TLS handshake and hands each connection
to hypercorn's ``TCPServer`` with an app wrapper bound to that connection, which
puts the ASGI TLS extension into every scope of that connection. The extension
is built from the connection's ``SSLObject`` after OpenSSL verified the chain,
so it cannot come from anything a client sends inside HTTP.

Owning the accept loop is also what bounds an unauthenticated flood
(:mod:`verifier.connections`): each accepted socket is admitted under the global,
unauthenticated and per-address caps before any TLS work (on Linux, once its
first bytes are in: ``TCP_DEFER_ACCEPT``); the handshake, the rest of the
ClientHello included (:mod:`verifier.client_hello`), has a deadline
(``handshake_timeout_s``); a connection without a client certificate
may idle ``unauthenticated_idle_s`` before a request and is closed as soon as
its EST answer is out; an authenticated one idles ``keep_alive_s`` between
requests (the timer restarts with every request). When the peer closes, the
connection's task ends at once (hypercorn 0.18 would keep it parked in its idle
timer for the whole keep-alive time). Failures are counted and summarised, not
logged one traceback each.

A connection that did not negotiate ``h2`` by ALPN is closed at once: HTTP/2
is required. SIGTERM/SIGINT stop accepting, let requests finish (hypercorn sends
GOAWAY), and close; so does SIGHUP (:data:`STOP_SIGNALS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import select
import signal
import socket
import ssl
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import h2.frame_buffer
import structlog
from cryptography import x509
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import Closed, Event, Updated

from verifier.client_hello import await_client_hello, hello_queued
from verifier.connections import (
    BODY_BUDGET_EXTENSION,
    HOUSEKEEPING_INTERVAL_S,
    BodyBudget,
    Connection,
    ConnectionGuard,
    EventSummary,
    descriptor_cap,
)
from verifier.problems import Problem
from verifier.tls import ALPN_H2, loopback_only_names, server_context, tls_scope_extension

log = structlog.get_logger()

GRACEFUL_TIMEOUT_S = 10.0
COALESCE_MAX_BYTES = 64 * 1024
ANSWERED_IDLE_S = 0.05  # an unauthenticated connection after its EST answer: closed once the answer is out
ACCEPT_BACKOFF_S = 0.1  # after an accept error (descriptors, memory): wait, do not spin
READ_LIMIT = 2**16
REFUSED_CLOSE_S = 1.0  # a refused connection's close_notify exchange, at most
SSL_SHUTDOWN_TIMEOUT_S = 1.0  # any closing connection's wait for the peer's close_notify
DEFER_ACCEPT_S = 5  # TCP_DEFER_ACCEPT: how long the kernel may hold a connection that has sent nothing yet
HEADER_BLOCK_FRAMES = 8  # frames one header block may take, its HEADERS frame included (h2's own limit: 64)
MIN_HANDSHAKE_S = 0.05  # what is left of the handshake deadline once the ClientHello is in, at the least
# Requests a connection without a client certificate may make: EST is one (cacerts or simpleenroll), and the
# agent opens a connection per EST call; room for a client that asks both, and a retry each, on one connection.
UNAUTHENTICATED_REQUESTS = 4
# What stops the server, each with the drain (no new connection, requests in flight answered, GOAWAY). SIGHUP
# too: the verifier has no reload (its settings are read at start; the unit defines no ExecReload), so a SIGHUP
# is a closed terminal or a dropped ssh session it was started from, and Python's default for it was death at
# once, the requests in flight cut. systemd counts SIGHUP as a clean stop signal too (Restart=on-failure).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _stop_signals() -> tuple[signal.Signals, ...]:
    """STOP_SIGNALS less a SIGHUP this process was started ignoring (``nohup``, a supervisor that ignores it).

    Why: an operator keeps ``serve`` running past the ssh session with ``nohup ... &``; a handler installed
    over that ignore made the logout's SIGHUP stop the verifier the operator had asked to outlive it.
    """
    ignored = signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    return tuple(sig for sig in STOP_SIGNALS if not (ignored and sig == signal.SIGHUP))


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


class BudgetedReader(asyncio.StreamReader):
    """A connection's reader that ends a connection without a client certificate past its byte budget.

    Why: such a connection exists for one EST request (a CSR: about 2 KiB), yet it
    could stream HTTP/2 frames at line rate, which the verifier decrypts and h2
    buffers (an endless header block, frames of unknown types): 60 of them from
    one address took the verifier to 439 MB and a kiosk's health round trip from
    8 to 171 ms (``bench.flood --attack header_blocks``). Past ``budget`` bytes,
    ``on_spent`` drops the connection and the read fails, which ends hypercorn's
    read loop. A device's connection (client certificate) is not counted.
    """

    def __init__(self, conn: Connection, budget: int, on_spent: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._conn = conn
        self._budget = budget
        self._on_spent = on_spent
        self._received = 0

    async def read(self, n: int = -1) -> bytes:
        data = await super().read(n)
        if not self._conn.authenticated:
            self._received += len(data)
            if self._received > self._budget:
                self._on_spent()
                raise ConnectionAbortedError("the unauthenticated byte budget is spent")
        return data


class StreamBody:
    """One stream's share of the caps on request bodies held: the app counts each chunk it keeps (:meth:`take`).

    Counted by the app, not in ``receive``: what a refused request's rest brings (read and dropped by the app's
    drain, never kept) must not count, or a body refused as too large (drained up to 16 MiB) spent the budget
    and its refusal failed. Past either cap, :meth:`take` raises a 503 ``connection-busy`` problem, which the app
    answers as any refusal before the whole body is in, and what the stream held is given back at once (the app
    drops its chunks as the problem unwinds). The rest is given back when its answer starts (:meth:`release`): the
    app has made it, and holds no byte of the request body then; its send may wait on the client's flow control.
    """

    def __init__(self, conn: Connection, budget: BodyBudget, summary: EventSummary | None) -> None:
        self._conn = conn
        self._budget = budget
        self._summary = summary
        self.held = 0

    def take(self, size: int) -> None:
        over = self._budget.take(self._conn, size)
        if over:
            self.release()
            raise self._refusal(over)
        self.held += size

    def release(self) -> None:
        self._budget.give_back(self._conn, self.held)
        self.held = 0

    def _refusal(self, over: str) -> Problem:
        if self._summary is not None:  # a device can repeat it at will: counted, a few lines a window
            self._summary.note("request_refused", f"{over} body budget spent", address=self._conn.address,
                               device_id=self._conn.device)
        if over == "connection":
            detail = (f"the requests in flight on this connection would hold more than {self._budget.per_connection} "
                      "bytes of request bodies (the verifier's connection_body_bytes)")
        else:
            detail = (f"the verifier holds its most request bodies at once ({self._budget.total} bytes, its "
                      "total_body_bytes)")
        return Problem("connection-busy", detail, headers=((b"retry-after", b"1"),))


class ConnectionTLSApp:
    """hypercorn's app-wrapper interface, adding one connection's TLS facts to each scope."""

    def __init__(
        self,
        app: Any,
        tls: dict[str, Any],
        conn: Connection | None = None,
        summary: EventSummary | None = None,
        bodies: BodyBudget | None = None,
    ) -> None:
        self.app = app
        self.tls = tls
        self.conn = conn
        self.summary = summary
        self.bodies = bodies  # the caps on request bodies held (None: uncounted)

    async def __call__(self, scope: dict, receive: Any, send: Any, sync_spawn: Any, call_soon: Any) -> None:
        if self.conn is not None and scope.get("type") == "http":
            self.conn.requests += 1
            if not self.conn.authenticated and self.conn.requests > UNAUTHENTICATED_REQUESTS:
                # Streams reset as soon as they are opened do not count against the concurrent streams
                # h2 allows, yet each request would reach the app: without this, one handshake bought
                # hundreds of requests (and audit lines) up to the byte budget. Dropped, never answered.
                if self.summary is not None:
                    reason = "too many requests without a client certificate"
                    self.summary.note("connection_refused", reason, address=self.conn.address)
                self.conn.close()
                return
        extensions = scope.setdefault("extensions", {})
        extensions["tls"] = self.tls  # replaces anything else: the TLS layer is the only source
        if self.conn is None or self.bodies is None or scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        stream = extensions[BODY_BUDGET_EXTENSION] = StreamBody(self.conn, self.bodies, self.summary)

        async def answering(message: dict) -> None:
            # The answer is made: the app keeps no request-body byte now. Given back here, not once the answer is
            # out: a client that opens no window for answers held its connection's budget until it closed.
            if message.get("type") == "http.response.start":
                stream.release()
            await send(message)

        try:
            await self.app(scope, receive, answering)
        finally:
            stream.release()


class GuardedTCPServer(TCPServer):
    """hypercorn's connection driver, with our idle limits and freed at once when the peer closes.

    Three methods of hypercorn's ``TCPServer`` are replaced: ``_read_data`` stops the
    idle timer once the peer is gone (else the connection's task group waits for
    it: the whole keep-alive time, with the connection's memory held) and releases
    the streams' send buffers (:meth:`_release_send_buffers`); ``_idle_timeout``
    takes its limit from the connection (authenticated or not, answered or not)
    instead of one config value; ``protocol_send`` starts no idle timer once the
    connection is ending (:meth:`protocol_send`).
    """

    def __init__(self, *args: Any, conn: Connection, keep_alive_s: float, unauthenticated_idle_s: float) -> None:
        super().__init__(*args)
        self.conn = conn
        self.keep_alive_s = keep_alive_s
        self.unauthenticated_idle_s = unauthenticated_idle_s
        self.ending = False  # set once the connection is being closed: see protocol_send

    def idle_limit(self) -> float:
        if self.conn.authenticated:
            return self.keep_alive_s
        return ANSWERED_IDLE_S if self.conn.requests else self.unauthenticated_idle_s

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:  # returned (the peer is gone) or raised (the task group is about to cancel its tasks)
            self.ending = True
        await self.idle_task.stop()
        await self._release_send_buffers()

    async def _release_send_buffers(self) -> None:
        """Close the HTTP/2 streams' send buffers of a connection whose peer is gone.

        hypercorn (0.18) leaves them open when the connection closes. An answer the
        app sends afterwards (a device that lost power or was killed in the middle
        of a request: the app still answers) ends in ``EndBody``, which waits for
        its buffer to be emptied by a send loop that has stopped. The request's task
        never ends, and with it the connection's task, its guard slot and its
        memory: measured, still held 25 s later, and a shutdown waited the whole
        graceful timeout for it. Closed, the buffer refuses the rest at once
        (``BufferCompleteError``, which hypercorn's ``stream_send`` swallows) and its
        drain returns.
        """
        h2 = getattr(self.protocol, "protocol", None)  # ProtocolWrapper holds H2Protocol (or H11Protocol)
        for buffer in list(getattr(h2, "stream_buffers", {}).values()):
            await buffer.close()

    async def protocol_send(self, event: Event) -> None:
        """hypercorn's sending of one event, except that an ending connection starts no new idle timer.

        hypercorn restarts the idle timer on every ``Updated(idle=True)``, which each
        stream sends as it ends, even while the connection is closing. The restart
        makes the timer's coroutine first, then asks the connection's task group for
        a task; a task group that is shutting down (an error left hypercorn's read
        loop, e.g. a close that failed with an SSLError because the peer sent data
        after our close_notify, and the group cancelled its streams' tasks) refuses
        with a RuntimeError, and the coroutine is never awaited: measured with the
        fuzzer (``fuzz/verifier_requests.py --seed 22``) and
        ``tests/test_verifier_closing.py``. The same restart after the read loop had
        ended (the peer gone, its request answered afterwards) held a device's
        connection for its whole keep-alive time. A closing connection needs no idle
        timer, so it is ending from hypercorn's ``Closed``, our idle close, the end of
        the read loop, or a send that failed.
        """
        if isinstance(event, Updated) and event.idle and self.ending:
            return
        if isinstance(event, Closed):
            self.ending = True
        try:
            await super().protocol_send(event)
        except Exception:
            self.ending = True
            raise

    async def _idle_timeout(self) -> None:
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.context.terminated.wait(), self.idle_limit())
        self.ending = True
        await asyncio.shield(self._initiate_server_close())


def limit_header_blocks() -> None:
    """Refuse a header block of more than HEADER_BLOCK_FRAMES frames (a HEADERS frame, then CONTINUATION frames).

    h2 holds up to 64 of them (1 MiB, about 2 MB of memory with its copies) before
    it refuses the block, and any client may send them: 60 connections, each
    sending one such block at once, took the verifier from 77 to 205 MB (136 MB
    with this limit). No request we serve needs a long block: the agent's headers
    are a few hundred bytes, and the header list we advertise is at most
    hypercorn's ``h2_max_header_list_size`` (64 KiB), which 8 frames of 16 KiB
    (128 KiB) carry even with Huffman codes of 11 bits per character (base64's
    longest). h2 counts the HEADERS frame in its ``CONTINUATION_BACKLOG`` and
    reads it from its module at each frame, so setting it there is enough.
    """
    h2.frame_buffer.CONTINUATION_BACKLOG = HEADER_BLOCK_FRAMES


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
    if hasattr(socket, "TCP_DEFER_ACCEPT"):  # Linux: accepted once the first bytes (the ClientHello) are in
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_S)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


def _drop_unstarted(task: asyncio.Task[Any], client: socket.socket) -> None:
    """Evict a connection whose task has not run yet (its first step replaces this with its own cancel).

    A task cancelled before its first step never enters its body, so its
    ``finally`` would not close the socket: the peer would wait on a connection
    nobody serves until the garbage collector found it. Nothing of the event
    loop holds the socket yet, so it is closed here.
    """
    task.cancel()
    client.close()


def _failure_reason(exc: BaseException) -> str:
    # asyncio ends a handshake past ssl_handshake_timeout with ConnectionAbortedError("... taking longer ...")
    if isinstance(exc, TimeoutError) or (isinstance(exc, ConnectionAbortedError) and "longer" in str(exc)):
        return "handshake deadline passed"
    if isinstance(exc, ssl.SSLError):
        return getattr(exc, "verify_message", None) or exc.reason or type(exc).__name__
    return type(exc).__name__


def _broken_reason(exc: OSError) -> str:
    """Why a connection past its handshake broke, for ``connection_broken``.

    A TimeoutError here is asyncio's wait for the peer's close_notify after ours
    (``SSL_SHUTDOWN_TIMEOUT_S``; raised out of hypercorn's close, which catches
    neither it nor an SSLError): a client that keeps its socket open and sends
    nothing. It was named "handshake deadline passed", as a handshake's timeout is,
    long after the handshake had succeeded. An SSLError (data after our
    close_notify: APPLICATION_DATA_AFTER_CLOSE_NOTIFY; a bad record) names itself.
    """
    if isinstance(exc, TimeoutError):
        return "no close_notify from the peer in time"
    return _failure_reason(exc)


def _quiet_exception_handler(summary: EventSummary) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """asyncio's own reports of broken connections are counted, not logged with a traceback each."""

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError | ssl.SSLError):
            summary.note("connection_error", type(exc).__name__)
            return
        loop.default_exception_handler(context)

    return handler


class ConnectionServer:
    """The accept loop: admission under the caps, the TLS handshake with its deadline, hypercorn after."""

    def __init__(self, app: Any, settings: Any, ssl_context: ssl.SSLContext, context: WorkerContext) -> None:
        self.app = app
        self.settings = settings
        self.ssl_context = ssl_context
        self.context = context
        self.config = hypercorn_config(settings.keep_alive_s)
        self.summary = getattr(app, "flood_events", None) or EventSummary()  # one summary for the app's and ours
        self.guard = ConnectionGuard(
            descriptor_cap(settings.max_connections),
            settings.max_unauthenticated,
            settings.max_connections_per_address,
            settings.max_connections_per_device,
        )
        self.bodies = BodyBudget(settings.connection_body_bytes, settings.total_body_bytes)
        self.tasks: set[asyncio.Task[Any]] = set()

    async def accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, address = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: count, back off, go on
                self.summary.note("accept_failed", errno.errorcode.get(exc.errno or 0, type(exc).__name__))
                await asyncio.sleep(ACCEPT_BACKOFF_S)
                continue
            host = str(address[0])
            hello_in = hello_queued(client)
            conn, evicted = self.guard.admit(host, stalled=not hello_in)
            for reason in evicted:
                self.summary.note("connection_evicted", reason, address=host)
            if conn is None:
                self.summary.note("connection_refused", "connection caps reached", address=host)
                client.close()
                continue
            task = asyncio.create_task(self._serve(client, conn, hello_in))
            if not conn.serving:  # (an eager task factory would have started it already)
                conn.close = functools.partial(_drop_unstarted, task, client)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _serve(self, client: socket.socket, conn: Connection, hello_in: bool) -> None:
        loop = asyncio.get_running_loop()
        transport: asyncio.BaseTransport | None = None
        conn.serving = True
        conn.close = asyncio.current_task().cancel  # type: ignore[union-attr]  # from now on the task closes the socket
        try:
            deadline = loop.time() + self.settings.handshake_timeout_s
            reader = BudgetedReader(
                conn, self.settings.unauthenticated_bytes, lambda: self._budget_spent(conn), limit=READ_LIMIT, loop=loop
            )
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            try:
                if not hello_in:  # stalled: evicted before the others until its hello is in
                    async with asyncio.timeout_at(deadline):
                        if await await_client_hello(client):
                            self.guard.hello_received(conn)
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol,
                    client,
                    ssl=self.ssl_context,
                    ssl_handshake_timeout=max(deadline - loop.time(), MIN_HANDSHAKE_S),
                    # A closing TLS connection waits for the peer's close_notify at most this long
                    # (asyncio's default, 30 s, kept each one's 256 KiB buffer alive under a flood).
                    ssl_shutdown_timeout=SSL_SHUTDOWN_TIMEOUT_S,
                )
            except (TimeoutError, OSError, ssl.SSLError, EOFError) as exc:
                self.summary.note("tls_handshake_failed", _failure_reason(exc), address=conn.address)
                client.close()
                return
            conn.close = transport.abort  # after the handshake: drop at once, descriptor freed
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != ALPN_H2:
                self.summary.note("connection_refused", "client did not negotiate HTTP/2 (ALPN h2)")
                transport.close()  # close_notify first: the client learns it was refused, not cut
                loop.call_later(REFUSED_CLOSE_S, transport.abort)  # a client that never answers holds nothing
                return
            certificate = ssl_object.getpeercert(binary_form=True)
            device = self._active_device(certificate) if certificate else None
            if device is not None:  # a revoked or superseded certificate stays as unauthenticated as none
                for reason in self.guard.authenticated(conn, device):
                    self.summary.note("connection_evicted", reason, address=conn.address, device_id=device)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)  # type: ignore[arg-type]
            wrapped = ConnectionTLSApp(self.app, tls_scope_extension(ssl_object), conn, self.summary, self.bodies)
            await GuardedTCPServer(
                wrapped,
                loop,
                self.config,
                self.context,
                {},
                reader,
                CoalescingWriter(writer),  # type: ignore[arg-type]
                conn=conn,
                keep_alive_s=self.settings.keep_alive_s,
                unauthenticated_idle_s=self.settings.unauthenticated_idle_s,
            )
        except asyncio.CancelledError:  # evicted, or the server stops
            if transport is not None:
                transport.abort()
            else:
                client.close()
        except OSError as exc:  # the peer broke TLS or TCP (data after its close_notify, a reset): the end, counted
            self.summary.note("connection_broken", _broken_reason(exc), address=conn.address)
            if transport is not None:
                transport.abort()
            else:
                client.close()
        except Exception as exc:  # a fault of ours (the registry's database locked...): said, and the socket freed
            # Without this the task ended with the transport still open: the device waited on a connection nobody
            # served until garbage collection closed it, and the fault was only "Task exception never retrieved".
            log.error("connection_failed", error=type(exc).__name__, address=conn.address, exc_info=True)
            if transport is not None:
                transport.abort()
            else:
                client.close()
        finally:
            self.guard.release(conn)

    def _active_device(self, certificate: bytes) -> str | None:
        """The active device a verified certificate belongs to (the app's registry), None when it is no active
        device's: the CA signed it, but it may be revoked, superseded or never registered."""
        lookup = getattr(self.app, "active_device", None)
        return lookup(certificate) if lookup is not None else None

    def _budget_spent(self, conn: Connection) -> None:
        self.summary.note("connection_refused", "unauthenticated byte budget spent", address=conn.address)
        conn.close()

    async def summarise(self) -> None:
        while True:
            await asyncio.sleep(self.summary.window_s)
            self.summary.flush()

    async def housekeep(self, interval_s: float = HOUSEKEEPING_INTERVAL_S) -> None:
        """Every ``interval_s``: the app forgets what it keeps in memory past its life (its ``forget_expired``: the
        pending step-ups and their first templates), also on a verifier no request reaches."""
        forget = getattr(self.app, "forget_expired", None)
        if forget is None:
            return
        while True:
            await asyncio.sleep(interval_s)
            forget()


def _stop_on(sig: signal.Signals, stop: asyncio.Event, stopped_by: list[str]) -> None:
    """A stop signal's handler: the first one's name is kept for ``verifier_stopping``."""
    stopped_by.append(sig.name)
    stop.set()  # first: the stop must not depend on the redirect below (which needs a free descriptor)
    if sig == signal.SIGHUP:
        with contextlib.suppress(OSError):  # out of descriptors: the drain's lines may then fail, the stop not
            _leave_hung_up_terminal()


def _leave_hung_up_terminal() -> None:
    """Point standard output and error at /dev/null when they are a terminal that hung up (or a gone pipe).

    A closed terminal is what sends SIGHUP, and every write to it then fails with
    EIO: the drain's first log line (``verifier_stopping``) raised, the server
    stopped with a traceback nobody saw (exit 1), and a request in flight was
    answered 500 (measured with ``serve`` on a pseudo-terminal whose other end was
    closed). The lines had no reader left; what ``nohup`` would have done, done here.
    A terminal still open (a ``kill -HUP`` by hand) keeps the lines.
    """
    poller = select.poll()
    for fd in (1, 2):
        poller.register(fd, select.POLLOUT)
    gone = [fd for fd, events in poller.poll(0) if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL)]
    if not gone:
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in gone:
            os.dup2(null, fd)
    finally:
        os.close(null)


def _warn_of_a_loopback_only_certificate(cert_file: Path, host: str) -> None:
    """Say at start that devices on other machines will refuse the server certificate (tls.loopback_only_names)."""
    try:
        names = loopback_only_names(x509.load_pem_x509_certificate(cert_file.read_bytes()), host)
    except (OSError, ValueError):
        return  # the context above loaded it: a file changed since is not this warning's business
    if names:
        log.warning(
            "server_certificate_names_only_this_machine",
            host=host,
            names=names,
            fix="devices on other machines will refuse this certificate (they reach the verifier by another "
            "name): make a PKI for the verifier's name, `capture-verifier pki init NEW_DIR --server-name "
            "verifier.example` (then serve --pki NEW_DIR, and provision with its CA fingerprint), or issue "
            "server.pem for that name under your site's CA (certs/README.md)",
        )


async def serve(
    app: Any,
    settings: Any,
    *,
    on_listening: Callable[[str, int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM, SIGINT or SIGHUP (or ``stop`` is set), then drain: see STOP_SIGNALS."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    stopped_by: list[str] = []
    for sig in _stop_signals():
        loop.add_signal_handler(sig, _stop_on, sig, stop, stopped_by)
    ssl_context = server_context(settings.server_cert, settings.server_key, settings.ca_file)
    limit_header_blocks()
    context = WorkerContext(None)
    server = ConnectionServer(app, settings, ssl_context, context)
    loop.set_exception_handler(_quiet_exception_handler(server.summary))
    sock = bind_socket(settings.host, settings.port)
    accepting = asyncio.create_task(server.accept_loop(sock))
    summarising = asyncio.create_task(server.summarise())
    housekeeping = asyncio.create_task(server.housekeep())
    host, port = sock.getsockname()[:2]
    log.info(
        "verifier_listening",
        host=host,
        port=port,
        max_connections=server.guard.max_connections,
        max_unauthenticated=server.guard.max_unauthenticated,
    )
    _warn_of_a_loopback_only_certificate(settings.server_cert, settings.host)
    if on_listening is not None:
        on_listening(host, port)
    try:
        await stop.wait()
    finally:
        connections = set(server.tasks)
        log.info("verifier_stopping", open_connections=len(connections), signal=stopped_by[0] if stopped_by else None)
        accepting.cancel()
        sock.close()
        await context.terminated.set()  # hypercorn closes idle connections and sends GOAWAY
        if connections:
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*connections, return_exceptions=True), GRACEFUL_TIMEOUT_S)
        for task in connections:
            task.cancel()
        summarising.cancel()
        housekeeping.cancel()
        server.summary.flush()
