"""Development PKI: a root CA, the verifier's server certificate, device certificates.

For development and test rigs only. A production site plugs in its own CA (see
certs/README.md); the verifier then only needs the CA certificate and a signing
service. Keys are EC P-256, signatures ECDSA-SHA256, private key files 0600 in a
0700 folder, and nothing here ever logs key material.

Files in the PKI folder::

    ca.pem, ca.key            root CA (the key signs device certificates)
    server.pem, server.key    the verifier's TLS certificate (localhost, 127.0.0.1)
    verifier.sqlite           registry, tokens, idempotency store, nonces
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol.certificates import X509_READ_FAULTS, bounds_enforced

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CA_DAYS = 3650
SERVER_DAYS = 397
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1")


class CSRError(ValueError):
    """A certificate request the CA will not sign; the message names the fix."""


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lowercase hex: what an installer types."""
    return cert.fingerprint(hashes.SHA256()).hex()


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")


def check_server_names(names: Sequence[str]) -> None:
    """Refuse, before any file is written, a name no agent could ever match (ValueError naming it).

    A name with a space, a Unicode name (certificates hold the A-label,
    ``xn--...``), an empty one or a label over 63 characters made a certificate
    no agent accepts, or failed halfway through `pki init` and left a CA without
    a server certificate, a folder it then refused to make again.
    """
    if not names:
        raise ValueError("no server name given")
    for name in names:
        if "*" in name:
            raise ValueError(f"{name!r}: wildcard certificates are refused by the agents")
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not HOST_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a host name or an IP address (letters, digits and '-' in dot-separated labels "
                    "of up to 63; a Unicode name as its xn-- form)"
                ) from None


