"""The reference verifier's own guarantees, tested over real TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
import warnings

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from tests.conftest import raw_client_context


def get(ctx: ssl.SSLContext, url: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(http2=True, http1=False, verify=ctx, trust_env=False) as client:
            return await client.request(kwargs.pop("method", "GET"), url + path, **kwargs)

    return asyncio.run(go())


def device_files(identity, tmp_path):
    """The device's certificate and a decrypted copy of its key, for a raw client."""
    key_file = tmp_path / "raw.key"
    key_file.write_bytes(
        identity.private_key().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return identity.cert_path, key_file


def test_cacerts_needs_no_client_certificate(verifier) -> None:
    response = get(raw_client_context(verifier.pki_dir), verifier.url, "/.well-known/est/cacerts")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pkcs7-mime"
    assert response.headers["content-transfer-encoding"] == "base64"
    assert response.http_version == "HTTP/2"


def test_no_client_certificate_is_refused(verifier) -> None:
    response = get(raw_client_context(verifier.pki_dir), verifier.url, "/v1/health")
    assert response.status_code == 401
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert {"type", "title", "status", "detail", "fix"} <= problem.keys()
    assert "capture-agent provision" in problem["fix"]


def test_a_client_certificate_header_is_never_identity(verifier, provisioned) -> None:
    """Authorisation comes from the TLS layer: a header carrying a valid device cert counts for nothing."""
    _, identity = provisioned
    pem = identity.cert_path.read_text()
    spoof = {
        "X-SSL-Client-Cert": pem.replace("\n", " "),
        "X-Client-Cert": pem.replace("\n", " "),
        "SSL_CLIENT_CERT": pem.replace("\n", " "),
    }
    response = get(raw_client_context(verifier.pki_dir), verifier.url, "/v1/health", headers=spoof)
    assert response.status_code == 401


def test_the_device_certificate_over_tls_is_identity(verifier, provisioned, tmp_path) -> None:
    _, identity = provisioned
    ctx = raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path))
    response = get(ctx, verifier.url, "/v1/health")
    assert response.status_code == 200 and response.json()["device_id"] == "kiosk-1"


def test_a_client_certificate_from_another_ca_is_refused(verifier, make_test_ca) -> None:
    rogue = make_test_ca("rogue")
    cert, key = rogue.issue("kiosk-1", ["kiosk-1"], client=True)
    ctx = raw_client_context(verifier.pki_dir, cert, key)
    # OpenSSL refuses the chain in the handshake (TLS 1.3: on the first read).
    with pytest.raises(httpx.HTTPError):
        get(ctx, verifier.url, "/v1/health")
    # ... and the verifier audits the failed handshake (invariant 5).
    deadline = time.monotonic() + 5
    while "tls_handshake_failed" not in verifier.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    events = [json.loads(line) for line in verifier.log_path.read_text().splitlines() if line.startswith("{")]
    failed = [e for e in events if e["event"] == "tls_handshake_failed"]
    assert failed and failed[0]["audit"] is True and "CERTIFICATE" in failed[0]["reason"].upper()


def test_post_is_idempotent_by_key(verifier, provisioned, tmp_path) -> None:
    _, identity = provisioned
    ctx = raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path))
    key = {"Idempotency-Key": "k-1"}
    first = get(ctx, verifier.url, "/v1/challenges", method="POST", headers=key, json={})
    second = get(ctx, verifier.url, "/v1/challenges", method="POST", headers=key, json={})
    other = get(ctx, verifier.url, "/v1/challenges", method="POST", headers={"Idempotency-Key": "k-2"}, json={})
    assert first.status_code == second.status_code == 201
    assert first.json()["nonce"] == second.json()["nonce"] != other.json()["nonce"]
    reused = get(ctx, verifier.url, "/v1/challenges", method="POST", headers=key, json={"x": 1})
    assert reused.status_code == 422
    missing = get(ctx, verifier.url, "/v1/challenges", method="POST", json={})
    assert missing.status_code == 400 and "Idempotency-Key" in missing.json()["fix"]


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/nope", 404), ("DELETE", "/v1/health", 405)])
def test_unknown_routes_are_problem_details(verifier, provisioned, tmp_path, method, path, status) -> None:
    _, identity = provisioned
    ctx = raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path))
    response = get(ctx, verifier.url, path, method=method)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status


def test_simpleenroll_without_a_token_is_refused(verifier) -> None:
    response = get(
        raw_client_context(verifier.pki_dir),
        verifier.url,
        "/.well-known/est/simpleenroll",
        method="POST",
        content=b"AAAA",
        headers={"Idempotency-Key": "x"},
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_an_http11_only_client_is_refused(verifier) -> None:
    ctx = ssl.create_default_context(cafile=str(verifier.pki_dir / "ca.pem"))
    ctx.set_alpn_protocols(["http/1.1"])

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(http2=False, verify=ctx, trust_env=False) as client:
            return await client.get(verifier.url + "/.well-known/est/cacerts")

    with pytest.raises(httpx.HTTPError):
        asyncio.run(go())


def test_a_tls11_client_is_refused(verifier) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(verifier.pki_dir / "ca.pem")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", verifier.port), timeout=5) as raw, pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def test_the_frames_of_one_answer_leave_in_one_write() -> None:
    """The server's writer front holds writes for two loop turns, then sends them as one; big writes go at once."""
    from verifier.server import COALESCE_MAX_BYTES, CoalescingWriter

    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes]]:
        server_side: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while chunk := await reader.read(1 << 20):
                server_side.put_nowait(chunk)
            writer.close()

        server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, raw = await asyncio.open_connection("127.0.0.1", port)
        sent: list[bytes] = []
        original = raw.write
        raw.write = lambda data: (sent.append(bytes(data)), original(data))[1]  # count what reaches the socket
        writer = CoalescingWriter(raw)
        writer.write(b"window-update|")
        writer.write(b"headers|")
        await asyncio.sleep(0)  # hypercorn's sending task writes DATA one turn later
        writer.write(b"data")
        held = list(sent)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        coalesced = list(sent)
        writer.write(b"x" * COALESCE_MAX_BYTES)
        big = list(sent)
        writer.write(b"last")
        writer.close()  # flushes what is held
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return held, coalesced, big + sent[len(big) :]

    held, coalesced, everything = asyncio.run(scenario())
    assert held == []
    assert coalesced == [b"window-update|headers|data"]
    assert len(everything) == 3 and everything[1] == b"x" * COALESCE_MAX_BYTES and everything[2] == b"last"
