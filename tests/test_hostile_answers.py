"""A verifier (or whatever stands in its place) answering garbage: typed errors, and nothing queued lost.

Invariant 6 of DESIGN.md, on the agent's side, against a real TLS + HTTP/2
server on loopback that answers what a broken proxy, a captive portal or a
misconfigured verifier would: redirects, pages that are not JSON, compressed
or truncated bodies, receipts that account for nothing, certificates the
device could not use.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from agent.client import FOREIGN_REFUSAL_FIX, VerifierClient
from agent.config import parse_config
from agent.delivery import EventDelivery
from agent.errors import AgentError, AnswerError, ProvisioningError, VerifierError
from agent.est import fetch_ca_certificates
from agent.identity import DeviceIdentity, IdentityStore
from agent.keystore import new_kek
from agent.outbox import Outbox
from agent.renewal import check_renewed, renew, validity_warning
from agent.verifier_api import VerifierAPI
from tests.conftest import hostile_certificate
from tests.h2harness import H2TestServer

JSON = (b"content-type", b"application/json")


def answering(status: int, body: bytes, *headers: tuple[bytes, bytes]):
    """An ASGI app answering every request with this status, body and headers."""

    async def app(scope, receive, send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        await send({"type": "http.response.body", "body": body})

    return app


def client_for(identity: DeviceIdentity, url: str) -> VerifierClient:
    config = parse_config(
        {
            "agent": {"state_dir": str(identity.directory.parent)},
            "verifier": {"url": url},
            "network": {"retries": 1, "backoff_base_s": 0.01, "connect_timeout_s": 2.0},
        }
    )
    return VerifierClient(config, identity)


def call_against(server_ctx, identity: DeviceIdentity, app, path: str = "/v1/health") -> object:
    async def go() -> object:
        async with client_for(identity, server.url) as client:
            return await client.call("POST", path, json={})

    with H2TestServer(server_ctx, app) as server:
        return asyncio.run(go())


@pytest.mark.parametrize(
    ("app", "reason"),
    [
        (answering(307, b'{"accepted": 3}', JSON, (b"location", b"https://elsewhere.invalid/")), "HTTP 307"),
        (answering(200, b'{"accepted": 3}', (b"content-type", b"text/html")), "text/html"),
        (answering(200, b'{"accepted": 3}'), "untyped"),
        (answering(200, b'{"accepted": 3}', JSON, (b"content-encoding", b"gzip")), "compressed"),
        (answering(200, b'{"a": 1}', JSON, (b"content-length", b"100")), "LocalProtocolError"),
        (answering(200, b'{"ttl_s": 1e400}', JSON), "out of range"),
        (answering(200, b'{"ttl_s": NaN}', JSON), "not a JSON number"),
    ],
    ids=["redirect", "html", "no-content-type", "gzip", "length-lies", "huge-float", "nan"],
)
def test_an_answer_that_is_not_the_protocol_is_a_typed_error(server_ctx, identity, app, reason) -> None:
    with pytest.raises(AnswerError) as info:
        call_against(server_ctx, identity, app)
    assert reason in info.value.message
    assert "capture-verifier" in info.value.fix


def test_a_challenge_with_a_lifetime_of_400_digits_is_a_typed_error(server_ctx, identity) -> None:
    body = b'{"nonce": "n", "expires_at": "x", "ttl_s": 1' + b"0" * 400 + b"}"

    async def go() -> None:
        async with client_for(identity, server.url) as client:
            await VerifierAPI(client).challenge("verify", "alice")

    with H2TestServer(server_ctx, answering(200, body, JSON)) as server, pytest.raises(AnswerError, match="range"):
        asyncio.run(go())


def test_the_client_asks_for_answers_uncompressed(server_ctx, identity) -> None:
    seen: list[bytes] = []

    async def app(scope, receive, send) -> None:
        seen.extend(value for name, value in scope["headers"] if name == b"accept-encoding")
        await answering(200, b"{}", JSON)(scope, receive, send)

    assert call_against(server_ctx, identity, app) == {}
    assert seen == [b"identity"]


def test_a_refusal_of_another_service_gets_a_fix_of_ours(server_ctx, identity) -> None:
    problem = json.dumps({"type": "about:blank", "title": "Forbidden", "detail": "denied by WAF rule 942100"})
    with pytest.raises(VerifierError) as info:
        call_against(server_ctx, identity, answering(403, problem.encode(), (b"content-type", b"application/json")))
    assert info.value.fix == FOREIGN_REFUSAL_FIX  # not the foreign service's detail passed off as the fix
    assert "WAF" in info.value.message


# ---------------------------------------------------------------- the outbox under garbage


@pytest.mark.parametrize(
    "app",
    [
        answering(307, b'{"accepted": 3, "duplicates": 0, "anomalies": []}', JSON, (b"location", b"https://x/")),
        answering(200, b"[]", JSON),
        answering(200, b'{"status": "ok"}', JSON),
        answering(200, b'{"accepted": 0, "duplicates": 0, "anomalies": []}', JSON),  # accounts for none of 3
        answering(200, b'{"accepted": 3, "duplicates": 0, "anomalies": []}', JSON, (b"content-encoding", b"gzip")),
    ],
    ids=["redirect", "list", "health-like", "accounts-for-none", "gzip"],
)
def test_events_stay_queued_until_a_receipt_accounts_for_them(server_ctx, identity, tmp_path, app) -> None:
    box = Outbox(tmp_path / "outbox.sqlite", new_kek())
    for n in range(3):
        box.record("heartbeat", {"n": n})

    async def go() -> tuple[bool, int]:
        async with client_for(identity, server.url) as client:
            delivery = EventDelivery(box, client)
            task = asyncio.create_task(delivery.run())
            async with asyncio.timeout(20):  # a delivery that took the garbage for a receipt never retries
                while len(server.log.requests) < 2:  # tried, backed off, tried again: the task lives on
                    await asyncio.sleep(0.05)
            alive = not task.done()
            task.cancel()
            return alive, delivery.delivered_total

    with H2TestServer(server_ctx, app) as server:
        alive, delivered = asyncio.run(go())
    assert alive and delivered == 0
    assert box.size() == 3
    box.close()


def test_a_receipt_that_accounts_for_the_batch_empties_the_outbox(server_ctx, identity, tmp_path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite", new_kek())
    for n in range(3):
        box.record("heartbeat", {"n": n})
    receipt = b'{"accepted": 2, "duplicates": 0, "anomalies": [{"kind": "bad_hash"}]}'  # one held aside

    async def go() -> int:
        async with client_for(identity, server.url) as client:
            return await EventDelivery(box, client).deliver_once()

    with H2TestServer(server_ctx, answering(200, receipt, JSON)) as server:
        assert asyncio.run(go()) == 3
    assert box.size() == 0
    box.close()


# ---------------------------------------------------------------- renewal


def _foreign_ca_signing(make_test_ca, device_id: str):
    """An EST simplereenroll answering with a certificate for the CSR's key, from a CA the device never trusted."""
    foreign = make_test_ca("foreign-ca")

    async def app(scope, receive, send) -> None:
        message = await receive()
        csr = x509.load_der_x509_csr(base64.b64decode(message["body"]))
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, device_id)]))
            .issuer_name(foreign.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(foreign.key, hashes.SHA256())
        )
        body = base64.b64encode(pkcs7.serialize_certificates([cert], serialization.Encoding.DER))
        await answering(200, body, (b"content-type", b"application/pkcs7-mime"))(scope, _replay(message), send)

    return app


