"""Fuzz the verifier's checks of a certificate request (verifier.pki.parse_csr) and the issuing that follows.

The first byte is the mode. Even, raw: the input is the request's DER (whose
first byte, 0x30, is even: the raw inputs of before the build mode still are).
Odd, built: the bytes after it describe a request that the harness builds with
cryptography's CertificateSigningRequestBuilder and signs (a mutated raw DER
almost always ends in cryptography's native DER parser, so parse_csr's own checks
get no variation from it). The description, read with fuzz.common.Draw:

* six header bytes: the key (P-256, P-384, P-521, Ed25519, RSA-1024, RSA-2048; by
  the byte modulo 6; keys are made once per process); the hash (bits 0-1: SHA-256,
  SHA-384, SHA-512, SHA-224; bit 2: RSA-PSS for an RSA key); who signs (modulo 4:
  0, 1 the request's own key; 2 another key of its kind; 3 a key of another kind,
  P-256 or for a P-256 request Ed25519: the signature does not verify); a tweak of
  the signed DER (modulo 16: 8 the version INTEGER set to the value byte; 9 an
  unknown signature algorithm; 10 a byte of the public key changed (a P-256 point
  off its curve); 11 cut to the value byte's length; 12 the to-be-signed byte at
  the position byte set to the value byte; 13 a byte after the DER; 14 an empty
  signature; anything else none); the tweak's position byte; its value byte.
* then parts, each a selector byte (bits 0-2 the kind, bit 3 critical where the
  part is an extension) and its own bytes, until the input ends (at most 48):

  0. a subject attribute (:func:`fuzz.x509_parts.name_attribute`); bit 4: in the
     same RDN as the one before (multi-valued); bits 5-7: repeated 1-8 times
  1. a subject alternative name: a count byte (modulo 8), then per name a type
     byte (DNS, URI, IP address, email, registered ID, directory name, other name)
     and its text or bytes
  2. basic constraints: bit 4 CA, bit 5 a path length (the next byte)
  3. key usage: two bytes of flags
  4. extended key usage: a count byte (modulo 6), then per usage an OID byte
  5. an extension written as raw bytes: an OID byte (an unknown one, or one
     cryptography knows: then a value it cannot read), then its value's bytes
  6. a request attribute (challengePassword, unstructuredName, an unknown OID):
     OID byte, ASN.1 tag byte, value bytes
  7. a subject key identifier of the value's bytes

A part cryptography refuses to build is left out; a request it refuses to sign
is not fed. What parse_csr accepts is signed by a development CA made once per
process (CertificateAuthority.issue_device_certificate), as EST simpleenroll does.
Typed error: CSRError.
"""

from __future__ import annotations

import ipaddress
import sys
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import AttributeOID, ExtendedKeyUsageOID, ExtensionOID

from fuzz.common import Draw
from fuzz.x509_parts import (
    KEY_KINDS,
    PrivateKey,
    assemble,
    bit_string,
    der,
    der_element,
    hash_for,
    name_attribute,
    private_key,
    pss,
    sign_raw,
    signed_parts,
)
from verifier.pki import CertificateAuthority, CSRError, parse_csr

_ca: CertificateAuthority | None = None

