"""EST (RFC 7030) client: CA certificates, first enrollment, re-enrollment.

Bodies are base64 of DER (PKCS#10 requests, certs-only PKCS#7 answers), as RFC
7030 section 4 specifies. Parsing is strict: an answer that is not the protocol
is a typed error naming the fix, never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ssl
from typing import Any

import httpx
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from agent.client import NO_ENCODING, VerifierClient, problem_error, read_answer, tls_policy_error
from agent.errors import AnswerError, CertificateDefect, ProvisioningError, VerifierError
from agent.handshake import refusal_of_device_certificate
from agent.identity import CERTIFICATE_FAULTS, read_in_full
from agent.tls import bootstrap_context, client_context

log = structlog.get_logger()

CACERTS = "/.well-known/est/cacerts"
SIMPLEENROLL = "/.well-known/est/simpleenroll"
SIMPLEREENROLL = "/.well-known/est/simplereenroll"
EST_ANSWER_MAX_BYTES = 256 * 1024  # a CA bundle or one certificate, PKCS#7 in base64: a few KiB
EST_ANSWER_FIX = "check the --verifier URL points to a capture-verifier (EST, RFC 7030) with nothing in between"
PKCS10_HEADERS = {"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64"}
EST_CERT_FIX = (
    "the verifier's PKI made a certificate this agent cannot read: re-issue its CA or device certificates with "
    "`capture-verifier` (certs/README.md); if the --verifier URL is not your capture-verifier, correct it"
)


def parse_pkcs7_certs(body: bytes, what: str) -> list[x509.Certificate]:
    """Certificates from a base64 certs-only PKCS#7 body, each read in full (:func:`agent.identity.read_in_full`).

    Why every one, here: a certificate cryptography loads can still raise later (an extension
    twice, a key on a curve it lacks), in the trust check, the identity write or `doctor`.
    """
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
        certs = pkcs7.load_der_pkcs7_certificates(der)
    except (binascii.Error, *CERTIFICATE_FAULTS):  # UnsupportedAlgorithm: another PKCS#7 type than a bundle
        raise ProvisioningError(
            f"the verifier's {what} answer is not a base64 PKCS#7 certificate bundle",
            fix="check the --verifier URL points to a capture-verifier (EST, RFC 7030)",
        ) from None
    if not certs:
        raise ProvisioningError(f"the verifier's {what} answer holds no certificate", fix="see the verifier's log")
    try:
        for index, cert in enumerate(certs, start=1):
            read_in_full(cert, f"certificate #{index} of the verifier's {what} answer", EST_CERT_FIX)
    except CertificateDefect as defect:
        raise ProvisioningError(defect.message, fix=defect.fix) from None
    return certs


def _est_error(response: httpx.Response, what: str) -> ProvisioningError:
    problem = problem_error(response)
    fix = problem.fix
    if response.status_code == 401 and what == "simpleenroll":
        # One fix for every refusal of the token (the verifier's words say which): the agent decides on the
        # status, never on the English text. "Unknown" is also a token another verifier printed.
        verifier = str(response.request.url.copy_with(path="/", query=None)).rstrip("/")
        fix = (
            "a token works once, until it ends, and only on the verifier that printed it: check --verifier "
            f"({verifier}) is that verifier, then ask it for a new token (`capture-verifier token new --device "
            "ID`); if this device was already provisioned with the token, `capture-agent doctor` checks it"
        )
    return ProvisioningError(f"EST {what} failed: {problem.message}", fix=fix)


async def _bootstrap_call(
    base_url: str, ctx: ssl.SSLContext, timeout_s: float, what: str, method: str, path: str, **kwargs: Any
) -> list[x509.Certificate]:
    """One EST call before the device has an identity: a certs-only PKCS#7 answer, or a typed error.

    The answer is read as the mTLS client reads any (:func:`agent.client.read_answer`:
    capped, never decoded): ``cacerts`` comes over TLS that cannot be verified
    yet, so whoever answers it may be anyone on the path.
    """
    async with httpx.AsyncClient(
        base_url=base_url, http1=False, http2=True, verify=ctx, trust_env=False, timeout=timeout_s, headers=NO_ENCODING
    ) as http:
        try:
            response = await read_answer(http, http.build_request(method, path, **kwargs), EST_ANSWER_MAX_BYTES,
                                         "the EST answer limit")
        except httpx.TransportError as exc:
            policy = refusal_of_device_certificate(exc, None, base_url) or tls_policy_error(exc, base_url)
            if policy is not None:  # a handshake refused is audited wherever it happens (invariant 5)
                log.warning("tls_handshake_failed", audit=True, url=base_url, reason=policy.message, est=what)
                raise ProvisioningError(policy.message, fix=policy.fix) from None
            if base_url.startswith("https://HOST:"):  # the line `token new` prints, run before HOST was replaced
                raise ProvisioningError(
                    f"cannot reach the verifier at {base_url}: HOST is the placeholder in the line "
                    "`capture-verifier token new` printed, not a host name",
                    fix="put the verifier's host name or address in place of HOST (the name its certificate was "
                    "issued for), and run the line again: the token was not sent, so it still works",
                ) from None
            # A timeout's own text is empty ("ConnectTimeout: "): say what did not come, and in how long.
            what_failed = (
                f"no answer within {timeout_s:g} s ({type(exc).__name__}: a firewall dropping the packets, or "
                "something other than the verifier on that port)"
                if isinstance(exc, httpx.TimeoutException) else f"{type(exc).__name__}: {exc}"
            )
            raise ProvisioningError(
                f"cannot reach the verifier at {base_url}: {what_failed}",
                fix="check the --verifier URL, the network, and that the verifier runs; "
                "a token is used only on success, so retry with the same one",
            ) from None
        except httpx.HTTPError as exc:  # not a lost connection: the answer broke the protocol
            raise ProvisioningError(
                f"the verifier's EST {what} answer is broken: {type(exc).__name__}: {exc}", fix=EST_ANSWER_FIX
            ) from None
        except AnswerError as exc:
            raise ProvisioningError(f"EST {what}: {exc.message}", fix=EST_ANSWER_FIX) from None
    if response.status_code != 200:
        raise _est_error(response, what)
    return parse_pkcs7_certs(response.content, what)


async def fetch_ca_certificates(base_url: str, timeout_s: float = 10.0) -> list[x509.Certificate]:
    """EST cacerts over a TLS connection that cannot be verified yet.

    The caller must check what comes back against an out-of-band fingerprint
    before trusting it (RFC 7030 section 4.1.1, "bootstrap distribution").
    """
    return await _bootstrap_call(base_url, bootstrap_context(), timeout_s, "cacerts", "GET", CACERTS)


async def simple_enroll(
    base_url: str, ca_pem: str, csr_der: bytes, token: str, timeout_s: float = 10.0
) -> x509.Certificate:
    """EST simpleenroll with the one-time token, over TLS verified against the CA.

    The token goes only over this verified connection, never over the bootstrap
    one. The Idempotency-Key is fixed for this CSR, so a retried request is
    answered with the same certificate instead of consuming a second token use.
    """
    headers = {
        **PKCS10_HEADERS,
        "Authorization": f"Bearer {token}",
        "Idempotency-Key": hashlib.sha256(csr_der).hexdigest(),
    }
    certs = await _bootstrap_call(
        base_url,
        client_context(None, ca_data=ca_pem),
        timeout_s,
        "simpleenroll",
        "POST",
        SIMPLEENROLL,
        content=base64.b64encode(csr_der),
        headers=headers,
    )
    return certs[0]


async def simple_reenroll(client: VerifierClient, csr_der: bytes) -> x509.Certificate:
    """EST simplereenroll over the current mutual-TLS connection."""
    response = await client.request("POST", SIMPLEREENROLL, content=base64.b64encode(csr_der), headers=PKCS10_HEADERS)
    if response.status_code != 200:
        error = problem_error(response)
        raise VerifierError(f"EST simplereenroll failed: {error.message}", fix=error.fix, status=error.status)
    return parse_pkcs7_certs(response.content, "simplereenroll")[0]