def _replay(message: dict):
    async def receive() -> dict:
        return message

    return receive


def test_a_renewed_certificate_from_another_ca_is_refused_and_the_working_one_kept(
    server_ctx, identity, make_test_ca
) -> None:
    folder = identity.directory

    async def go() -> None:
        async with client_for(identity, server.url) as client:
            await renew(client.config, client)

    with (
        H2TestServer(server_ctx, _foreign_ca_signing(make_test_ca, "kiosk-1")) as server,
        pytest.raises(VerifierError, match="not signed by the device's CA") as info,
    ):
        asyncio.run(go())
    assert "kept" in info.value.message
    assert folder.exists()
    kept = IdentityStore(folder.parent).load(identity.passphrase)
    assert kept.serial_hex == identity.serial_hex  # the link still names the certificate that works


def test_check_renewed_refuses_another_device_id_and_says_the_old_certificate_is_numbered(ca, identity) -> None:
    _, other = ca.issue_key_and_cert(["kiosk-2"], client=True)
    with pytest.raises(VerifierError, match="another device id") as info:
        check_renewed(other, identity)
    assert "grace" in info.value.fix and "provision --force" in info.value.fix  # the old one will not last
    _, same = ca.issue_key_and_cert(["kiosk-1"], client=True)
    check_renewed(same, identity)  # the same CA, the same id: taken


