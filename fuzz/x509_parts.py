"""What the build modes of fuzz/csr.py and fuzz/est.py share: keys made once per process, signing, DER pieces.

Why a build mode needs these: cryptography parses DER in native code, so a mutated
byte of a raw request or certificate almost always ends in its DER parser and the
project's own checks never see the input. The build modes make structurally valid
objects from fuzzed parts instead; these helpers give them keys of each kind
(made once: RSA key generation takes tens of milliseconds up to seconds) and the
means to sign a structure with a key that is not its own.
"""

from __future__ import annotations

import warnings
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from fuzz.common import Draw

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey

KEY_KINDS = ("p256", "p384", "p521", "ed25519", "rsa1024", "rsa2048")
HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512, hashes.SHA224)
_CURVES = {"p256": ec.SECP256R1, "p384": ec.SECP384R1, "p521": ec.SECP521R1}

_keys: dict[tuple[str, int], PrivateKey] = {}


def private_key(kind: str, slot: int = 0) -> PrivateKey:
    """Key ``slot`` of ``kind`` (one of KEY_KINDS), made the first time it is asked for, then the same one."""
    cached = _keys.get((kind, slot))
    if cached is not None:
        return cached
    key: PrivateKey
    if kind in _CURVES:
        key = ec.generate_private_key(_CURVES[kind]())
    elif kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = rsa.generate_private_key(65537, int(kind.removeprefix("rsa")))
    _keys[(kind, slot)] = key
    return key


def kind_of(key: PrivateKey) -> str:
    """The KEY_KINDS name of ``key``."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "p256", "secp384r1": "p384", "secp521r1": "p521"}[key.curve.name]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    return f"rsa{key.key_size}"


def hash_for(key: PrivateKey, selector: int) -> hashes.HashAlgorithm | None:
    """The hash ``selector`` picks for signing with ``key`` (Ed25519 signs without one)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    return HASHES[selector % len(HASHES)]()


def pss(key: PrivateKey, selector: int) -> padding.PSS | None:
    """RSA-PSS when bit 2 of ``selector`` is set and the key is RSA; else None (PKCS#1 v1.5, or not RSA)."""
    if isinstance(key, rsa.RSAPrivateKey) and selector & 4:
        return padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
    return None


def sign_raw(key: PrivateKey, data: bytes, selector: int) -> bytes:
    """``key``'s signature of ``data`` as a certificate or request carries it (hash and padding by ``selector``)."""
    algorithm = hash_for(key, selector)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    assert algorithm is not None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(algorithm))
    return key.sign(data, pss(key, selector) or padding.PKCS1v15(), algorithm)


def der_element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the contents, end) of the DER element at ``at`` (definite lengths, as cryptography writes)."""
    first = der[at + 1]
    start = at + 2
    length = first
    if first & 0x80:
        count = first & 0x7F
        length, start = int.from_bytes(der[start : start + count], "big"), start + count
    return der[at], start, start + length


def der(tag: int, contents: bytes) -> bytes:
    """One DER element: ``tag``, the length in its shortest form, ``contents``."""
    size = len(contents)
    if size < 0x80:
        return bytes([tag, size]) + contents
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + contents


def signed_parts(signed_der: bytes) -> tuple[bytes, bytes, bytes]:
    """(to-be-signed DER, signature AlgorithmIdentifier DER, signature BIT STRING DER) of a request or certificate."""
    _, at, _ = der_element(signed_der, 0)
    _, _, tbs_end = der_element(signed_der, at)
    _, _, algorithm_end = der_element(signed_der, tbs_end)
    _, _, signature_end = der_element(signed_der, algorithm_end)
    return signed_der[at:tbs_end], signed_der[tbs_end:algorithm_end], signed_der[algorithm_end:signature_end]


def bit_string(element: bytes) -> bytes:
    """The bytes a DER BIT STRING element carries (after its unused-bits byte): a signature."""
    _, start, end = der_element(element, 0)
    return element[start + 1 : end]


def assemble(tbs: bytes, algorithm: bytes, signature: bytes) -> bytes:
    """A signed structure (SEQUENCE of to-be-signed, AlgorithmIdentifier, BIT STRING) from its parts."""
    return der(0x30, tbs + algorithm + der(0x03, b"\x00" + signature))


# --- name attributes, for both build modes -----------------------------------------------------------------------

NAME_OIDS = (
    NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.COUNTRY_NAME,
    NameOID.LOCALITY_NAME, NameOID.STATE_OR_PROVINCE_NAME, NameOID.SERIAL_NUMBER, NameOID.EMAIL_ADDRESS,
    NameOID.DOMAIN_COMPONENT, NameOID.USER_ID, NameOID.DN_QUALIFIER, x509.ObjectIdentifier("1.3.6.1.4.1.55555.2"),
)
# None: the type cryptography chooses for the attribute (UTF8String mostly, PrintableString for C and serialNumber).
STRING_TYPES: tuple[_ASN1Type | None, ...] = (
    None, None, _ASN1Type.UTF8String, _ASN1Type.PrintableString, _ASN1Type.IA5String, _ASN1Type.BMPString,
    _ASN1Type.UniversalString, _ASN1Type.T61String, _ASN1Type.VisibleString, _ASN1Type.NumericString,
)


def name_attribute(draw: Draw, repeats: tuple[int, int, int, int] = (1, 1, 16, 128)) -> x509.NameAttribute:
    """An attribute: OID byte, string-type byte, then :meth:`Draw.text` (empty and over-long values included)."""
    oid, string_type, value = draw.pick(NAME_OIDS), draw.pick(STRING_TYPES), draw.text(repeats)
    with warnings.catch_warnings():  # an empty or over-long value warns: that is the point here
        warnings.simplefilter("ignore")
        if string_type is None:
            return x509.NameAttribute(oid, value, _validate=False)
        return x509.NameAttribute(oid, value, string_type, _validate=False)
