"""Device signatures over a request's canonical bytes (protocol v1).

The body of every biometric request carries the verifier's nonce and a
signature by the device key over::

    METHOD SP PATH LF canonical-JSON(body without "signature")

The key that checks it is the public key of the client certificate the TLS
layer verified, so a signature by another device fails even with a valid
nonce; a request altered behind a TLS-terminating proxy fails too, and one
replayed finds its nonce spent.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from protocol.wire import NotBase64Error, b64decode_strict, canonical_json

SIGNATURE_FIELD = "signature"


class SignatureError(ValueError):
    """A missing or wrong device signature."""


def canonical_request(method: str, path: str, body: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in body.items() if k != SIGNATURE_FIELD}
    return f"{method.upper()} {path}\n".encode() + canonical_json(unsigned)


def sign_request(key: ec.EllipticCurvePrivateKey, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body with its ``signature`` (base64 DER ECDSA-SHA256) added."""
    signature = key.sign(canonical_request(method, path, body), ec.ECDSA(hashes.SHA256()))
    return {**body, SIGNATURE_FIELD: base64.b64encode(signature).decode("ascii")}


def check_signature(public_key: Any, method: str, path: str, body: dict[str, Any]) -> None:
    """Raise :class:`SignatureError` unless ``body`` carries a good signature by ``public_key``."""
    text = body.get(SIGNATURE_FIELD)
    if not isinstance(text, str):
        raise SignatureError("the body has no device signature")
    try:
        signature = b64decode_strict(text)
    except NotBase64Error:
        raise SignatureError("the signature is not base64") from None
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise SignatureError("the client certificate's key is not an EC key")
    try:
        public_key.verify(signature, canonical_request(method, path, body), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureError("the device signature does not match the request (altered in transit?)") from None