def test_a_renewed_certificate_outside_the_devices_clock_is_taken_with_a_warning(ca) -> None:
    """The verifier judged the dates by its clock and checks them on every connection: refusing would strand
    the device (its old certificate is already superseded), so the clock is named instead."""
    _, same = ca.issue_key_and_cert(["kiosk-1"], client=True)
    assert validity_warning(same) is None
    behind = validity_warning(same, now=same.not_valid_before_utc - dt.timedelta(days=1))
    assert behind is not None and "timedatectl" in behind
    assert validity_warning(same, now=same.not_valid_before_utc - dt.timedelta(minutes=4)) is None  # skew allowed
    assert validity_warning(same, now=same.not_valid_after_utc + dt.timedelta(seconds=1)) is not None


# ---------------------------------------------------------------- first contact (EST, before any identity)


@pytest.mark.parametrize(
    ("app", "reason"),
    [
        (answering(200, gzip.compress(b"A" * 4_000_000), (b"content-type", b"application/pkcs7-mime"),
                   (b"content-encoding", b"gzip")), "compressed"),  # 4 MB from 4 KB, had it been decoded
        (answering(200, b"not gzip at all", (b"content-encoding", b"deflate")), "compressed"),
    ],
    ids=["gzip-bomb", "bad-deflate"],
)
def test_the_unverified_first_contact_reads_no_more_than_a_ca_bundle(server_ctx, app, reason) -> None:
    """cacerts comes over TLS that cannot be verified yet: whoever answers may be anyone on the path."""
    with H2TestServer(server_ctx, app) as server, pytest.raises(ProvisioningError) as info:
        asyncio.run(fetch_ca_certificates(server.url))
    assert reason in info.value.message
    assert "--verifier" in info.value.fix


# ---------------------------------------------------------------- certificates that load, then raise when read

PKCS7 = (b"content-type", b"application/pkcs7-mime")


def _pkcs7(*certs: x509.Certificate) -> bytes:
    return base64.b64encode(pkcs7.serialize_certificates(list(certs), serialization.Encoding.DER))


@pytest.mark.parametrize("defect", ["duplicate-extension", "unsupported-curve"])
def test_a_cacerts_answer_with_a_certificate_that_cannot_be_read_in_full_is_a_provisioning_error(
    server_ctx, ca, defect: str
) -> None:
    """Before: the bundle was taken, and DuplicateExtension or UnsupportedAlgorithm came out of the trust check
    or the identity write, untyped."""
    body = _pkcs7(ca.cert, hostile_certificate(ca, "sub-ca", defect, ca=True))
    with H2TestServer(server_ctx, answering(200, body, PKCS7)) as server, pytest.raises(ProvisioningError) as info:
        asyncio.run(fetch_ca_certificates(server.url))
    assert "certificate #2 of the verifier's cacerts answer cannot be read in full" in info.value.message
    assert "capture-verifier" in info.value.fix


def _edited_bundle(ca, edit) -> bytes:
    """A cacerts answer whose DER was edited after the bundle was made (a certificate's signature is not what
    the agent's reading of the bundle checks first)."""
    der = pkcs7.serialize_certificates([ca.cert], serialization.Encoding.DER)
    edited = edit(der)
    assert edited != der, "the edit changed nothing"
    return base64.b64encode(edited)


UTF8_COMMON_NAME = bytes.fromhex("0603550403") + b"\x0c"  # the CN attribute's OID, then a UTF8String tag
X509_V3 = bytes.fromhex("a003020102")  # [0] version INTEGER 2 (v3)
DATA_CONTENT = bytes.fromhex("06092a864886f70d010701")  # PKCS#7 "data": not the signed bundle EST sends


