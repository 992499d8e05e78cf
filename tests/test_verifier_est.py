"""EST refusals: cheap before costly.

A certificate request is judged by its size and by the key algorithm its
SubjectPublicKeyInfo names before its key is decoded or its signature checked,
so a request for a key nobody would generate (RSA with a huge exponent, DSA with
a large modulus) costs no public-key operation; which check refused it is in the
answer's detail. Real verifier processes on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import ssl

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from agent.est import PKCS10_HEADERS
from agent.identity import build_csr, generate_key
from tests.conftest import raw_client_context
from tests.test_verifier import device_files

ENROLL, RENEW = "/.well-known/est/simpleenroll", "/.well-known/est/simplereenroll"
ONLY_P256 = "only EC P-256 keys are accepted: generate the device key on curve P-256"

# ---------------------------------------------------------------- hand-made requests (DER by hand: no library
# would make these keys, and the signature need not verify: the point is what the verifier looks at first)


def _tlv(tag: int, body: bytes) -> bytes:
    size = len(body)
    length = bytes([size]) if size < 0x80 else bytes([0x80 | ((size.bit_length() + 7) // 8)]) + size.to_bytes(
        (size.bit_length() + 7) // 8, "big"
    )
    return bytes([tag]) + length + body


def _seq(*parts: bytes) -> bytes:
    return _tlv(0x30, b"".join(parts))


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _oid(dotted: str) -> bytes:
    first, second, *rest = (int(part) for part in dotted.split("."))
    out = bytes([first * 40 + second])
    for number in rest:
        chunk = [number & 0x7F]
        number >>= 7
        while number:
            chunk.append(0x80 | (number & 0x7F))
            number >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, out)


def _bits(body: bytes) -> bytes:
    return _tlv(0x03, b"\x00" + body)


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


# ---------------------------------------------------------------- finding 1: cheap checks first


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
    for label, (der, detail) in cases.items():
        for route, answer in (("enroll", post(anonymous, verifier.url, ENROLL, der, token=token)),
                              ("renew", post(device, verifier.url, RENEW, der))):
            problem = problem_of(answer)
            assert (problem["_status"], problem["_slug"]) == (400, "bad-csr"), (label, route, problem)
            assert problem["detail"].startswith(detail), (label, route, problem["detail"])
            assert problem["fix"] == "make a new request", (label, route, problem["fix"])
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
