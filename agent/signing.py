"""Signing biometric requests with the device key (protocol v1, DESIGN.md).

The body of every biometric request carries the verifier's nonce and a
signature by the device key over the request's canonical bytes::

    METHOD SP PATH LF canonical-JSON(body without "signature")

(canonical JSON: sorted keys, no spaces, ASCII). A request replayed finds its
nonce used; one altered behind a TLS-terminating proxy fails the signature.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec


def canonical_request(method: str, path: str, body: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in body.items() if k != "signature"}
    return (
        f"{method.upper()} {path}\n".encode()
        + json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    )


def sign_request(key: ec.EllipticCurvePrivateKey, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body with its ``signature`` (base64 DER ECDSA-SHA256) added."""
    signature = key.sign(canonical_request(method, path, body), ec.ECDSA(hashes.SHA256()))
    return {**body, "signature": base64.b64encode(signature).decode("ascii")}