@pytest.mark.parametrize(
    ("body", "said"),
    [
        # tag 13 (RELATIVE-OID) where a string belongs: cryptography loads the name, then a KeyError from reading it
        (lambda ca: _edited_bundle(ca, lambda der: der.replace(UTF8_COMMON_NAME, UTF8_COMMON_NAME[:-1] + b"\x0d", 1)),
         "cannot be read in full: KeyError"),
        # X.509 version 42: cryptography's InvalidVersion, no ValueError, out of loading the bundle
        (lambda ca: _edited_bundle(ca, lambda der: der.replace(X509_V3, X509_V3[:-1] + b"\x2a", 1)),
         "not a base64 PKCS#7 certificate bundle"),
        # a PKCS#7 of another content type: UnsupportedAlgorithm out of loading it
        (lambda ca: base64.b64encode(b"\x30\x12" + DATA_CONTENT + b"\xa0\x05\x04\x03abc"),
         "not a base64 PKCS#7 certificate bundle"),
    ],
    ids=["string-tag-13", "version-42", "pkcs7-data"],
)
def test_a_cacerts_answer_cryptography_refuses_in_its_own_words_is_a_provisioning_error(
    server_ctx, ca, body, said: str
) -> None:
    """Found by fuzzing (fuzz/est.py): KeyError, InvalidVersion and UnsupportedAlgorithm came out untyped."""
    with H2TestServer(server_ctx, answering(200, body(ca), PKCS7)) as server, pytest.raises(ProvisioningError) as info:
        asyncio.run(fetch_ca_certificates(server.url))
    assert said in info.value.message and info.value.fix


def _reenroll_answering(ca, defect: str):
    """An EST simplereenroll signing the CSR's key for kiosk-1 with the device's own CA, with a defect."""

    async def app(scope, receive, send) -> None:
        message = await receive()
        csr = x509.load_der_x509_csr(base64.b64decode(message["body"]))
        body = _pkcs7(hostile_certificate(ca, "kiosk-1", defect, csr.public_key()))
        await answering(200, body, PKCS7)(scope, _replay(message), send)

    return app


@pytest.mark.parametrize("defect", ["duplicate-extension", "unsupported-curve"])
def test_a_renewed_certificate_that_cannot_be_read_in_full_is_refused_and_the_working_one_kept(
    server_ctx, ca, identity, defect: str
) -> None:
    """Before: a duplicate extension was written as the new identity (to fail at the next trust check), and an
    unsupported curve was an UnsupportedAlgorithm traceback out of the identity write."""

    async def go() -> None:
        async with client_for(identity, server.url) as client:
            await renew(client.config, client)

    with H2TestServer(server_ctx, _reenroll_answering(ca, defect)) as server, pytest.raises(AgentError) as info:
        asyncio.run(go())
    assert isinstance(info.value, ProvisioningError), type(info.value)
    assert "simplereenroll answer cannot be read in full" in info.value.message
    kept = IdentityStore(identity.directory.parent).load(identity.passphrase)
    assert kept.serial_hex == identity.serial_hex


@pytest.mark.parametrize("nonce", ["too-short", "é" * 43, "n" * 300])
def test_a_challenge_whose_nonce_no_liveness_challenge_comes_from_is_a_typed_error(
    server_ctx, identity, camera_sim, nonce: str
) -> None:
    """A face session derives its head turns from the nonce: one not ASCII, or outside the lengths a challenge
    takes, raised the face package's LivenessError (or a UnicodeEncodeError), an untyped error with no fix."""
    from agent.config import DeviceSection
    from agent.devices.kinds import CameraDevice
    from agent.face_sessions import FaceSession

    body = json.dumps({"nonce": nonce, "expires_at": "2030-01-01T00:00:00Z", "ttl_s": 60}).encode()

    async def go() -> BaseException:
        device = CameraDevice(DeviceSection(kind="camera", source=camera_sim.url), "camera")
        await device.open()
        try:
            async with client_for(identity, server.url) as client:
                with pytest.raises(Exception) as raised:
                    await FaceSession(device, client).identify()
                return raised.value
        finally:
            device.stop()

    with H2TestServer(server_ctx, answering(200, body, JSON)) as server:
        error = asyncio.run(go())
    assert isinstance(error, AnswerError), repr(error)
    assert "/v1/challenges" in error.message and "liveness" in error.message and "compatible version" in error.fix
    assert nonce not in error.message
