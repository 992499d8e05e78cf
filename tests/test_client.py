"""The mTLS client's behaviour on the wire: retries, idempotency keys, errors, hot swap."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket

import httpx
import pytest
from structlog.testing import capture_logs

from agent.client import MAX_RETRY_AFTER_S, VerifierClient, retry_after_s, server_timing
from agent.config import parse_config
from agent.errors import DeadlineError, TransportError, VerifierError
from agent.identity import DeviceIdentity
from tests.h2harness import H2TestServer, hello_app


def make_client(identity: DeviceIdentity, url: str, retries: int = 2, **network: float) -> VerifierClient:
    config = parse_config(
        {
            "agent": {"state_dir": str(identity.directory.parent)},
            "verifier": {"url": url},
            "network": {"retries": retries, "backoff_base_s": 0.01, "connect_timeout_s": 2.0, **network},
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


def test_a_verifier_that_never_answers_the_handshake_is_unreachable_when_the_deadline_ends_the_call(
    ca, device_identity_from
) -> None:
    """A verifier behind a firewall that drops packets always ended in DeadlineError (the connect timeouts of every
    attempt outlast the call's deadline), and reachability was left as it was: /health said "unknown" (or
    "reachable" after an earlier answer) while every session failed with verifier_unreachable."""
    identity = device_identity_from(ca, "kiosk-1")
    accepted: list[socket.socket] = []
    with socket.socket() as listener:  # accepts the TCP connection, then never says a word of TLS
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]

        async def go() -> VerifierClient:
            client = make_client(
                identity, f"https://127.0.0.1:{port}", retries=3, connect_timeout_s=2.0, call_deadline_s=1.0
            )
            async with client:
                with pytest.raises(DeadlineError):
                    await client.call("GET", "/v1/health")
            return client

        client = asyncio.run(go())
        listener.settimeout(0)
        with contextlib.suppress(BlockingIOError):
            while True:
                accepted.append(listener.accept()[0])
    for sock in accepted:
        sock.close()
    assert accepted, "the client never connected: the test did not test a silent verifier"
    assert client.reachability is not None, "nothing recorded: /health would say unknown"
    reached, error = client.reachability
    assert reached is False and isinstance(error, DeadlineError)
    assert "did not answer GET /v1/health within 1 s" in error.message
    assert "check the verifier's load and the link" in error.fix


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
    response = httpx.Response(
        200,
        headers=[
            ("server-timing", "match;dur=3.25"),
            ("server-timing", 'app;desc="whole";dur=4.5, cache;dur=oops, bare'),
        ],
    )
    assert server_timing(response) == {"match": 3.25, "app": 4.5}
    assert server_timing(httpx.Response(200)) == {}


def test_server_timing_durations_that_are_not_finite_are_skipped() -> None:
    """float() takes all of these; a NaN or infinite "match" time reached the session's figures."""
    entries = "a;dur=nan, b;dur=inf, c;dur=-inf, d;dur=1e999, e;dur=-3, f;dur=\u0661\u0662, match;dur=2.5"
    response = httpx.Response(200, headers=[("server-timing", entries.encode())])
    assert server_timing(response) == {"match": 2.5}


NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
RETRY_AFTERS = {
    "seconds": ("5", 5.0),
    "seconds with spaces": (" 7 ", 7.0),
    "zero": ("0", 0.0),
    "over the cap": ("86400", MAX_RETRY_AFTER_S),
    "5000 digits": ("9" * 5000, MAX_RETRY_AFTER_S),  # int() refuses past 4300 digits
    "HTTP-date in a minute": ("Wed, 02 Dec 2026 12:01:00 GMT", 60.0),
    "HTTP-date past": ("Tue, 01 Dec 2026 12:00:00 GMT", 0.0),
    "HTTP-date next week": ("Wed, 09 Dec 2026 12:00:00 GMT", MAX_RETRY_AFTER_S),
    "absent": (None, None),
    "superscript two": ("\u00b2", None),  # str.isdigit() says yes, int() and float() say no
    "arabic-indic three": ("\u0663", None),  # int() would take it: still not RFC 9110
    "negative": ("-5", None),
    "fraction": ("1.5", None),
    "nan": ("nan", None),
    "inf": ("inf", None),
    "garbage": ("soon", None),
    "no such day": ("Wed, 32 Dec 2026 12:00:00 GMT", None),
    "year 99999": ("Mon, 01 Jan 99999 00:00:00 GMT", None),
    "empty": ("", None),
}


@pytest.mark.parametrize("name", sorted(RETRY_AFTERS))
def test_retry_after_is_ascii_seconds_or_an_http_date_capped_else_absent(name: str) -> None:
    value, expected = RETRY_AFTERS[name]
    with capture_logs() as logs:
        assert retry_after_s(value, now=NOW) == expected
    ignored = [e for e in logs if e["event"] == "retry_after_ignored"]
    assert len(ignored) == (1 if value is not None and expected is None else 0)
    assert all(len(e["value"]) <= 40 for e in ignored)


@pytest.mark.parametrize("header", [b"\xc2\xb2", b"nan", b"-1"], ids=["superscript-two", "nan", "negative"])
def test_a_retry_after_that_is_not_one_is_ignored_by_the_retry_and_the_error(
    ca, server_ctx, device_identity_from, header: bytes
) -> None:
    """Before: a 503's "Retry-After: ²" passed str.isdigit() and float() raised out of the call; a 429's
    "nan" or "-1" became the error's retry_after_s."""
    identity = device_identity_from(ca, "kiosk-1")
    arrivals: list[str] = []
    busy = json.dumps({"type": "about:blank", "title": "busy", "status": 503}).encode()
    limited = json.dumps({"type": "about:blank", "title": "slow down", "status": 429}).encode()

    async def app(scope, receive, send) -> None:
        arrivals.append(scope["path"])
        if scope["path"] == "/v1/health" and arrivals.count("/v1/health") > 1:  # the retry of the 503
            await hello_app(scope, receive, send)
            return
        await receive()
        status, body = (503, busy) if scope["path"] == "/v1/health" else (429, limited)
        headers = [(b"content-type", b"application/problem+json"), (b"retry-after", header)]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def go() -> tuple[dict, VerifierError]:
        async with make_client(identity, server.url) as client:
            healthy = await client.call("GET", "/v1/health")
            with pytest.raises(VerifierError) as refused:
                await client.call("POST", "/v1/challenges", json={})
            return healthy, refused.value

    with H2TestServer(server_ctx, app) as server, capture_logs() as logs:
        healthy, refused = asyncio.run(go())
    assert healthy == {"status": "ok"}  # the 503 was retried after the client's own backoff
    assert refused.status == 429 and refused.retry_after_s == 0.0
    assert arrivals == ["/v1/health", "/v1/health", "/v1/challenges"]
    assert [e["event"] for e in logs].count("retry_after_ignored") == 2


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