MAX_PARTS = 48
UNKNOWN_EXTENSION = "1.3.6.1.4.1.55555.3"
RAW_EXTENSION_OIDS = (
    None, None, ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE, ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.NAME_CONSTRAINTS, ExtensionOID.CRL_DISTRIBUTION_POINTS, ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.AUTHORITY_INFORMATION_ACCESS, ExtensionOID.TLS_FEATURE, ExtensionOID.OCSP_NO_CHECK,
)
USAGES = (
    ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CODE_SIGNING,
    ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.OCSP_SIGNING, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    x509.ObjectIdentifier("1.3.6.1.4.1.55555.4"),
)
ATTRIBUTE_OIDS = (AttributeOID.CHALLENGE_PASSWORD, AttributeOID.UNSTRUCTURED_NAME, x509.ObjectIdentifier("1.2.3.4.5"))
ATTRIBUTE_TAGS: tuple[_ASN1Type | None, ...] = (None, *_ASN1Type)
# What cryptography raises for a part it will not write (a non-ASCII DNS name, CA false with a path length, an
# extension twice, a PrintableString with an '@'): that part is left out, or the request is not fed. RecursionError:
# RFC822Name's constructor parses the address with email.utils, which recurses once per nested "(" (a name read
# from a request is made without that parse, so this is the harness's building only).
BUILD_FAULTS = (ValueError, TypeError, UnicodeError, OverflowError, RecursionError)


def _general_name(draw: Draw) -> x509.GeneralName:
    kind = draw.byte() % 7
    if kind == 0:
        return x509.DNSName(draw.text())
    if kind == 1:
        return x509.UniformResourceIdentifier(draw.text())
    if kind == 2:
        raw = draw.blob()
        return x509.IPAddress(ipaddress.ip_address(raw[:16].ljust(16, b"\0") if len(raw) > 4 else raw.ljust(4, b"\0")))
    if kind == 3:
        return x509.RFC822Name(draw.text())
    if kind == 4:
        return x509.RegisteredID(x509.ObjectIdentifier(f"1.3.6.1.4.1.55555.5.{draw.byte()}"))
    if kind == 5:
        return x509.DirectoryName(x509.Name([name_attribute(draw)]))
    return x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.55555.6"), draw.blob())


def _extension(kind: int, draw: Draw) -> x509.ExtensionType:
    """The extension of part ``kind`` (1-5, 7)."""
    if kind == 1:
        return x509.SubjectAlternativeName([_general_name(draw) for _ in range(draw.byte() % 8)])
    if kind == 2:
        flags = draw.byte()
        return x509.BasicConstraints(ca=bool(flags & 0x10), path_length=draw.byte() if flags & 0x20 else None)
    if kind == 3:
        bits = int.from_bytes(draw.take(2).ljust(2, b"\0"), "big")
        flag = [bool(bits >> n & 1) for n in range(9)]
        return x509.KeyUsage(*flag)
    if kind == 4:
        return x509.ExtendedKeyUsage([draw.pick(USAGES) for _ in range(draw.byte() % 6)])
    if kind == 5:
        oid = draw.pick(RAW_EXTENSION_OIDS) or x509.ObjectIdentifier(f"{UNKNOWN_EXTENSION}.{draw.byte()}")
        return x509.UnrecognizedExtension(oid, draw.blob())
    return x509.SubjectKeyIdentifier(draw.blob())


def _described(draw: Draw) -> x509.CertificateSigningRequestBuilder:
    """The builder with every part of the description cryptography takes (subject, extensions, attributes)."""
    builder = x509.CertificateSigningRequestBuilder()
    rdns: list[list[x509.NameAttribute]] = []
    for _ in range(MAX_PARTS):
        if not draw.more():
            break
        selector = draw.byte()
        kind, critical = selector & 7, bool(selector & 8)
        try:
            if kind == 0:
                attribute = name_attribute(draw)
                for _ in range(1 + (selector >> 5)):
                    if selector & 0x10 and rdns:
                        rdns[-1].append(attribute)
                    else:
                        rdns.append([attribute])
            elif kind == 6:
                oid, tag, value = draw.pick(ATTRIBUTE_OIDS), draw.pick(ATTRIBUTE_TAGS), draw.blob()
                builder = builder.add_attribute(oid, value, _tag=tag) if tag else builder.add_attribute(oid, value)
            else:
                builder = builder.add_extension(_extension(kind, draw), critical=critical)
        except BUILD_FAULTS:
            continue
    try:
        return builder.subject_name(x509.Name([x509.RelativeDistinguishedName(rdn) for rdn in rdns]))
    except BUILD_FAULTS:  # a multi-valued RDN holding the same attribute twice: the subject without those
        return builder.subject_name(x509.Name([x509.RelativeDistinguishedName([rdn[0]]) for rdn in rdns]))


