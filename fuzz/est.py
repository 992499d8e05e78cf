"""Fuzz the agent's reading of EST answers (agent.est, agent.identity, agent.provision) and of refusals.

The first byte is the mode. 0 modulo 8: the bytes after it are a ``cacerts`` /
``simpleenroll`` answer body (base64 of a certs-only PKCS#7). 2 modulo 4: the DER
of that PKCS#7 (the harness writes its base64: a mutation then changes the
certificates, not the base64 layer over them). 4 modulo 8, built: the bytes
describe certificates the harness builds, signs and bundles itself (a mutated DER
almost always ends in cryptography's native parser, so the agent's own checks get
no variation from it); the layout is :func:`build`'s, and a built answer over the
agent's limit (EST_ANSWER_MAX_BYTES) is not fed. What parses goes through what
provisioning does with it: the CA picked by its fingerprint
(agent.provision.select_ca; the first certificate's, or in the built mode the one
the description names), the CAs it vouches for (agent.identity.trusted_under),
their PEM read back as ca.pem is (load_certificates_in_full), the device id
(common_name), fingerprints and SPKI pins, the first certificate as the enrolled
one (agent.identity.certifies_key with the device key, the clock checks of
agent.provision.validity_by_local_clock and agent.renewal.validity_warning). Odd:
the bytes are an EST error answer (status from the second byte, a
``Retry-After`` header up to the first LF, then the body), read as the agent
reads every refusal (agent.client.problem_error).

Typed errors: ProvisioningError and every AgentError.
"""

from __future__ import annotations

import base64
import datetime as dt
import sys
import warnings
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.client import problem_error
from agent.errors import AgentError
from agent.est import EST_ANSWER_MAX_BYTES, parse_pkcs7_certs
from agent.identity import (
    DeviceIdentity,
    certificate_fingerprint,
    certifies_key,
    common_name,
    load_certificates_in_full,
    spki_sha256,
    trusted_under,
)
from agent.provision import select_ca, validity_by_local_clock
from agent.renewal import validity_warning
from fuzz.common import Draw
from fuzz.x509_parts import KEY_KINDS, PrivateKey, der, hash_for, name_attribute, private_key, pss
from verifier.pki import CertificateAuthority

MAX_CERTS = 8
# A subject value repeated up to 16 times (4,080 characters): longer than any bound on a name, while eight
# certificates of three such names stay near the agent's answer limit (x128 made inputs of seconds, not milliseconds).
NAME_REPEATS = (1, 1, 4, 16)
MAX_ORDER = 12
BREAKS = (b"\n", b"\r\n", b" ", b"\t", b"\r\n ", b"\n\n")
_NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
# Validity bounds, by a byte: around now (the agent's clock checks allow 5 minutes of skew), and the encodings'
# edges (UTCTime ends with 2049; GeneralizedTime from 2050; 1950 is the earliest cryptography writes).
TIMES = (
    _NOW - dt.timedelta(days=3650), _NOW - dt.timedelta(days=1), _NOW - dt.timedelta(hours=1),
    _NOW - dt.timedelta(minutes=5, seconds=1), _NOW - dt.timedelta(minutes=5), _NOW, _NOW + dt.timedelta(minutes=4),
    _NOW + dt.timedelta(minutes=6), _NOW + dt.timedelta(hours=1), _NOW + dt.timedelta(days=1),
    _NOW + dt.timedelta(days=3650), dt.datetime(1950, 1, 1, tzinfo=dt.UTC),
    dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC), dt.datetime(2050, 1, 1, tzinfo=dt.UTC),
    dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
)
BUILD_FAULTS = (ValueError, TypeError, UnicodeError, OverflowError)
# A certs-only PKCS#7 holding no certificate (cryptography writes none: it wants at least one).
_SIGNED_DATA = der(0x30, b"\x02\x01\x01\x31\x00" + der(0x30, der(0x06, bytes.fromhex("2a864886f70d010701")))
                   + b"\xa0\x00\x31\x00")
EMPTY_PKCS7 = der(0x30, der(0x06, bytes.fromhex("2a864886f70d010702")) + der(0xA0, _SIGNED_DATA))

_ca: CertificateAuthority | None = None


