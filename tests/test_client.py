"""The mTLS client's behaviour on the wire: retries, idempotency keys, errors, hot swap."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from agent.client import VerifierClient
from agent.config import parse_config
from agent.errors import TransportError, VerifierError
from agent.identity import DeviceIdentity
from tests.h2harness import H2TestServer, hello_app


def make_client(identity: DeviceIdentity, url: str, retries: int = 2) -> VerifierClient:
    config = parse_config(
        {
            "agent": {"state_dir": str(identity.directory.parent)},
            "verifier": {"url": url},
            "network": {"retries": retries, "backoff_base_s": 0.01, "connect_timeout_s": 2.0},
        }
    )
    return VerifierClient(config, identity)


def json_app(status: int, body: bytes, content_type: bytes = b"application/problem+json"):
    async def app(scope, receive, send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": body})

    return app


def test_every_post_carries_an_idempotency_key_kept_across_a_goaway_retry(ca, server_ctx, device_identity_from) -> None:
    identity = device_identity_from(ca, "kiosk-1")

    async def go() -> dict:
        async with make_client(identity, server.url) as client:
            return await client.call("POST", "/v1/challenges", json={})

    with H2TestServer(server_ctx, hello_app, goaway_after_handling=1) as server:
        assert asyncio.run(go()) == {"status": "ok"}
    assert server.log.goaways_sent == 1
    assert server.log.requests == [("POST", "/v1/challenges")] * 2  # cut once, retried once
    first, second = server.log.idempotency_keys
    assert first and first == second


def test_problem_details_become_a_typed_error_with_the_fix(ca, server_ctx, device_identity_from) -> None:
    identity = device_identity_from(ca, "kiosk-1")
    problem = {
        "type": "about:blank",
        "title": "Forbidden",
        "status": 403,
        "detail": "device revoked",
        "fix": "re-provision the device",
    }

    async def go() -> None:
        async with make_client(identity, server.url) as client:
            await client.call("GET", "/v1/health")

    with (
        H2TestServer(server_ctx, json_app(403, json.dumps(problem).encode())) as server,
        pytest.raises(VerifierError) as info,
    ):
        asyncio.run(go())
    assert info.value.status == 403 and "device revoked" in str(info.value)
    assert info.value.fix == "re-provision the device"


@pytest.mark.parametrize(("status", "body"), [(500, b"<html>oops"), (200, b"\x00\xffnot json")])
def test_garbage_from_the_server_is_a_typed_error(ca, server_ctx, device_identity_from, status, body) -> None:
    identity = device_identity_from(ca, "kiosk-1")

    async def go() -> None:
        async with make_client(identity, server.url) as client:
            await client.call("GET", "/v1/health")

    with (
        H2TestServer(server_ctx, json_app(status, body, b"text/html")) as server,
        pytest.raises(VerifierError) as info,
    ):
        asyncio.run(go())
    assert "capture-verifier" in info.value.fix


def test_unreachable_verifier_gives_up_after_the_retries(ca, device_identity_from) -> None:
    identity = device_identity_from(ca, "kiosk-1")
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def go() -> None:
        async with make_client(identity, f"https://127.0.0.1:{port}", retries=2) as client:
            await client.call("GET", "/v1/health")

    with pytest.raises(TransportError, match="after 3 attempts"):
        asyncio.run(go())


def test_identity_swap_keeps_requests_in_flight(ca, server_ctx, device_identity_from) -> None:
    old = device_identity_from(ca, "kiosk-old")
    new = device_identity_from(ca, "kiosk-new")

    async def slow_app(scope, receive, send) -> None:
        if scope["path"] == "/slow":
            await asyncio.sleep(0.5)
        await hello_app(scope, receive, send)

    async def go() -> tuple[dict, dict]:
        async with make_client(old, server.url) as client:
            slow = asyncio.create_task(client.call("GET", "/slow"))
            await asyncio.sleep(0.15)  # the slow request is on the wire
            await client.replace_identity(new)
            fresh = await client.call("GET", "/fast")
            return await slow, fresh

    with H2TestServer(server_ctx, slow_app) as server:
        slow_answer, fresh_answer = asyncio.run(go())
    assert slow_answer == fresh_answer == {"status": "ok"}
    by_path = dict(zip([p for _, p in server.log.requests], server.log.client_subjects, strict=True))
    assert by_path == {"/slow": "kiosk-old", "/fast": "kiosk-new"}


def test_server_timing_is_read_and_malformed_entries_are_ignored() -> None:
    import httpx

    from agent.client import server_timing

    response = httpx.Response(
        200,
        headers=[
            ("server-timing", "match;dur=3.25"),
            ("server-timing", 'app;desc="whole";dur=4.5, cache;dur=oops, bare'),
        ],
    )
    assert server_timing(response) == {"match": 3.25, "app": 4.5}
    assert server_timing(httpx.Response(200)) == {}


def test_a_busy_verifier_is_retried_after_its_retry_after(ca, server_ctx, device_identity_from) -> None:
    identity = device_identity_from(ca, "kiosk-1")
    arrivals: list[float] = []
    busy = json.dumps({"type": "about:blank", "title": "busy", "status": 503}).encode()

    async def app(scope, receive, send) -> None:
        arrivals.append(asyncio.get_running_loop().time())
        if len(arrivals) == 1:
            await receive()
            headers = [(b"content-type", b"application/problem+json"), (b"retry-after", b"1")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": busy})
            return
        await hello_app(scope, receive, send)

    async def go() -> dict:
        async with make_client(identity, server.url) as client:  # its own backoff: 10 ms
            return await client.call("GET", "/v1/health")

    with H2TestServer(server_ctx, app) as server:
        assert asyncio.run(go()) == {"status": "ok"}
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 0.9  # waited as asked, not 10 ms