def _general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        if "*" in name:
            raise ValueError(f"{name!r}: wildcard certificates are refused by the agents")
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA that can sign: its certificate and key, and the certificates above it (a site's own PKI)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...] = ()  # its issuers, as ca.pem lists them after it; () for the dev CA

    @classmethod
    def load(cls, pki_dir: Path) -> CertificateAuthority:
        """``ca.pem``: the signing CA first (the one ``ca.key`` belongs to), then its chain up to a root, if any."""
        cert, *chain = x509.load_pem_x509_certificates((pki_dir / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((pki_dir / CA_KEY).read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key is not an EC key")
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise ValueError(
                f"{CA_KEY} is not the key of the first certificate in {CA_CERT}: put the signing CA first, "
                "then its issuers"
            )
        return cls(cert, key, tuple(chain))

    @classmethod
    def create(cls, common_name: str = "capture-agent development CA") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def _leaf(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        days: float,
        usage: x509.ObjectIdentifier,
    ) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        lifetime = dt.timedelta(days=days)
        # Backdated a little for clocks slightly behind, but never by a visible share of
        # a short lifetime (that would move the renewal point).
        backdate = min(dt.timedelta(minutes=5), lifetime / 100)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )

    def issue_server_certificate(
        self, names: Sequence[str] = DEFAULT_SERVER_NAMES, days: float = SERVER_DAYS
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A TLS server certificate naming each host exactly (never a wildcard)."""
        key = ec.generate_private_key(ec.SECP256R1())
        # The common name holds 64 characters at most; the agents match the SAN names below, never it.
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
        cert = (
            self._leaf(subject, key.public_key(), days, ExtendedKeyUsageOID.SERVER_AUTH)
            .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert, key

    def issue_device_certificate(self, csr_der: bytes, device_id: str, days: float) -> x509.Certificate:
        """Sign a device's CSR. The subject is the device id the verifier chose, not the CSR's."""
        return self.certify_device_key(parse_csr(csr_der).public_key(), device_id, days)

    def certify_device_key(self, public_key: object, device_id: str, days: float) -> x509.Certificate:
        """A device certificate for the key of a request :func:`parse_csr` accepted (parsed once, signed once)."""
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
            raise CSRError(_NOT_P256)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
        return self._leaf(subject, public_key, days, ExtendedKeyUsageOID.CLIENT_AUTH).sign(self.key, hashes.SHA256())


# What the CA signs: an EC key on P-256 (named curve). The SubjectPublicKeyInfo's AlgorithmIdentifier is then
# exactly these bytes (RFC 5480: id-ecPublicKey, namedCurve prime256v1), so a request is judged by a comparison
# before its key is decoded or its signature checked: a key of another kind (RSA with a huge exponent, DSA with a
# 10,000-bit modulus) would cost a public-key operation of its own size on the event loop.
P256_ALGORITHM = bytes.fromhex("301306072a8648ce3d020106082a8648ce3d030107")
# A P-256 request is a few hundred bytes (the agent's: about 230, its 64-character device id at most included);
# anything much larger is not one.
MAX_CSR_DER = 2048

_NOT_DER = "the body is not a DER PKCS#10 certificate request (base64 of DER expected)"
_NOT_P256 = "only EC P-256 keys are accepted: generate the device key on curve P-256"
TOO_LARGE = f"the certificate request is larger than {MAX_CSR_DER} bytes: a P-256 request is a few hundred"


def _element(der: bytes, at: int, end: int) -> tuple[int, int, int]:
    """(tag, start of the contents, end) of the DER element at ``at`` within ``der[:end]``; ValueError if cut."""
    if at + 2 > end:
        raise ValueError("cut")
    tag, first, at = der[at], der[at + 1], at + 2
    if first & 0x80:
        count = first & 0x7F
        if not 0 < count <= 4 or at + count > end:
            raise ValueError("bad length")
        length, at = int.from_bytes(der[at : at + count], "big"), at + count
    else:
        length = first
    if at + length > end:
        raise ValueError("cut")
    return tag, at, at + length


def spki_algorithm(csr: x509.CertificateSigningRequest) -> bytes:
    """The DER AlgorithmIdentifier of the request's SubjectPublicKeyInfo, read without decoding the key.

    CertificationRequestInfo ::= SEQUENCE { version INTEGER, subject Name,
    subjectPKInfo SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }, ... } (RFC 2986).
    """
    info = csr.tbs_certrequest_bytes
    _, at, end = _element(info, 0, len(info))
    _, _, at = _element(info, at, end)  # version
    _, _, at = _element(info, at, end)  # subject
    _, spki, spki_end = _element(info, at, end)
    _, _, algorithm_end = _element(info, spki, spki_end)
    return info[spki:algorithm_end]


def _check_readable(csr: x509.CertificateSigningRequest) -> None:
    """Every part of the request decodes, or a :class:`CSRError` names the part.

    Why: ``load_der_x509_csr`` checks the structure only; a subject value that is
    not its string type (a UTF8String of bytes that are not UTF-8, an INTEGER
    where a string belongs), an attribute with several values, a duplicate or
    malformed extension, a general name type the library lacks raise only when the
    part is read (:data:`protocol.certificates.X509_READ_FAULTS`), wherever that is: in a log line, a
    renewal, an operator's listing. The CA signs what it can read, here, once.
    """
    parts: tuple[tuple[str, Callable[[], object]], ...] = (
        ("subject", lambda: csr.subject),
        ("attributes", lambda: list(csr.attributes)),
        ("extension request", lambda: csr.extensions),
    )
    for part, read in parts:
        try:
            with bounds_enforced():  # a subject value out of its bounds: refused, not a warning on stderr
                read()
        except X509_READ_FAULTS as exc:
            reason = str(exc)[:120] or type(exc).__name__
            raise CSRError(f"the certificate request's {part} cannot be read ({type(exc).__name__}: {reason}): "
                           "make a new request") from None


def parse_csr(csr_der: bytes) -> x509.CertificateSigningRequest:
    """A PKCS#10 request the CA accepts: small, version 0, EC P-256, every part readable, self-signed.

    Cheapest first: the size, the structure, the key's algorithm and curve as the
    SubjectPublicKeyInfo names them, the subject, attributes and extension request
    decoded; only a P-256 key is then decoded and its signature checked (both
    cost a fraction of a millisecond for P-256).
    """
    if len(csr_der) > MAX_CSR_DER:
        raise CSRError(TOO_LARGE)
    try:
        csr = x509.load_der_x509_csr(csr_der)
        algorithm = spki_algorithm(csr)
    except x509.InvalidVersion as exc:  # not a ValueError: it was a 500
        raise CSRError(f"the certificate request's version is {exc.parsed_version}, not 0 (v1, the only PKCS#10 "
                       "version): make a new request") from None
    except ValueError:
        raise CSRError(_NOT_DER) from None
    if algorithm != P256_ALGORITHM:
        raise CSRError(_NOT_P256)
    _check_readable(csr)
    # The key is only decoded here (the load above does not): a point off its curve, or a signature algorithm
    # the library does not know, raises from these, and is the request's fault like a bad load.
    try:
        key = csr.public_key()
        signed = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        raise CSRError("the certificate request's public key is not a valid key: generate a new EC P-256 key "
                       "and make a new request") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CSRError(_NOT_P256)  # cannot happen after the comparison above; kept as the CA's own check
    if not signed:
        raise CSRError("the certificate request's signature does not verify: make a new request")
    return csr


def init_pki(pki_dir: Path, server_names: Sequence[str] = DEFAULT_SERVER_NAMES) -> CertificateAuthority:
    """Make a fresh development PKI in ``pki_dir`` (refuses to overwrite an existing CA)."""
    check_server_names(server_names)
    pki_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(pki_dir, 0o700)
    if (pki_dir / CA_KEY).exists():
        raise FileExistsError(f"{pki_dir / CA_KEY} exists: this folder already holds a CA")
    ca = CertificateAuthority.create()
    _write_private(pki_dir / CA_KEY, _key_pem(ca.key))
    _write_private(pki_dir / CA_CERT, _pem(ca.cert))
    server_cert, server_key = ca.issue_server_certificate(server_names)
    _write_private(pki_dir / SERVER_KEY, _key_pem(server_key))
    _write_private(pki_dir / SERVER_CERT, _pem(server_cert))
    return ca
