"""Waiting for a client's whole ClientHello before the TLS handshake starts.

Why: the connection caps evict the oldest unauthenticated connection to make room
for a new one (:mod:`verifier.connections`). A flood that opens connections and
sends half a ClientHello costs the attacker a few bytes each, and churned fast
enough it makes a real device's handshake the oldest: a device whose second
flight took 100 ms (a slow link, a loaded Pi) was evicted every time by such a
flood from its own address (measured: 5 of 5 handshakes at 100 to 400 ms, none
at 0 ms). A connection admitted without its whole ClientHello is therefore
*stalled* to the guard, which evicts such connections first, until the hello is
in. What that leaves open is in :mod:`verifier.connections`.

"Whole" means the first record is the entire ClientHello message, nothing less
and nothing more (a client's first record carries its hello alone). A record
announced longer than its hello would otherwise buy the
better rank for nine bytes while OpenSSL waits for the rest of the record; a
hello fragmented over several records (allowed by TLS, sent by no client we
know of below 16 KiB) keeps the lower rank and is served all the same.

How, without reading the bytes (OpenSSL must read them): Linux's ``SO_RCVLOWAT``
makes epoll report the socket readable only once that many bytes are queued, so
one wait for the headers and one for the rest cost no polling, however long a
half-sent hello stalls. End of file and errors still wake the wait; the TLS
handshake then fails as it would have.
"""

from __future__ import annotations

import asyncio
import socket

RECORD_HEADER = 5  # content type, legacy version (2 bytes), length (2 bytes)
HANDSHAKE_HEADER = 4  # message type, length (3 bytes)
HEADERS = RECORD_HEADER + HANDSHAKE_HEADER
HANDSHAKE_RECORD = 0x16  # RFC 8446 5.1: ContentType handshake
CLIENT_HELLO = 0x01  # RFC 8446 4: HandshakeType client_hello
MAX_PLAINTEXT = 2**14  # RFC 8446 5.1: a record's plaintext length is at most 2^14


def client_hello_end(headers: bytes) -> int | None:
    """Bytes from the start of the stream to the end of the ClientHello, from its first 9 bytes.

    None when they do not open a record that is exactly one whole ClientHello:
    not TLS, a length past the record limit, a record longer than its hello, or a
    hello fragmented over several records.
    Such a client gets no wait (and no better rank); the handshake judges it.
    """
    if len(headers) < HEADERS or headers[0] != HANDSHAKE_RECORD or headers[5] != CLIENT_HELLO:
        return None
    record = int.from_bytes(headers[3:5], "big")
    hello = int.from_bytes(headers[6:9], "big")
    if record > MAX_PLAINTEXT or record != HANDSHAKE_HEADER + hello:
        return None
    return RECORD_HEADER + record


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Until epoll reports ``sock`` readable (at its current low-water mark), or it is at end of file."""
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def _set_low_water(sock: socket.socket, size: int) -> bool:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
    except OSError:  # a platform without it: the handshake starts without the wait
        return False
    return True


def hello_queued(sock: socket.socket) -> bool:
    """Whether the client's whole ClientHello is already queued on ``sock`` (a non-blocking peek).

    Asked first: a real client sends its hello right after connecting, so it is
    usually there by the time the connection's task runs.
    """
    end = client_hello_end(_peek(sock, HEADERS))
    return end is not None and len(_peek(sock, end)) >= end


async def await_client_hello(sock: socket.socket) -> bool:
    """Return once the client's ClientHello is queued whole: True, or False if it will not come so.

    False (end of file, an error, not a whole hello in its first record): the
    caller goes on with the handshake, which judges what was sent. The caller
    bounds the wait (the handshake deadline). The socket's low-water mark is reset
    to 1 before return.
    """
    loop = asyncio.get_running_loop()
    if not _set_low_water(sock, HEADERS):
        return False
    try:
        await _readable(loop, sock)
        end = client_hello_end(_peek(sock, HEADERS))
        if end is None:
            return False
        _set_low_water(sock, end)
        await _readable(loop, sock)
        return hello_queued(sock)  # or woken by end of file
    finally:
        _set_low_water(sock, 1)


def _peek(sock: socket.socket, size: int) -> bytes:
    """Up to ``size`` queued bytes, left in place for OpenSSL (empty at end of file or on an error)."""
    try:
        return sock.recv(size, socket.MSG_PEEK)
    except OSError:  # BlockingIOError and InterruptedError included: nothing to judge, the handshake will
        return b""
