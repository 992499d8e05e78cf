"""EST refusals: cheap before costly, counted, audited; and a token the operator can take back.

A certificate request is judged by its size and by the key algorithm its
SubjectPublicKeyInfo names before its key is decoded or its signature checked,
so a request for a key nobody would generate (RSA with a huge exponent, DSA with
a large modulus) costs no public-key operation; which check refused it is in the
answer's detail. Refused requests spend an allowance per token (enrollment) and
per device (renewal), past which the next request is refused before it is looked
at. Every refusal is an audit event naming the device when it is known. Real
verifier processes on 127.0.0.1, real `capture-verifier` commands.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import ssl

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AttributeOID, NameOID

from agent.devstack import LocalVerifier
from agent.est import PKCS10_HEADERS
from agent.identity import build_csr, generate_key
from tests.conftest import raw_client_context
from tests.der import bits as _bits
from tests.der import children as _children
from tests.der import integer as _int
from tests.der import oid as _oid
from tests.der import seq as _seq
from tests.der import tlv as _tlv
from tests.test_verifier import device_files
from tests.test_verifier_connections import log_events
from tests.test_verifier_operator_cli import cli, listed, refused, rows
from verifier.store import open_database
from verifier.tokens import BootstrapTokens

ENROLL, RENEW = "/.well-known/est/simpleenroll", "/.well-known/est/simplereenroll"
ONLY_P256 = "only EC P-256 keys are accepted: generate the device key on curve P-256"

# ---------------------------------------------------------------- hand-made requests (DER by hand: no library
# would make these keys, and the signature need not verify: the point is what the verifier looks at first)


def request_with(spki: bytes, signature_algorithm: bytes, signature: bytes) -> bytes:
    """A PKCS#10 request around any SubjectPublicKeyInfo, with whatever signature."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "capture-agent")]).public_bytes()
    info = _seq(_int(0), name, spki, _tlv(0xA0, b""))
    return _seq(info, signature_algorithm, _bits(signature))


def rsa_huge_exponent_request() -> bytes:
    """RSA-3072 whose exponent is about as long as its modulus: checking its signature took 13 ms."""
    n = secrets.randbits(3072) | (1 << 3071) | 1
    spki = _seq(_seq(_oid("1.2.840.113549.1.1.1"), b"\x05\x00"), _bits(_seq(_int(n), _int((n >> 1) | 1))))
    return request_with(spki, _seq(_oid("1.2.840.113549.1.1.11"), b"\x05\x00"), secrets.token_bytes(384))


def dsa_request(p_bits: int = 3072) -> bytes:
    """DSA with a large modulus (signature check: milliseconds, 27 ms at 10,000 bits)."""
    p = secrets.randbits(p_bits) | (1 << (p_bits - 1)) | 1
    q = secrets.randbits(256) | (1 << 255) | 1
    params = _seq(_int(p), _int(q), _int(secrets.randbits(p_bits - 2) | 2))
    spki = _seq(_seq(_oid("1.2.840.10040.4.1"), params), _bits(_int(secrets.randbits(p_bits - 2) | 2)))
    signature = _seq(_int(secrets.randbits(250) | 1), _int(secrets.randbits(250) | 1))
    return request_with(spki, _seq(_oid("2.16.840.1.101.3.4.3.2")), signature)


def rsa_undecodable_request() -> bytes:
    """An RSA key that is no key at all: only decoding it would tell (it said 'not a valid key')."""
    spki = _seq(_seq(_oid("1.2.840.113549.1.1.1"), b"\x05\x00"), _bits(b"\x01\x02\x03"))
    return request_with(spki, _seq(_oid("1.2.840.113549.1.1.11"), b"\x05\x00"), secrets.token_bytes(32))


def p256_relabelled_p192_request() -> bytes:
    """A P-256 request whose curve is named P-192: its point is on no curve it names (said 'not a valid key')."""
    der = build_csr(generate_key())
    prime256v1, prime192v1 = bytes.fromhex("06082a8648ce3d030107"), bytes.fromhex("06082a8648ce3d030101")
    assert der.count(prime256v1) == 1
    return der.replace(prime256v1, prime192v1)


