"""The client side of invariant 2: a hand-made ``ssl.SSLContext`` and its checks.

OpenSSL verifies the chain (against the configured CA only) and the host name.
Three rules OpenSSL cannot express are checked by :class:`PolicySSLObject` right
after the handshake completes and before the connection is handed to HTTP, so no
request byte is ever written to a server that breaks them:

* a wildcard server certificate is refused;
* the server key must match the SPKI pin, when one is configured;
* ALPN must have selected ``h2`` (HTTP/2 is required).

A violation raises :class:`PolicyViolation`, an ``ssl.SSLCertVerificationError``, so
every TLS stack above (anyio, httpcore, httpx) treats it as a failed handshake.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.tls import ALPN_H2, MINIMUM_VERSION, TLS12_CIPHERS


class PolicyViolation(ssl.SSLCertVerificationError):
    """The server completed a handshake that the agent's policy refuses; ``fix`` says what to change."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


@dataclass(frozen=True)
class ServerPolicy:
    """What is checked on the server after OpenSSL has verified chain and name."""

    spki_pin: str = ""  # base64 SHA-256 of the server's SubjectPublicKeyInfo
    refuse_wildcards: bool = True
    require_h2: bool = True


def _spki_pin_of(der_certificate: bytes) -> str:
    """The server certificate's pin, over its SPKI bytes as sent: a key on a curve the cryptography library
    lacks (OpenSSL took it in the handshake) is pinned like any other, not an UnsupportedAlgorithm."""
    from agent.identity import spki_der

    try:
        spki = spki_der(der_certificate)
    except IndexError:
        raise PolicyViolation("the verifier's certificate is cut short: its public key cannot be pinned",
                              fix="check what answers at [verifier] url: this may not be your verifier") from None
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def _names(peer: dict[str, Any]) -> Iterable[str]:
    for kind, value in peer.get("subjectAltName", ()):
        if kind == "DNS":
            yield value
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                yield value


def enforce_policy(conn: ssl.SSLObject | ssl.SSLSocket, policy: ServerPolicy) -> None:
    """Check a completed handshake; raise :class:`PolicyViolation` when it breaks the rules."""
    peer = conn.getpeercert()
    der = conn.getpeercert(binary_form=True)
    if not der:
        raise PolicyViolation("the verifier presented no certificate")
    if policy.refuse_wildcards:
        wild = list(dict.fromkeys(name for name in _names(peer) if "*" in name))  # SAN and CN often repeat it
        if wild:
            raise PolicyViolation(
                f"the verifier's certificate is a wildcard certificate ({', '.join(wild)})",
                fix="give the verifier a certificate issued for its own host name (the one in [verifier] url); "
                "the agent never accepts a wildcard",
            )
    if policy.spki_pin:
        seen = _spki_pin_of(der)
        if not hmac.compare_digest(seen.encode(), policy.spki_pin.encode()):
            raise PolicyViolation(
                f"the verifier's public key does not match the configured SPKI pin "
                f"(expected {policy.spki_pin}, got {seen})",
                fix="if the verifier's key was changed on purpose, set [verifier] spki_pin to the new pin "
                "(`capture-agent doctor` prints it); otherwise do not connect: this may not be your verifier",
            )
    if policy.require_h2 and conn.selected_alpn_protocol() != ALPN_H2:
        raise PolicyViolation(
            f"the verifier did not negotiate HTTP/2 with ALPN (got {conn.selected_alpn_protocol()!r})",
            fix="enable HTTP/2 (ALPN h2) on the verifier, or on the proxy in front of it",
        )


class PolicySSLObject(ssl.SSLObject):
    """An SSLObject (asyncio, anyio) that checks the policy when the handshake ends."""

    def do_handshake(self) -> None:
        super().do_handshake()
        enforce_policy(self, self.context.server_policy)  # type: ignore[attr-defined]


class PolicySSLSocket(ssl.SSLSocket):
    """The same check for blocking sockets (httpx's sync client)."""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        enforce_policy(self, self.context.server_policy)  # type: ignore[attr-defined]


def _base_context(policy: ServerPolicy) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = MINIMUM_VERSION
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols([ALPN_H2])
    ctx.sslobject_class = PolicySSLObject
    ctx.sslsocket_class = PolicySSLSocket
    ctx.server_policy = policy  # type: ignore[attr-defined]
    return ctx


def client_context(
    ca_file: Path | None,
    *,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    key_password: bytes | None = None,
    policy: ServerPolicy | None = None,
    ca_data: str | None = None,
) -> ssl.SSLContext:
    """The agent's TLS client context: the configured CA only, name checked, mTLS.

    Never ``load_default_certs``: the system store is not trusted (invariant 2).
    """
    ctx = _base_context(policy or ServerPolicy())
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    if ca_file is None and ca_data is None:
        raise ValueError("a CA is required: the agent trusts only the configured CA")
    ctx.load_verify_locations(cafile=str(ca_file) if ca_file else None, cadata=ca_data)
    # Every stored CA is an anchor of its own, a subordinate too: the installer confirmed it by
    # fingerprint, so its issuers (which the device may never have seen) add nothing to that trust.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.hostname_checks_common_name = False  # the host name is matched against the SAN alone (RFC 6125)
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file), password=key_password)
    return ctx


def bootstrap_context() -> ssl.SSLContext:
    """For EST ``cacerts`` only, before the device knows its CA.

    The chain cannot be verified yet; what comes back is checked against the CA
    fingerprint the installer typed, and nothing secret is sent on this
    connection. Same protocol and cipher rules as every other connection.
    """
    ctx = _base_context(ServerPolicy(refuse_wildcards=False))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def describe(conn: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
    """TLS facts of a connection, for doctor and the demo."""
    cipher = conn.cipher()
    return {
        "tls_version": conn.version(),
        "cipher": cipher[0] if cipher else None,
        "alpn": conn.selected_alpn_protocol(),
    }
