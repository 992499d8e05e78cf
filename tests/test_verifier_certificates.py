"""Certificates are checked on every request, not only at the handshake (issue 10, certificates).

A device certificate that expires while its HTTP/2 connection stays open, a TLS
session resumed after expiry, a certificate already replaced by a renewal, a
device renewing in a loop: each against the real verifier process.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import secrets
import socket
import ssl
import time

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from agent.devstack import LocalVerifier, provision_device
from agent.est import PKCS10_HEADERS
from agent.identity import build_csr, generate_key
from tests.conftest import raw_client_context
from tests.test_verifier import device_files, get
from tests.test_verifier_connections import settings_file

LIFETIME_S = 4.0


def reenroll_body(device_id: str) -> bytes:
    """A simplereenroll body with a fresh key (the key itself is not needed by the caller)."""
    return base64.b64encode(build_csr(generate_key(), device_id))


def post_headers() -> dict[str, str]:
    return {**PKCS10_HEADERS, "Idempotency-Key": secrets.token_hex(8)}


@pytest.mark.slow
def test_an_expired_certificate_is_refused_on_an_open_connection_and_on_resumption(tmp_path) -> None:
    extra = settings_file(tmp_path, cert_days=LIFETIME_S / 86400)
    with LocalVerifier.running(tmp_path / "pki", extra_args=extra) as verifier:
        _, identity = asyncio.run(provision_device(verifier, tmp_path / "device", "kiosk-1"))
        ctx = raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path))
        expires = identity.not_after

        async def on_one_connection() -> tuple[int, int, dict, dict]:
            limits = httpx.Limits(keepalive_expiry=60)
            async with httpx.AsyncClient(http2=True, http1=False, verify=ctx, limits=limits) as client:
                before = await client.get(verifier.url + "/v1/health")
                await asyncio.sleep(max(0.0, (expires - dt.datetime.now(dt.UTC)).total_seconds()) + 0.5)
                # A new handshake would fail in OpenSSL (expired): a problem answer proves the old connection.
                after = await client.get(verifier.url + "/v1/health")
                renewal = await client.post(
                    verifier.url + "/.well-known/est/simplereenroll",
                    content=reenroll_body("kiosk-1"),
                    headers=post_headers(),
                )
                return before.status_code, after.status_code, after.json(), renewal.json() | {"_": renewal.status_code}

        # A TLS session from before expiry, offered again after it: no ticket was issued, nothing resumes.
        raw = socket.create_connection((verifier.host, verifier.port))
        with ctx.wrap_socket(raw, server_hostname=verifier.host) as tls:
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            tls.recv(100)  # the server's SETTINGS: TLS 1.3 tickets would have arrived by now
            old_session = tls.session
        before, after, problem, renewal = asyncio.run(on_one_connection())
        resumed = None
        try:
            raw = socket.create_connection((verifier.host, verifier.port))
            with ctx.wrap_socket(raw, server_hostname=verifier.host, session=old_session) as tls:
                resumed = tls.session_reused
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                tls.recv(100)
        except (ssl.SSLError, OSError):
            pass  # a full handshake with the expired certificate: refused by OpenSSL
        log = verifier.log_path.read_text()
    assert before == 200
    assert after == 403 and problem["type"].endswith("certificate-expired"), problem
    assert "capture-agent provision" in problem["fix"]
    assert renewal["_"] == 403 and renewal["type"].endswith("certificate-expired"), renewal
    assert not resumed, "a TLS session resumed after the certificate expired"
    assert '"reason": "certificate expired"' in log  # audited


def test_a_superseded_certificate_cannot_renew_and_renewals_are_rate_limited(tmp_path) -> None:
    extra = settings_file(tmp_path, renewals_per_hour=3)
    with LocalVerifier.running(tmp_path / "pki", extra_args=extra) as verifier:
        _, identity = asyncio.run(provision_device(verifier, tmp_path / "device", "kiosk-1"))
        first = raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path))

        def renew_with(ctx: ssl.SSLContext, label: str) -> tuple[httpx.Response, ssl.SSLContext | None]:
            """One simplereenroll with a fresh key; on success, a client context with the new certificate."""
            key = generate_key()

            async def post() -> httpx.Response:
                async with httpx.AsyncClient(http2=True, http1=False, verify=ctx) as client:
                    return await client.post(
                        verifier.url + "/.well-known/est/simplereenroll",
                        content=base64.b64encode(build_csr(key, "kiosk-1")),
                        headers=post_headers(),
                    )

            response = asyncio.run(post())
            if response.status_code != 200:
                return response, None
            cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(response.content))[0]
            cert_file, key_file = tmp_path / f"{label}.pem", tmp_path / f"{label}.key"
            cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            key_file.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            return response, raw_client_context(verifier.pki_dir, cert_file, key_file)

        renewed, second = renew_with(first, "second")
        assert renewed.status_code == 200 and second is not None
        again, _ = renew_with(first, "x")  # the replaced certificate, still inside its grace period
        assert again.status_code == 403 and again.json()["type"].endswith("certificate-superseded"), again.text

        # The newest certificate renews, until the device's hourly allowance (3, the first issue included) is spent.
        renewed, third = renew_with(second, "third")
        assert renewed.status_code == 200 and third is not None
        limited, _ = renew_with(third, "fourth")
        log = verifier.log_path.read_text()
    assert limited.status_code == 429 and limited.json()["type"].endswith("renewal-rate-limited"), limited.text
    assert int(limited.headers["retry-after"]) > 3000
    assert '"reason": "certificate superseded"' in log and '"reason": "renewal rate"' in log


def off_curve_csr(device_id: str) -> bytes:
    """A P-256 request whose point is moved off the curve (its y changed): the load succeeds, the key does not.

    (Relabelled as another curve, it would now be refused before its key is decoded: only P-256 is.)
    """
    der = build_csr(generate_key(), device_id)
    point = bytes.fromhex("06082a8648ce3d030107") + bytes.fromhex("03420004")  # prime256v1, then the point
    assert der.count(point) == 1
    y_last = der.index(point) + len(point) + 63
    return der[:y_last] + bytes([der[y_last] ^ 1]) + der[y_last + 1 :]


def test_a_request_whose_key_is_not_on_its_curve_is_a_400_bad_csr_at_enroll_and_renewal(
    verifier, provisioned, tmp_path
) -> None:
    """The key is decoded after the load: its ValueError('Invalid key') was a 500 on both EST routes."""
    _, identity = provisioned
    device = raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path))
    token = verifier.new_token("kiosk-2")

    async def post(ctx: ssl.SSLContext, path: str, csr: bytes, headers: dict[str, str]) -> httpx.Response:
        async with httpx.AsyncClient(http2=True, http1=False, verify=ctx) as client:
            body = base64.b64encode(csr)
            return await client.post(verifier.url + path, content=body, headers={**post_headers(), **headers})

    anonymous, bearer = raw_client_context(verifier.pki_dir), {"Authorization": f"Bearer {token}"}
    renewal = asyncio.run(post(device, "/.well-known/est/simplereenroll", off_curve_csr("kiosk-1"), {}))
    enrollment = asyncio.run(post(anonymous, "/.well-known/est/simpleenroll", off_curve_csr("kiosk-2"), bearer))
    for answer in (renewal, enrollment):
        problem = answer.json()
        assert answer.status_code == 400 and problem["type"].endswith("/bad-csr"), problem
        assert "not a valid key" in problem["detail"]
    log = verifier.log_path.read_text()
    assert "Traceback" not in log and '"request_failed"' not in log
    # The refused request spent no token: a good request still enrolls with it.
    good = asyncio.run(post(anonymous, "/.well-known/est/simpleenroll", build_csr(generate_key(), "kiosk-2"), bearer))
    assert good.status_code == 200, good.text


def test_a_revoked_device_and_a_certificate_past_its_grace_are_told_the_fix_that_works(tmp_path) -> None:
    """Not one 'device-not-authorised, re-provision with a new token' for all: a token for a revoked id is refused
    (device-revoked), and a renewed device needs its newest certificate (certificate-superseded)."""
    with LocalVerifier.running(tmp_path / "pki", extra_args=settings_file(tmp_path, grace_s=1.0)) as verifier:
        _, renewing = asyncio.run(provision_device(verifier, tmp_path / "renewing", "kiosk-1"))
        _, revoked = asyncio.run(provision_device(verifier, tmp_path / "revoked", "kiosk-2"))
        old = raw_client_context(verifier.pki_dir, *device_files(renewing, tmp_path / "renewing"))
        renewed = get(old, verifier.url, "/.well-known/est/simplereenroll", method="POST",
                      content=reenroll_body("kiosk-1"), headers=post_headers())
        assert renewed.status_code == 200, renewed.text
        time.sleep(1.5)  # past the old certificate's grace
        superseded = get(old, verifier.url, "/v1/health").json()
        verifier.revoke("kiosk-2")
        gone = get(raw_client_context(verifier.pki_dir, *device_files(revoked, tmp_path / "revoked")),
                   verifier.url, "/v1/health").json()
    assert superseded["status"] == 403 and superseded["type"].endswith("/certificate-superseded"), superseded
    assert "newest certificate" in superseded["fix"] and "new token" not in superseded["fix"]
    assert gone["status"] == 403 and gone["type"].endswith("/device-revoked"), gone
    assert "new device id" in gone["fix"] and "token new --device NEW-ID" in gone["fix"]


@pytest.mark.parametrize(("names", "host", "warned"), [
    (None, "0.0.0.0", True),  # `pki init` without --server-name, served for a site's devices
    (None, "::", True),
    (None, "192.0.2.10", True),
    (None, "127.0.0.1", False),  # the quick start: one machine
    (None, "localhost", False),
    (("verifier.example",), "0.0.0.0", False),
    (("localhost", "verifier.example"), "0.0.0.0", False),
])
def test_serving_other_machines_a_certificate_only_this_machine_matches_is_warned_at_start(
    tmp_path, names, host, warned
) -> None:
    """Served on 0.0.0.0 with `pki init`'s default names (localhost, 127.0.0.1), every device on the network
    refuses the certificate at provisioning ("IP address mismatch"), and the verifier said nothing of it."""
    from structlog.testing import capture_logs

    from verifier.pki import SERVER_CERT, init_pki
    from verifier.server import _warn_of_a_loopback_only_certificate

    pki_dir = tmp_path / "pki"
    init_pki(pki_dir, *([names] if names else []))
    with capture_logs() as logs:
        _warn_of_a_loopback_only_certificate(pki_dir / SERVER_CERT, host)
    said = [e for e in logs if e["event"] == "server_certificate_names_only_this_machine"]
    assert bool(said) is warned, logs
    if warned:
        assert said[0]["names"] == ["localhost", "127.0.0.1"] and said[0]["log_level"] == "warning"
        assert "pki init NEW_DIR --server-name" in said[0]["fix"], said[0]