def oversized_p256_request() -> bytes:
    """A well-formed, correctly signed P-256 request of more than 2 KiB (host names nobody asked for)."""
    names = [x509.DNSName(f"host-{i}.example") for i in range(150)]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "capture-agent")]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(generate_key(), hashes.SHA256())
    )
    der = csr.public_bytes(serialization.Encoding.DER)
    assert 2048 < len(der) < 4096 * 3 // 4, len(der)  # its base64 fits the body cap: the DER cap refuses it
    return der


def bad_csr() -> bytes:
    """A P-256 request whose signature does not verify (its last byte changed)."""
    der = build_csr(generate_key())
    return der[:-1] + bytes([der[-1] ^ 1])


def edited_request(version: bytes | None = None, subject: bytes | None = None,
                   attributes: bytes | None = None) -> bytes:
    """A request cryptography built (P-256, a SAN and a challenge password), one part of its
    CertificationRequestInfo replaced by DER, signed again by its key: only the edited part is wrong."""
    key = generate_key()
    built = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "capture-agent")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("kiosk.example")]), critical=False)
        .add_attribute(AttributeOID.CHALLENGE_PASSWORD, b"pw")
        .sign(key, hashes.SHA256())
    )
    was_version, was_subject, spki, was_attributes = _children(built.tbs_certrequest_bytes)
    info = _seq(version or was_version, subject or was_subject, spki,
                _tlv(0xA0, attributes) if attributes is not None else was_attributes)
    signature = key.sign(info, ec.ECDSA(hashes.SHA256()))
    return _seq(info, _seq(_oid("1.2.840.10045.4.3.2")), _bits(signature))


def _common_name(value: bytes) -> bytes:
    """A Name of one RDN: commonName = ``value`` (a whole DER element, of any type)."""
    return _seq(_tlv(0x31, _seq(_oid("2.5.4.3"), value)))


def _extension_request(*extensions: bytes) -> bytes:
    return _seq(_oid("1.2.840.113549.1.9.14"), _tlv(0x31, _seq(*extensions)))


SAN_OID = "2.5.29.17"
A_SAN = _seq(_oid(SAN_OID), _tlv(0x04, _seq(_tlv(0x82, b"kiosk.example"))))


# ---------------------------------------------------------------- requests


def post(ctx: ssl.SSLContext, url: str, path: str, der: bytes | None = None, *, body: bytes | None = None,
         token: str | None = None) -> httpx.Response:
    """One EST POST: base64 of ``der`` (or ``body`` as it is), with the token when given."""
    headers = {**PKCS10_HEADERS, "Idempotency-Key": secrets.token_hex(8)}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    content = body if body is not None else base64.b64encode(der or b"")

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(http2=True, http1=False, verify=ctx, trust_env=False) as client:
            return await client.post(url + path, content=content, headers=headers)

    return asyncio.run(go())


def problem_of(answer: httpx.Response) -> dict:
    problem = answer.json()
    return {**problem, "_status": answer.status_code, "_slug": problem["type"].rsplit("/", 1)[-1]}


def assert_bad_csr_on_both_routes(cases: dict[str, tuple[bytes, str]], url: str, anonymous: ssl.SSLContext,
                                  token: str, device: ssl.SSLContext) -> None:
    """Each request (label: (DER, start of the detail)) is a 400 bad-csr naming the fix at enroll and at renew."""
    for label, (der, detail) in cases.items():
        for route, answer in (("enroll", post(anonymous, url, ENROLL, der, token=token)),
                              ("renew", post(device, url, RENEW, der))):
            problem = problem_of(answer)
            assert (problem["_status"], problem["_slug"]) == (400, "bad-csr"), (label, route, problem)
            assert problem["detail"].startswith(detail), (label, route, problem["detail"])
            assert problem["fix"] == "make a new request", (label, route, problem["fix"])