def _test_ca() -> CertificateAuthority:
    """The per-process CA the built certificates may be issued by (a P-256 development CA, as the verifier's)."""
    global _ca
    if _ca is None:
        _ca = CertificateAuthority.create("fuzz EST CA")
    return _ca


def _device_key() -> PrivateKey:
    """The device's key in the built mode: the P-256 key of slot 0, so a built certificate may be for it."""
    return private_key("p256", 0)


def _certs(body: bytes, anchor: int = 0) -> None:
    try:
        certs = parse_pkcs7_certs(body, "cacerts")
    except AgentError:
        return
    confirmed = certs[anchor] if anchor < len(certs) else _test_ca().cert
    ca = select_ca(certs, certificate_fingerprint(confirmed))
    trusted = trusted_under(ca, certs)
    ca_pem = "".join(cert.public_bytes(serialization.Encoding.PEM).decode("ascii") for cert in trusted)
    load_certificates_in_full(ca_pem.encode("ascii"), "the CA certificates ca.pem", "re-provision")
    for cert in certs:
        common_name(cert)
        spki_sha256(cert)
        validity_warning(cert)
    enrolled = certs[0]
    key = _device_key()
    certifies_key(enrolled, key)  # type: ignore[arg-type]
    validity_by_local_clock(DeviceIdentity(Path("identity"), enrolled, tuple(trusted), b"", key))  # type: ignore[arg-type]


def _refusal(data: bytes) -> None:
    status = 400 + data[0] % 200 if data else 400
    retry_after, _, body = data[1:].partition(b"\n")
    headers = [(b"content-type", b"application/problem+json"), (b"retry-after", retry_after.strip())]
    error = problem_error(httpx.Response(status, headers=headers, content=body))
    if not isinstance(error, AgentError):
        raise AssertionError(f"problem_error gave a {type(error).__name__}")
    str(error)


def _issuer(selector: int, built: list[tuple[x509.Certificate, PrivateKey]]) -> tuple[x509.Name, PrivateKey] | None:
    """(issuer name, issuer key) by the issuer byte; None: self-signed."""
    which = selector & 3
    if which == 1:
        return _test_ca().cert.subject, _test_ca().key
    if which == 2 and built:
        cert, key = built[-1]
        return cert.subject, key
    if which == 3 and built:
        cert, key = built[(selector >> 4 & 7) % len(built)]
        return cert.subject, key
    return None


def _certificate(draw: Draw, built: list[tuple[x509.Certificate, PrivateKey]]) -> tuple[x509.Certificate, PrivateKey]:
    """One certificate as :func:`build` describes it."""
    issuer_byte, key_byte, hashing = draw.byte(), draw.byte(), draw.byte()
    starts, ends, flags, serial = draw.pick(TIMES), draw.pick(TIMES), draw.byte(), draw.byte()
    subject = x509.Name([name_attribute(draw, NAME_REPEATS) for _ in range(draw.byte() % 4)])
    if ends <= starts:  # cryptography writes no window that ends before it starts: the two swapped, or 1 s long
        starts, ends = (ends, starts) if ends < starts else (starts, starts + dt.timedelta(seconds=1))
    key = private_key(KEY_KINDS[key_byte % len(KEY_KINDS)], key_byte >> 4 & 3)
    issuer = _issuer(issuer_byte, built)
    issuer_name, signer = issuer or (subject, key)
    if issuer_byte & 0x80:
        signer = private_key("p256", 7)  # nobody's: the signature does not verify under the issuer's key
    if serial == 0:
        number = x509.random_serial_number()
    elif serial == 1 and built:
        number = built[-1][0].serial_number
    elif serial == 2:
        number = (1 << 159) - 1
    else:
        number = serial
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(number)
        .not_valid_before(starts)
        .not_valid_after(ends)
    )
    if flags & 1:
        path = 0 if flags & 4 and flags & 2 else None
        builder = builder.add_extension(x509.BasicConstraints(ca=bool(flags & 2), path_length=path),
                                        critical=bool(flags & 8))
    if flags & 0x10:
        ca = bool(flags & 2)
        builder = builder.add_extension(x509.KeyUsage(not ca, False, False, False, False, ca, ca, False, False),
                                        critical=True)
    if flags & 0x20:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if flags & 0x40 and issuer is not None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
                                        critical=False)
    if flags & 0x80:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    with warnings.catch_warnings():  # a name attribute cryptography would not have made: that is the point
        warnings.simplefilter("ignore")
        cert = builder.sign(signer, hash_for(signer, hashing), rsa_padding=pss(signer, hashing))
    return cert, key


