"""Why a connection to the verifier failed, told apart so that the fix is the right one.

Three causes look alike from httpx (a ``ReadError``, ``WriteError`` or "Server
disconnected" on a fresh connection) but need different people to act:

* the verifier refused the **device's certificate** (expired, revoked, issued by
  another CA): the installer re-provisions the device with a new token;
* there is **no cipher suite in common** (a proxy in front of the verifier
  configured for other suites; nginx logs "no shared cipher"): the verifier's
  or the proxy's operator changes its TLS configuration;
* the **network** is down or the verifier is not running: wait, retry.

With TLS 1.3 the server checks the client certificate after the handshake has
completed on the client's side, so its alert (``certificate_expired``,
``unknown_ca``...) arrives with the first read, and often is not seen at all:
the connection just closes. The alert is used when it is there; when it is not,
the local certificate's own ``not_after`` says whether it has expired, which is
what the verifier refused.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl

from agent.errors import TLSPolicyError
from agent.identity import DeviceIdentity

# Alerts (as OpenSSL names them in its reasons) that refuse the certificate the client presented.
CERTIFICATE_ALERTS = {
    "CERTIFICATE_EXPIRED": "expired",
    "CERTIFICATE_REVOKED": "revoked",
    "UNKNOWN_CA": "issued by a CA the verifier does not trust",
    "BAD_CERTIFICATE": "refused as bad",
    "CERTIFICATE_UNKNOWN": "refused",
    "UNSUPPORTED_CERTIFICATE": "refused as unsupported",
    "CERTIFICATE_REQUIRED": "missing",
    "ACCESS_DENIED": "refused (access denied)",
}
# Reasons that mean the two sides share no cipher suite (or no acceptable parameters).
CIPHER_REASONS = ("HANDSHAKE_FAILURE", "NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE", "INSUFFICIENT_SECURITY")
REPROVISION = "re-provision with a new token (`capture-verifier token new`, then `capture-agent provision --force`)"


class DeviceCertificateRefused(TLSPolicyError):
    """The verifier refused this device's certificate: only a new identity helps, not a retry."""


class NoSharedCipher(TLSPolicyError):
    """The verifier (or a proxy in front of it) and the agent have no cipher suite in common."""


# OpenSSL's "not yet, more bytes needed" signals: flow control, never a TLS verdict. One of them under a
# reset handshake once made a kiosk report "TLS handshake ... failed: The operation did not complete (read)"
# with the fix "check the verifier's TLS configuration", and no retry (bench.flood, idle_connections, on a
# verifier that evicted handshakes under way). An EOF is left to the classification: a server that speaks
# only older TLS versions just closes, and that is a policy failure.
FLOW_CONTROL = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


def ssl_error_in(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error under an httpx exception, if the failure was TLS (OpenSSL's flow-control signals are not)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) and not isinstance(seen, FLOW_CONTROL):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def expired(identity: DeviceIdentity, now: dt.datetime | None = None) -> bool:
    return (now or dt.datetime.now(dt.UTC)) >= identity.not_after


def certificate_expired_error(identity: DeviceIdentity, url: str) -> DeviceCertificateRefused:
    return DeviceCertificateRefused(
        f"the device certificate expired on {identity.not_after:%Y-%m-%d %H:%M} UTC, so the verifier at {url} "
        "refuses the connection",
        fix=REPROVISION,
    )


def refusal_of_device_certificate(
    exc: BaseException, identity: DeviceIdentity | None, url: str
) -> TLSPolicyError | None:
    """A typed error when ``exc`` is the verifier refusing this device or sharing no cipher; else None.

    ``identity`` is the one the failed connection presented (None for EST bootstrap, which has none).
    """
    failure = ssl_error_in(exc)
    text = f"{getattr(failure, 'reason', '') or ''} {failure or ''}".upper() if failure is not None else ""
    for alert, what in CERTIFICATE_ALERTS.items():
        if alert in text:
            if identity is not None and (alert == "CERTIFICATE_EXPIRED" or expired(identity)):
                return certificate_expired_error(identity, url)
            name = f" ({identity.device_id}, serial {identity.serial_hex})" if identity is not None else ""
            return DeviceCertificateRefused(
                f"the verifier at {url} refused the device certificate{name}: {what} (TLS alert {alert.lower()})",
                fix=REPROVISION + "; if the device was revoked on purpose, ask the verifier's operator first",
            )
    if any(reason in text for reason in CIPHER_REASONS):
        return NoSharedCipher(
            f"the verifier at {url} and this agent share no TLS cipher suite (TLS alert handshake_failure; "
            'a proxy such as nginx logs "no shared cipher")',
            fix="the verifier, or the proxy in front of it, must offer TLS 1.3, or TLS 1.2 with ECDHE and an AEAD "
            "cipher (ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-ECDSA-CHACHA20-POLY1305...); the agent offers nothing "
            "weaker",
        )
    if failure is None and identity is not None and expired(identity):
        # No alert seen (TLS 1.3 often closes before the client reads it): the local certificate says why.
        return certificate_expired_error(identity, url)
    return None


def _handshake_tls12(ctx: ssl.SSLContext, host: str, port: int, timeout_s: float) -> None:
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # the client certificate is judged inside the handshake
    with socket.create_connection((host, port), timeout=timeout_s) as raw, ctx.wrap_socket(raw, server_hostname=host):
        pass


def probe_device_certificate(
    identity: DeviceIdentity, host: str, port: int, url: str, timeout_s: float
) -> TLSPolicyError | None:
    """Two TLS 1.2 handshakes, with and without the device certificate: is it what the verifier refuses?

    Why TLS 1.2: there the server judges the client certificate *inside* the
    handshake, so its verdict reaches ``do_handshake``; with TLS 1.3 it comes
    after, and a closing server often drops it. Why two: a server that sends no
    alert just closes; if it completes the same handshake when no certificate is
    offered, the certificate is what it refused. Run only after requests failed
    with a connection closed under them; None when the probe cannot tell.
    """
    from agent.tls import client_context

    try:
        with_cert = client_context(
            identity.ca_path, cert_file=identity.cert_path, key_file=identity.key_path, key_password=identity.passphrase
        )
        without_cert = client_context(identity.ca_path)
    except (OSError, ssl.SSLError, ValueError):
        return None  # the files went with a renewal: the next request uses the new identity anyway
    try:
        _handshake_tls12(with_cert, host, port, timeout_s)
        return None  # the verifier accepts the certificate: the cause is elsewhere
    except ssl.SSLError as exc:
        typed = refusal_of_device_certificate(exc, identity, url)
        if typed is not None:
            return typed
    except OSError:
        return None
    try:
        _handshake_tls12(without_cert, host, port, timeout_s)
    except OSError:  # ssl.SSLError included: the failure does not depend on the certificate
        return None
    issuer = identity.certificate.issuer.rfc4514_string()
    return DeviceCertificateRefused(
        f"the verifier at {url} closes the connection when this device presents its certificate (device "
        f"{identity.device_id}, serial {identity.serial_hex}, issued by {issuer}) and not without it: it refuses "
        "the certificate (revoked, or issued by a CA it does not trust)",
        fix=REPROVISION + "; check that [verifier] url is the verifier this device was provisioned with",
    )