def audit_events(verifier: LocalVerifier, event: str) -> list[dict]:
    return [e for e in log_events(verifier) if e.get("event") == event]


def summarised(verifier: LocalVerifier, key: str) -> int:
    """How many events the flood summaries counted under ``key`` ("event: reason") without a line each."""
    return sum(e["counts"].get(key, 0) for e in audit_events(verifier, "connection_events_summary"))


# ---------------------------------------------------------------- finding 1: cheap checks first


@pytest.mark.verifier_settings("est_refusals_per_min = 100")
def test_a_request_for_another_key_than_p256_is_refused_before_its_key_is_decoded_or_signature_checked(
    verifier, provisioned, tmp_path
) -> None:
    """The detail says which check refused the request: the old order checked the signature (or decoded the
    key) first, and said so; a 3 KiB request signed by a P-256 key was signed by the CA."""
    _, identity = provisioned
    device = raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path))
    anonymous, token = raw_client_context(verifier.pki_dir), verifier.new_token("kiosk-2")
    cases = {
        "RSA-3072 with a 3071-bit exponent": (rsa_huge_exponent_request(), ONLY_P256),
        "DSA with a 3072-bit modulus": (dsa_request(), ONLY_P256),
        "RSA whose key bits are no key": (rsa_undecodable_request(), ONLY_P256),
        "P-256 point labelled P-192": (p256_relabelled_p192_request(), ONLY_P256),
        "P-256, 2 KiB of names": (oversized_p256_request(), "the certificate request is larger than 2048 bytes"),
    }
    assert_bad_csr_on_both_routes(cases, verifier.url, anonymous, token, device)
    # A body too large to be base64 of a request is refused before it is decoded.
    for answer in (post(anonymous, verifier.url, ENROLL, body=b"A" * 5000, token=token),
                   post(device, verifier.url, RENEW, body=b"A" * 5000)):
        problem = problem_of(answer)
        assert (problem["_status"], problem["_slug"]) == (400, "bad-csr"), problem
        assert problem["detail"].startswith("the body is larger than 4096 bytes"), problem["detail"]
        assert problem["fix"].startswith("send base64 of the DER PKCS#10 request"), problem["fix"]
    # Nothing was spent: the token still enrolls, the device still renews.
    assert post(anonymous, verifier.url, ENROLL, build_csr(generate_key()), token=token).status_code == 200
    assert post(device, verifier.url, RENEW, build_csr(generate_key(), "kiosk-1")).status_code == 200


@pytest.mark.verifier_settings("est_refusals_per_min = 100")
def test_a_request_of_another_version_or_with_an_unreadable_part_is_a_400_bad_csr_not_a_500_nor_signed(
    verifier, provisioned, tmp_path
) -> None:
    """Each request is well signed by a P-256 key; one part of it was edited. Version 1 was a 500 (cryptography's
    InvalidVersion is no ValueError); the others were signed, their bad part left for whoever read it next."""
    _, identity = provisioned
    device = raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path))
    anonymous, token = raw_client_context(verifier.pki_dir), verifier.new_token("kiosk-2")
    password = _oid("1.2.840.113549.1.9.7")
    cases = {
        "version 1": (edited_request(version=_int(1)), "the certificate request's version is 1, not 0"),
        "version 5": (edited_request(version=_int(5)), "the certificate request's version is 5, not 0"),
        "a UTF8String CN that is not UTF-8": (edited_request(subject=_common_name(_tlv(0x0C, b"\xff\xfe"))),
                                              "the certificate request's subject cannot be read"),
        "an INTEGER CN": (edited_request(subject=_common_name(_int(2))),
                          "the certificate request's subject cannot be read"),
        "a password of two values": (edited_request(attributes=_seq(password, _tlv(0x31, _tlv(0x0C, b"a")
                                                                               + _tlv(0x0C, b"b")))),
                                     "the certificate request's attributes cannot be read"),
        "the SAN twice": (edited_request(attributes=_extension_request(A_SAN, A_SAN)),
                          "the certificate request's extension request cannot be read (DuplicateExtension"),
        "a SAN of an INTEGER": (edited_request(attributes=_extension_request(
            _seq(_oid(SAN_OID), _tlv(0x04, _int(5))))), "the certificate request's extension request cannot be read"),
        # an x400Address ([3]): cryptography's UnsupportedGeneralNameType, no ValueError, was a 500 (a review)
        "a SAN of an x400Address": (edited_request(attributes=_extension_request(
            _seq(_oid(SAN_OID), _tlv(0x04, _seq(_tlv(0xA3, b"")))))),
            "the certificate request's extension request cannot be read (UnsupportedGeneralNameType"),
    }
    assert x509.load_der_x509_csr(cases["an INTEGER CN"][0]).is_signature_valid  # the edit is all that is wrong
    assert_bad_csr_on_both_routes(cases, verifier.url, anonymous, token, device)
    # The unedited request goes through: the refusals were of the edits.
    assert post(anonymous, verifier.url, ENROLL, edited_request(), token=token).status_code == 200
    assert "Traceback" not in verifier.log_path.read_text()


