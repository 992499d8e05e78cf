"""The verifier waits for a whole ClientHello before ranking a connection above a half-sent one."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from verifier.client_hello import HEADERS, MAX_PLAINTEXT, await_client_hello, client_hello_end


def real_client_hello() -> bytes:
    """The first flight OpenSSL sends as a client, as the verifier's socket receives it."""
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2"])
    outgoing = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="verifier.local")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_a_real_client_hello_ends_where_its_headers_say() -> None:
    hello = real_client_hello()
    assert client_hello_end(hello[:HEADERS]) == len(hello)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda h: b"\x17" + h[1:],  # application data, not a handshake record
        lambda h: h[:5] + b"\x02" + h[6:],  # a ServerHello's type
        lambda h: h[:3] + (MAX_PLAINTEXT + 1).to_bytes(2, "big") + h[5:],  # past the record limit
        lambda h: h[:3] + (4 + 10).to_bytes(2, "big") + h[5:],  # a record holding only a fragment of the hello
        lambda h: h[:3] + (int.from_bytes(h[3:5], "big") + 1).to_bytes(2, "big") + h[5:],  # longer than its hello
        lambda h: bytes.fromhex("160301400001000000"),  # 16 KiB announced, an empty hello: OpenSSL would wait
        lambda h: h[: HEADERS - 1],  # too short to judge
        lambda h: b"GET / HTTP/1.1\r\n",  # not TLS at all
    ],
    ids=["not-handshake", "not-client-hello", "record-too-long", "fragment", "record-past-hello", "empty", "short",
         "plain-http"],
)
def test_anything_but_a_whole_hello_in_the_first_record_gets_no_rank(mangle) -> None:
    assert client_hello_end(mangle(real_client_hello())[:HEADERS]) is None


def test_the_wait_ends_only_when_the_whole_hello_is_queued_and_leaves_it_unread(accepted_pair) -> None:
    client, server = accepted_pair
    hello = real_client_hello()

    async def run() -> tuple[bool, bool]:
        waiting = asyncio.create_task(await_client_hello(server))
        client.sendall(hello[:40])  # the headers and part of the body: a half-sent hello
        await asyncio.sleep(0.3)
        after_half = waiting.done()
        client.sendall(hello[40:])
        result = await asyncio.wait_for(waiting, 2)
        return after_half, result

    after_half, result = asyncio.run(run())
    assert not after_half and result
    assert server.recv(len(hello) + 1, socket.MSG_PEEK) == hello  # every byte left for OpenSSL
    assert server.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1


def test_a_client_that_closes_halfway_ends_the_wait_with_no_rank(accepted_pair) -> None:
    client, server = accepted_pair

    async def run() -> bool:
        waiting = asyncio.create_task(await_client_hello(server))
        client.sendall(real_client_hello()[:20])
        await asyncio.sleep(0.1)
        client.close()
        return await asyncio.wait_for(waiting, 2)

    assert asyncio.run(run()) is False
    assert server.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
