"""Fuzz the agent's reading of EST answers (agent.est, agent.identity, agent.provision) and of refusals.

First byte even: the bytes after it are a ``cacerts`` / ``simpleenroll`` answer
body (base64 of a certs-only PKCS#7), or, when the first byte is 2 modulo 4,
the DER of that PKCS#7 (the harness writes its base64: a mutation then changes
the certificates, not the base64 layer over them); what parses goes through what provisioning
does with it: the CA picked by its fingerprint (agent.provision.select_ca), the CAs
it vouches for (agent.identity.trusted_under), their PEM, the device id
(common_name), fingerprints and SPKI pins, and a renewed certificate's clock check
(agent.renewal.validity_warning). First byte odd: the bytes are an EST error
answer (status from the second byte, a ``Retry-After`` header up to the first LF,
then the body), read as the agent reads every refusal (agent.client.problem_error).

Typed errors: ProvisioningError and every AgentError.
"""

from __future__ import annotations

import base64
import sys

import httpx
from cryptography.hazmat.primitives import serialization

from agent.client import problem_error
from agent.errors import AgentError
from agent.est import parse_pkcs7_certs
from agent.identity import certificate_fingerprint, common_name, spki_sha256, trusted_under
from agent.provision import select_ca
from agent.renewal import validity_warning


def _certs(body: bytes) -> None:
    try:
        certs = parse_pkcs7_certs(body, "cacerts")
    except AgentError:
        return
    ca = select_ca(certs, certificate_fingerprint(certs[0]))
    trusted = trusted_under(ca, certs)
    "".join(cert.public_bytes(serialization.Encoding.PEM).decode("ascii") for cert in trusted)
    for cert in certs:
        common_name(cert)
        spki_sha256(cert)
        validity_warning(cert)


def _refusal(data: bytes) -> None:
    status = 400 + data[0] % 200 if data else 400
    retry_after, _, body = data[1:].partition(b"\n")
    headers = [(b"content-type", b"application/problem+json"), (b"retry-after", retry_after.strip())]
    error = problem_error(httpx.Response(status, headers=headers, content=body))
    if not isinstance(error, AgentError):
        raise AssertionError(f"problem_error gave a {type(error).__name__}")
    str(error)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    try:
        if data[0] % 4 == 2:
            _certs(base64.b64encode(data[1:]))
        elif data[0] % 2 == 0:
            _certs(data[1:])
        else:
            _refusal(data[1:])
    except AgentError:
        pass


if __name__ == "__main__":
    from fuzz.common import main

    main("est", TestOneInput, sys.argv)