@pytest.mark.verifier_settings("renewals_per_hour = 1")
def test_a_device_past_its_renewal_rate_is_refused_before_its_request_is_parsed(verifier, provisioned, tmp_path):
    """Its first certificate spent the hour's one issue: any renewal request, however bad, is a 429 now (the old
    order parsed it first, signature check included, and answered 400 bad-csr)."""
    _, identity = provisioned
    device = raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path))
    problem = problem_of(post(device, verifier.url, RENEW, rsa_huge_exponent_request()))
    assert (problem["_status"], problem["_slug"]) == (429, "renewal-rate-limited"), problem


# ---------------------------------------------------------------- finding 1: refusals are counted


@pytest.mark.verifier_settings("est_refusals_per_min = 3")
def test_refused_requests_spend_an_allowance_per_token_and_per_device_then_wait(verifier, provisioned, tmp_path):
    """Three refusals a minute; the fourth request, a good one, is refused before it is looked at (429 with
    Retry-After), spends nothing and issues nothing. Another token's holder is not held up."""
    _, identity = provisioned
    device = raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path))
    anonymous = raw_client_context(verifier.pki_dir)
    token, other = verifier.new_token("kiosk-2"), verifier.new_token("kiosk-3")
    enrolments = [post(anonymous, verifier.url, ENROLL, der, token=token)
                  for der in (bad_csr(), rsa_huge_exponent_request(), b"not DER")]
    renewals = [post(device, verifier.url, RENEW, der)
                for der in (bad_csr(), build_csr(identity.private_key(), "kiosk-1"), dsa_request())]
    assert [a.status_code for a in enrolments + renewals] == [400] * 6, [a.text for a in enrolments + renewals]
    assert problem_of(renewals[1])["_slug"] == "key-reused"

    held = post(anonymous, verifier.url, ENROLL, build_csr(generate_key()), token=token)
    held_renewal = post(device, verifier.url, RENEW, build_csr(generate_key(), "kiosk-1"))
    enrolled_other = post(anonymous, verifier.url, ENROLL, build_csr(generate_key()), token=other)
    verifier.stop()

    problem = problem_of(held)
    assert (problem["_status"], problem["_slug"]) == (429, "device-rate-limited"), problem
    assert "kiosk-2" in problem["detail"] and "capture-agent provision" in problem["fix"]
    assert int(held.headers["retry-after"]) >= 1
    problem = problem_of(held_renewal)
    assert (problem["_status"], problem["_slug"]) == (429, "renewal-rate-limited"), problem
    assert int(held_renewal.headers["retry-after"]) >= 1
    assert enrolled_other.status_code == 200, enrolled_other.text
    spent = "SELECT device_id FROM tokens WHERE used_at IS NOT NULL AND device_id != 'kiosk-1' ORDER BY device_id"
    assert rows(verifier.pki_dir, spent) == [("kiosk-3",)]  # kiosk-2's token is still good
    assert rows(verifier.pki_dir, "SELECT COUNT(*) FROM certificates WHERE device_id = 'kiosk-1'") == [(1,)]
    for event, device_id in (("enrollment_refused", "kiosk-2"), ("renewal_refused", "kiosk-1")):
        reasons = [e["reason"] for e in audit_events(verifier, event) if e.get("device_id") == device_id]
        assert len(reasons) == 4 and reasons[-1] == "too many refused requests", (event, reasons)


