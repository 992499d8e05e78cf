"""The verifier's side of the TLS policy, and the ASGI TLS extension it feeds.

Same rules as the agent: TLS 1.2 minimum, ECDHE with AEAD only, ALPN ``h2``
only. Client certificates are requested on every connection (CERT_OPTIONAL,
because EST cacerts and simpleenroll serve devices that have none yet) and
verified against the device CA alone; routes other than those two refuse a
connection without one.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from protocol.tls import ALPN_H2, MINIMUM_VERSION, TLS12_CIPHERS


def server_context(cert_file: Path, key_file: Path, client_ca_file: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM_VERSION
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # No session tickets (TLS 1.2 tickets off, no TLS 1.3 NewSessionTicket): a resumed session would
    # skip the certificate checks of a full handshake. The app checks the certificate on every request anyway.
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    ctx.load_cert_chain(str(cert_file), str(key_file))
    # The device CA only, no system store: the first certificate of ca.pem, the one that signs devices,
    # as an anchor of its own (a site's root after it in ca.pem vouches for nothing here).
    device_ca = x509.load_pem_x509_certificates(client_ca_file.read_bytes())[0]
    ctx.load_verify_locations(cadata=device_ca.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols([ALPN_H2])
    return ctx


def tls_scope_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
    """The ASGI TLS extension (``scope["extensions"]["tls"]``) for one connection.

    ``client_cert_chain`` holds the peer certificate OpenSSL verified during the
    handshake (PEM, leaf first); empty when the client sent none. This is the
    only source of client identity the verifier's app reads.
    """
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": ssl_object.version(),
        "cipher_suite": cipher[0] if cipher else None,
    }


def _is_loopback(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return name.lower() == "localhost" or name.lower().endswith(".localhost")


def loopback_only_names(certificate: x509.Certificate, host: str) -> list[str] | None:
    """The server certificate's names when every one is this machine's own (localhost, 127.0.0.1) while
    ``host`` listens for other machines too; else None.

    Why: `pki init DIR` without `--server-name` issues such a certificate, fine for the quick start on one
    machine; served on 0.0.0.0 for the devices of a site, every device then refuses it at provisioning
    ("IP address mismatch"), and the verifier said nothing of it.
    """
    if _is_loopback(host):
        return None
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None  # no names at all: not this check's case
    names = [str(n) for n in sans.get_values_for_type(x509.DNSName)]
    names += [str(a) for a in sans.get_values_for_type(x509.IPAddress)]
    return names if names and all(_is_loopback(n) for n in names) else None