def _signer(kind: str, selector: int) -> PrivateKey:
    if selector % 4 == 2:
        return private_key(kind, 1)
    if selector % 4 == 3:
        return private_key("ed25519" if kind == "p256" else "p256")
    return private_key(kind)


def _tweak(signed: bytes, tweak: int, position: int, value: int) -> bytes:
    """The signed request with tweak ``tweak`` (the docstring's list) applied."""
    tbs, algorithm, signature = signed_parts(signed)
    tweak %= 16
    if tweak == 8:  # version INTEGER: the first element of CertificationRequestInfo, one byte long
        _, at, _ = der_element(tbs, 0)
        _, contents, _ = der_element(tbs, at)
        return assemble(tbs[:contents] + bytes([value]) + tbs[contents + 1 :], algorithm, bit_string(signature))
    if tweak == 9:
        unknown = der(0x30, der(0x06, bytes.fromhex("2b0601040183b22301") + bytes([value & 0x7F])) + b"\x05\x00")
        return assemble(tbs, unknown, bit_string(signature))
    if tweak == 10:  # the key's BIT STRING is the last element of the SubjectPublicKeyInfo, after the subject
        at = der_element(tbs, 0)[1]
        for _ in range(2):  # version, subject
            at = der_element(tbs, at)[2]
        spki_end = der_element(tbs, at)[2]
        spot = spki_end - 1 - position % 8
        return signed.replace(tbs, tbs[:spot] + bytes([tbs[spot] ^ (value | 1)]) + tbs[spot + 1 :], 1)
    if tweak == 11:
        return signed[: value % len(signed)]
    if tweak == 12:
        spot = position * 7 % len(tbs)
        return signed.replace(tbs, tbs[:spot] + bytes([value]) + tbs[spot + 1 :], 1)
    if tweak == 13:
        return signed + bytes([value])
    if tweak == 14:
        return der(0x30, tbs + algorithm + b"\x03\x01\x00")
    return signed


def build(spec: bytes) -> bytes | None:
    """The DER request ``spec`` describes (the module docstring's layout); None when cryptography will not sign it."""
    draw = Draw(spec)
    kind = draw.pick(KEY_KINDS)
    hashing, who, tweak, position, value = draw.byte(), draw.byte(), draw.byte(), draw.byte(), draw.byte()
    key = private_key(kind)
    builder = _described(draw)
    try:
        with warnings.catch_warnings():  # an attribute cryptography would not have made: that is the point
            warnings.simplefilter("ignore")
            own = builder.sign(key, hash_for(key, hashing), rsa_padding=pss(key, hashing))
    except BUILD_FAULTS:
        return None
    signed = own.public_bytes(serialization.Encoding.DER)
    signer = _signer(kind, who)
    if signer is not key:
        tbs = own.tbs_certrequest_bytes
        algorithm = signed_parts(_described(Draw(b"")).sign(signer, hash_for(signer, hashing),
                                                            rsa_padding=pss(signer, hashing))
                                 .public_bytes(serialization.Encoding.DER))[1]
        signed = assemble(tbs, algorithm, sign_raw(signer, tbs, hashing))
    return _tweak(signed, tweak, position, value)


def TestOneInput(data: bytes) -> None:
    global _ca
    if data[:1] and data[0] & 1:
        request = build(data[1:])
        if request is None:
            return
    else:
        request = data
    try:
        parse_csr(request)
    except CSRError:
        return
    if _ca is None:
        _ca = CertificateAuthority.create()
    _ca.issue_device_certificate(request, "fuzz-device", 1.0)


if __name__ == "__main__":
    from fuzz.common import main

    main("csr", TestOneInput, sys.argv)