# ---------------------------------------------------------------- finding 2: every refusal is audited


def test_every_est_refusal_is_an_audit_event_naming_the_device_and_the_reason(verifier, provisioned, tmp_path):
    _, identity = provisioned
    device = raw_client_context(verifier.pki_dir, *device_files(identity, tmp_path))
    anonymous, token = raw_client_context(verifier.pki_dir), verifier.new_token("kiosk-3")
    answers = {
        "token-required": post(anonymous, verifier.url, ENROLL, build_csr(generate_key())),
        "bad-csr at enrollment": post(anonymous, verifier.url, ENROLL, b"not DER", token=token),
        "enrolled": post(anonymous, verifier.url, ENROLL, build_csr(generate_key()), token=token),
        "token used": post(anonymous, verifier.url, ENROLL, build_csr(generate_key()), token=token),
        "bad-csr at renewal": post(device, verifier.url, RENEW, bad_csr()),
        "key-reused": post(device, verifier.url, RENEW, build_csr(identity.private_key(), "kiosk-1")),
    }
    # A token an older verifier issued before the id was revoked (`device revoke` now revokes tokens too).
    assert cli("device", "revoke", "--pki", str(verifier.pki_dir), "kiosk-1").returncode == 0
    conn = open_database(verifier.pki_dir / "verifier.sqlite")
    try:
        older, _ = BootstrapTokens(conn).new("kiosk-1")
    finally:
        conn.close()
    answers["device-revoked"] = post(anonymous, verifier.url, ENROLL, build_csr(generate_key()), token=older)
    flood = [post(anonymous, verifier.url, ENROLL, build_csr(generate_key())) for _ in range(12)]
    verifier.stop()

    statuses = {label: answer.status_code for label, answer in answers.items()}
    assert statuses == {"token-required": 401, "bad-csr at enrollment": 400, "enrolled": 200, "token used": 401,
                        "bad-csr at renewal": 400, "key-reused": 400, "device-revoked": 403}, statuses
    assert {a.status_code for a in flood} == {401}

    def one(event: str, **fields: str) -> dict:
        found = [e for e in audit_events(verifier, event) if fields.items() <= e.items()]
        assert len(found) == 1, (event, fields, audit_events(verifier, event))
        assert found[0]["audit"] is True
        return found[0]

    one("enrollment_refused", device_id="kiosk-3", problem="bad-csr",
        reason="the body is not a DER PKCS#10 certificate request (base64 of DER expected)")
    one("enrollment_refused", device_id="kiosk-3", problem="bad-token", reason="this bootstrap token was already used")
    one("enrollment_refused", device_id="kiosk-1", problem="device-revoked", reason="device revoked")
    renewal = one("renewal_refused", device_id="kiosk-1", problem="bad-csr")
    assert renewal["reason"] == "the certificate request's signature does not verify: make a new request"
    one("renewal_refused", device_id="kiosk-1", problem="key-reused", reason="key reused")
    # Requests without a token (anyone can send them): each counted, a few logged one by one, the rest summarised.
    lines = [e for e in audit_events(verifier, "enrollment_refused") if e["reason"] == "token required"]
    assert all(e["audit"] is True and e["problem"] == "token-required" and "device_id" not in e for e in lines)
    assert 1 <= len(lines) < 13
    assert len(lines) + summarised(verifier, "enrollment_refused: token required") == 13


# ---------------------------------------------------------------- finding 3: taking a token back


