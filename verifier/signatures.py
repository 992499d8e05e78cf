"""Checking the device signature on biometric requests (protocol v1, DESIGN.md).

The canonical bytes are the protocol's: ``METHOD SP PATH LF`` then the body
without ``signature`` as canonical JSON (sorted keys, no spaces, ASCII). The key
is the public key of the client certificate the TLS layer verified, so a
signature made by another device fails even with a valid nonce.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec


class SignatureError(ValueError):
    """A missing or wrong device signature."""


def canonical_request(method: str, path: str, body: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in body.items() if k != "signature"}
    return (
        f"{method.upper()} {path}\n".encode()
        + json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    )


def check_signature(public_key: Any, method: str, path: str, body: dict[str, Any]) -> None:
    text = body.get("signature")
    if not isinstance(text, str):
        raise SignatureError("the body has no device signature")
    try:
        signature = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise SignatureError("the signature is not base64") from None
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise SignatureError("the client certificate's key is not an EC key")
    try:
        public_key.verify(signature, canonical_request(method, path, body), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureError("the device signature does not match the request (altered in transit?)") from None