def _pkcs7(bundle: list[x509.Certificate], listed: bool) -> bytes:
    """The certs-only PKCS#7 of ``bundle``: cryptography's (the SET OF sorted, as DER has it), or ``listed``
    in the bundle's own order, as a server that does not sort writes it (then it is BER, not DER)."""
    der = pkcs7.serialize_certificates(bundle, serialization.Encoding.DER)
    if not listed:
        return der
    try:  # the order cryptography wrote them in
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            written = pkcs7.load_der_pkcs7_certificates(der)
    except ValueError:  # OpenSSL does not read it back (a name it refuses): the agent will not either
        return der
    block = b"".join(cert.public_bytes(serialization.Encoding.DER) for cert in written)
    return der.replace(block, b"".join(cert.public_bytes(serialization.Encoding.DER) for cert in bundle), 1)


def build(spec: bytes) -> tuple[bytes, int]:
    """The EST answer body ``spec`` describes and the index of the certificate to confirm.

    Layout (read with fuzz.common.Draw):

    * the base64's line width (0: one line), its line break (LF, CRLF, space, tab, CRLF
      then a space, two LFs; bit 3: one at the end too, bit 4: one at the start too;
      bit 5: the certificates in the bundle's order, not sorted as DER's SET OF is);
    * the certificate to confirm: its index in the bundle, modulo the bundle's length
      plus one (that one: the test CA's fingerprint, maybe not in the bundle);
    * the order: a count (modulo 12; 0: the certificates as built) and that many
      indexes of built certificates (modulo their number): any order, duplicates,
      some left out;
    * then certificates (at most 8) until the input ends, each: an issuer byte (bits
      0-1: self-signed, the test CA, the certificate built before, the one bits 4-6
      name; bit 7: signed by a key that is not the issuer's), a key byte (the kind
      modulo 6, bits 4-5 which of four keys of it), a hash byte, not-before and
      not-after bytes (from TIMES; swapped when the window
      would end before it starts), a flags byte (bit 0 basic constraints, bit 1 CA,
      bit 2 path length 0, bit 3 critical; bit 4 key usage, for a CA certificate
      signing, else digital signature; bit 5 subject key id; bit 6 authority key id;
      bit 7 client-auth extended key usage), a serial byte (0 random, 1 the previous
      certificate's, 2 the largest, else itself), then up to 3 subject attributes
      (a count byte, then :func:`fuzz.x509_parts.name_attribute`, repeated at most
      16 times: NAME_REPEATS). None at all, or
      none that cryptography builds: the answer is a bundle without a certificate.
    """
    draw = Draw(spec)
    width, breaks, anchor = draw.byte(), draw.byte(), draw.byte()
    order = [draw.byte() for _ in range(draw.byte() % MAX_ORDER)]
    built: list[tuple[x509.Certificate, PrivateKey]] = []
    while draw.more() and len(built) < MAX_CERTS:
        try:
            built.append(_certificate(draw, built))
        except BUILD_FAULTS:
            continue
    bundle = [built[i % len(built)][0] for i in order if built] if order else [cert for cert, _ in built]
    text = base64.b64encode(_pkcs7(bundle, listed=bool(breaks & 0x20)) if bundle else EMPTY_PKCS7)
    line_break = BREAKS[breaks % len(BREAKS)]
    if width:
        text = line_break.join(text[at : at + width] for at in range(0, len(text), width))
    text = (line_break if breaks & 0x10 else b"") + text + (line_break if breaks & 8 else b"")
    return text, anchor % (len(bundle) + 1)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    try:
        if data[0] % 4 == 2:
            _certs(base64.b64encode(data[1:]))
        elif data[0] % 8 == 4:
            body, anchor = build(data[1:])
            if len(body) <= EST_ANSWER_MAX_BYTES:  # a longer answer is refused before it is parsed (read_answer)
                _certs(body, anchor)
        elif data[0] % 2 == 0:
            _certs(data[1:])
        else:
            _refusal(data[1:])
    except AgentError:
        pass


if __name__ == "__main__":
    from fuzz.common import main

    main("est", TestOneInput, sys.argv)