def test_token_revoke_cancels_a_leaked_token_and_the_id_may_get_a_new_one(verifier) -> None:
    pki = str(verifier.pki_dir)
    anonymous, leaked = raw_client_context(verifier.pki_dir), verifier.new_token("kiosk-leak")
    assert listed(verifier.pki_dir)["kiosk-leak"]["status"] == "pending"

    done = cli("token", "revoke", "--pki", pki, "kiosk-leak")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("revoked 1 unused token of kiosk-leak"), done.stdout
    audit = [json.loads(line) for line in done.stderr.splitlines() if '"token_revoked"' in line]
    assert audit == [audit[0]] and audit[0]["audit"] is True and audit[0]["device_id"] == "kiosk-leak", done.stderr
    assert "kiosk-leak" not in listed(verifier.pki_dir), "a revoked token leaves nothing pending"

    problem = problem_of(post(anonymous, verifier.url, ENROLL, build_csr(generate_key()), token=leaked))
    assert (problem["_status"], problem["_slug"]) == (401, "bad-token"), problem
    assert problem["detail"] == "this bootstrap token was revoked by the operator"

    again = cli("token", "revoke", "--pki", pki, "kiosk-leak")
    assert again.returncode == 0 and "nothing changed" in again.stdout, (again.stdout, again.stderr)
    error, fix = refused(cli("token", "revoke", "--pki", pki, "kiosk-nobody"))
    assert error == "error: no unused token names 'kiosk-nobody'"
    assert "device list" in fix and "device revoke" in fix
    error, _ = refused(cli("token", "revoke", "--pki", pki, "../kiosk"))
    assert "is not a device id" in error

    fresh = verifier.new_token("kiosk-leak")  # the id itself is still good
    assert post(anonymous, verifier.url, ENROLL, build_csr(generate_key()), token=fresh).status_code == 200
    verifier.stop()
    one = [e for e in audit_events(verifier, "enrollment_refused") if e.get("device_id") == "kiosk-leak"]
    assert [e["reason"] for e in one] == ["this bootstrap token was revoked by the operator"], one


def test_device_revoke_on_an_id_that_has_not_provisioned_revokes_its_tokens_and_the_id(verifier, provisioned):
    pki = str(verifier.pki_dir)
    anonymous = raw_client_context(verifier.pki_dir)
    pending, reprovision = verifier.new_token("kiosk-pend"), verifier.new_token("kiosk-1")

    done = cli("device", "revoke", "--pki", pki, "kiosk-pend")
    assert done.returncode == 0, done.stderr  # it was "error: no active device 'kiosk-pend'"
    assert "had not provisioned" in done.stdout and "1 unused token" in done.stdout, done.stdout
    audit = [json.loads(line) for line in done.stderr.splitlines() if '"device_revoked"' in line]
    assert len(audit) == 1 and audit[0]["audit"] is True and audit[0]["device_id"] == "kiosk-pend", done.stderr
    assert audit[0]["tokens_revoked"] == 1 and audit[0]["provisioned"] is False
    assert listed(verifier.pki_dir)["kiosk-pend"]["status"] == "revoked"
    problem = problem_of(post(anonymous, verifier.url, ENROLL, build_csr(generate_key()), token=pending))
    assert (problem["_status"], problem["_slug"]) == (401, "bad-token"), problem
    error, _ = refused(cli("token", "new", "--pki", pki, "--device", "kiosk-pend"))
    assert "kiosk-pend is revoked" in error

    # A provisioned device's unused re-provisioning token goes with it.
    done = cli("device", "revoke", "--pki", pki, "kiosk-1")
    assert done.returncode == 0 and done.stdout.strip() == "revoked kiosk-1 and its 1 unused token", done.stdout
    problem = problem_of(post(anonymous, verifier.url, ENROLL, build_csr(generate_key()), token=reprovision))
    assert (problem["_status"], problem["_slug"]) == (401, "bad-token"), problem
    # An id with neither a device nor a token is still a typo.
    typo, _ = refused(cli("device", "revoke", "--pki", pki, "kiosk-nobody"))
    assert typo.startswith("error: no device 'kiosk-nobody'"), typo
