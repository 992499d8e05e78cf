"""Invariant 2 on the agent's side: every server the policy refuses, refused clearly.

Each test runs a real TLS server on 127.0.0.1 (tests/h2harness.py) and the
agent's real client. Each refusal has a twin that is accepted, so a test cannot
pass because nothing works at all.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import warnings

import httpx
import pytest

from agent.client import VerifierClient
from agent.config import parse_config
from agent.errors import TLSPolicyError
from agent.identity import DeviceIdentity, spki_sha256
from tests.h2harness import H2TestServer


def client_for(identity: DeviceIdentity, url: str, pin: str = "") -> VerifierClient:
    config = parse_config(
        {
            "agent": {"state_dir": str(identity.directory.parent)},
            "verifier": {"url": url, "spki_pin": pin},
            "network": {"retries": 0},
        }
    )
    return VerifierClient(config, identity)


def health(identity: DeviceIdentity, url: str, pin: str = "") -> dict:
    async def go() -> dict:
        async with client_for(identity, url, pin) as client:
            await client.call("GET", "/v1/health")
            return client.last_tls

    return asyncio.run(go())


def refused(identity: DeviceIdentity, url: str, pin: str = "") -> TLSPolicyError:
    with pytest.raises(TLSPolicyError) as info:
        health(identity, url, pin)
    assert info.value.fix, "a refusal must name the fix"
    return info.value


def test_a_conforming_server_gets_tls13_and_h2(ca, identity) -> None:
    with H2TestServer(ca.server_context(["localhost", "127.0.0.1"], client_ca=ca.ca_file)) as server:
        tls = health(identity, server.url)
    assert tls["tls_version"] == "TLSv1.3"
    assert tls["alpn"] == "h2" and tls["http_version"] == "HTTP/2"
    assert server.log.requests == [("GET", "/v1/health")]


def test_server_certificate_from_another_ca_is_refused(make_test_ca, identity) -> None:
    other = make_test_ca("someone-else")
    with H2TestServer(other.server_context(["127.0.0.1"])) as server:
        error = refused(identity, server.url)
    assert "not issued by the device's CA" in error.fix
    assert server.log.requests == []


def test_a_refused_verifier_is_unreachable_for_health_with_the_refusals_fix(make_test_ca, identity) -> None:
    """A TLS refusal ends every call, and no retry helps; /health went on saying "unknown" (or "reachable" from an
    answer before the verifier's certificate changed) while each session failed."""
    other = make_test_ca("someone-else")

    async def go() -> VerifierClient:
        async with client_for(identity, server.url) as client:
            with pytest.raises(TLSPolicyError):
                await client.call("GET", "/v1/health")
            return client

    with H2TestServer(other.server_context(["127.0.0.1"])) as server:
        client = asyncio.run(go())
    assert client.reachability is not None, "nothing recorded: /health would say unknown"
    reached, error = client.reachability
    assert reached is False and isinstance(error, TLSPolicyError)
    assert "not issued by the device's CA" in error.fix


def server_context_for(cert_and_key: tuple) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert_and_key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def test_a_server_certificate_of_the_right_ca_but_for_tls_clients_names_its_key_usage(ca, identity) -> None:
    with H2TestServer(server_context_for(ca.issue("client-only", ["127.0.0.1"], client=True))) as server:
        error = refused(identity, server.url)
    assert "serverAuth" in error.fix and "not issued by the device's CA" not in error.fix
    assert server.log.requests == []


def test_a_host_name_in_the_common_name_alone_is_not_matched(ca, identity) -> None:
    """RFC 6125: the SAN names the host; a CN-only certificate (no SAN) is refused, its SAN twin accepted.

    A DNS name (``localhost``, still the loopback): OpenSSL never matches an IP address against the CN.
    """
    with H2TestServer(server_context_for(ca.issue("cn-only", ["localhost"], with_san=False))) as server:
        error = refused(identity, server.url.replace("127.0.0.1", "localhost"))
    assert "host name" in error.fix and server.log.requests == []
    with H2TestServer(server_context_for(ca.issue("with-san", ["localhost"]))) as server:
        assert health(identity, server.url.replace("127.0.0.1", "localhost"))["alpn"] == "h2"


def test_host_name_mismatch_is_refused(ca, identity) -> None:
    with H2TestServer(ca.server_context(["verifier.example"])) as server:
        error = refused(identity, server.url)
    assert "mismatch" in str(error).lower()
    assert "host name" in error.fix
    assert server.log.requests == []


def test_wildcard_server_certificate_is_refused(ca, identity) -> None:
    with H2TestServer(ca.server_context(["127.0.0.1", "*.example.com"])) as server:
        error = refused(identity, server.url)
    assert "wildcard" in str(error) and error.message.count("*.example.com") == 1
    assert "wildcard" in error.fix and "naming" not in error.fix, "the fix says what to do, not the message again"
    assert server.log.requests == [] and server.log.app_bytes == 0


def test_spki_pin_mismatch_sends_no_request_byte(ca, identity) -> None:
    ctx = ca.server_context(["127.0.0.1"], client_ca=ca.ca_file)
    with H2TestServer(ctx) as server:
        error = refused(identity, server.url, pin="A" * 43 + "=")
        # Shown on the server side: the handshake never completed, no byte arrived.
        assert server.log.app_bytes == 0 and server.log.requests == []
        assert server.log.handshakes_ok == 0
        assert "SPKI pin" in str(error)
        # The right pin is accepted by the same server.
        health(identity, server.url, pin=spki_sha256(ca.last_server_cert))
        assert server.log.requests == [("GET", "/v1/health")]


def tls11_only_context(ca) -> ssl.SSLContext:
    ctx = ca.server_context(["127.0.0.1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ECDHE+AES:@SECLEVEL=0")
    return ctx


def test_server_offering_only_tls11_is_refused(ca, identity) -> None:
    with H2TestServer(tls11_only_context(ca)) as server:
        # The server really speaks TLS 1.1: a permissive client gets through.
        loose = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        loose.check_hostname = False
        loose.verify_mode = ssl.CERT_NONE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loose.minimum_version = ssl.TLSVersion.TLSv1_1
        loose.set_ciphers("ALL:@SECLEVEL=0")
        with socket.create_connection(("127.0.0.1", server.port)) as raw, loose.wrap_socket(raw) as tls:
            assert tls.version() == "TLSv1.1"
        error = refused(identity, server.url)
    assert "TLS 1.2 or 1.3" in error.fix


@pytest.mark.parametrize("alpn", [("http/1.1",), ()], ids=["http1-alpn", "no-alpn"])
def test_server_speaking_only_http11_is_refused(ca, identity, alpn) -> None:
    ctx = ca.server_context(["127.0.0.1"], alpn=alpn)
    with H2TestServer(ctx, http1_only=True) as server:
        error = refused(identity, server.url)
    assert "HTTP/2" in str(error)
    assert server.log.app_bytes == 0


def handshake_failure(under: BaseException) -> httpx.ConnectError:
    """An httpx ConnectError over a reset whose cause is ``under`` (httpx, httpcore and anyio chain theirs alike)."""
    try:
        try:
            raise under
        except BaseException as exc:
            raise ConnectionResetError(104, "Connection reset by peer") from exc
    except ConnectionResetError as reset:
        error = httpx.ConnectError("")
        error.__cause__ = reset
        return error


@pytest.mark.parametrize(
    "broken",
    [ssl.SSLWantReadError(2, "The operation did not complete (read)"), ssl.SSLWantWriteError(3, "(write)")],
    ids=["want-read", "want-write"],
)
def test_a_handshake_reset_while_openssl_waits_is_a_network_failure_not_a_tls_policy(identity, broken) -> None:
    """Retried as the network's fault; a TLS policy error would stop the retries and blame the TLS setup."""
    from agent.client import tls_policy_error
    from agent.handshake import refusal_of_device_certificate

    url = "https://127.0.0.1:8443"
    assert tls_policy_error(handshake_failure(broken), url) is None
    assert refusal_of_device_certificate(handshake_failure(broken), identity, url) is None
    verdict = ssl.SSLError(1, "[SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 alert protocol version")
    assert isinstance(tls_policy_error(handshake_failure(verdict), url), TLSPolicyError)  # a verdict still is one


# A device whose clock is off sees the verifier's certificate as not yet valid or expired. Rather than
# fake the clock, the server gets a certificate whose dates are off: OpenSSL gives the same verdict.
@pytest.mark.parametrize(
    ("days", "verdict"),
    [((400, 800), "not yet valid"), ((-800, -400), "expired")],
    ids=["clock-behind", "clock-ahead"],
)
def test_a_server_certificate_out_of_its_dates_names_the_clock_not_the_ca(ca, identity, days, verdict) -> None:
    now = dt.datetime.now(dt.UTC)
    valid = (now + dt.timedelta(days=days[0]), now + dt.timedelta(days=days[1]))
    with H2TestServer(ca.server_context(["127.0.0.1"], client_ca=ca.ca_file, valid=valid)) as server:
        error = refused(identity, server.url)
    assert verdict in error.message and f"which says {now:%Y-%m-%d}" in error.message
    assert "timedatectl" in error.fix and "clock" in error.fix
    assert "not issued by the device's CA" not in error.fix and "re-provision" not in error.fix
    assert server.log.requests == []


def test_a_port_answering_plain_http_is_named_as_not_tls(identity, plain_http_port) -> None:
    error = refused(identity, f"https://127.0.0.1:{plain_http_port}")
    assert "does not speak TLS" in error.message and "plain HTTP" in error.message
    assert "check the port" in error.fix and "TLS 1.2 or 1.3" not in error.fix


@pytest.mark.parametrize(
    ("url", "connect"),
    [("https://[fd00::5]:9443", "[fd00::5]:9443"), ("https://verifier.example", "verifier.example:8443")],
)
def test_the_host_mismatch_fix_gives_an_openssl_line_that_runs_for_the_url(url: str, connect: str) -> None:
    """s_client reads HOST:PORT: an IPv6 address must be bracketed, or its colons are taken for the port's."""
    from agent.client import tls_policy_error

    mismatch = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    mismatch.verify_message = "IP address mismatch, certificate is not valid for the address"
    error = tls_policy_error(mismatch, url)
    assert error is not None and f"openssl s_client -connect {connect} " in error.fix, error
