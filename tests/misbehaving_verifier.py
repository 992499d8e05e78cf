"""A verifier that answers what no verifier should, as its own process: `python -m tests.misbehaving_verifier`.

It serves over the verifier's real server layer (hypercorn, mTLS, HTTP/2, the
development PKI of a verifier the test made), so the agent meets the answers
over the same transport it meets in production. Every request gets the answer
of ``--mode``:

* ``endless``: a 200 whose body never ends (no content-length), as fast as flow control allows;
* ``declared``: a 200 declaring a 100 MB body;
* ``trickle``: a 200 that sends one space every 0.5 s (valid JSON padding, forever);
* ``deep``: a 200 whose body is a JSON array nested 100,000 deep;
* ``duplicate``: a 200 whose object has the key ``nonce`` twice;
* ``older``: a verifier from before a challenge could say ``"first"`` or ``"modality"``: a body with either is a 400
  ``bad-challenge`` ("unknown fields"), any other gets a nonce (201); each request's body is printed on stdout as
  ``{"request": {...}}``, for a test to count what reached it.

The listening port is printed as JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from verifier.server import serve
from verifier.settings import VerifierSettings

CHUNK = b" " * 65536


def app_for(mode: str):
    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if mode == "older":
            await _older_challenge(send, body)
            return
        headers = [(b"content-type", b"application/json")]
        if mode == "declared":
            headers.append((b"content-length", str(100 << 20).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if mode in ("endless", "declared"):
            for _ in range(100 << 20 // len(CHUNK)):  # 100 MB at the most, if nobody stops reading
                await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        elif mode == "trickle":
            for _ in range(240):
                await send({"type": "http.response.body", "body": b" ", "more_body": True})
                await asyncio.sleep(0.5)
        elif mode == "deep":
            await send({"type": "http.response.body", "body": b"[" * 100_000 + b"]" * 100_000, "more_body": True})
        elif mode == "duplicate":
            body = b'{"nonce": "a", "nonce": "b", "expires_at": "x", "ttl_s": 60}'
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


async def _older_challenge(send, body: bytes) -> None:
    print(json.dumps({"request": json.loads(body or b"{}")}), flush=True)
    newer = sorted(name for name in ("first", "modality") if f'"{name}"'.encode() in body)
    if newer:
        status, answer, kind = 400, {
            "type": "https://capture-agent.invalid/problems/bad-challenge", "title": "Bad challenge request",
            "status": 400, "detail": f"unknown fields {newer} in a challenge request",
        }, b"application/problem+json"
    else:
        nonce = "bm9uY2Utb2YtYW4tb2xkZXItdmVyaWZpZXI"
        status, kind = 201, b"application/json"
        answer = {"nonce": nonce, "expires_at": "2099-01-01T00:00:00Z", "ttl_s": 60}
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]})
    await send({"type": "http.response.body", "body": json.dumps(answer).encode()})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pki-dir", type=Path, required=True)
    modes = ("endless", "declared", "trickle", "deep", "duplicate", "older")
    parser.add_argument("--mode", choices=modes, required=True)
    args = parser.parse_args()
    settings = VerifierSettings(pki_dir=args.pki_dir, port=0)

    def listening(host: str, port: int) -> None:
        print(json.dumps({"port": port}), flush=True)

    asyncio.run(serve(app_for(args.mode), settings, on_listening=listening))
    return 0


if __name__ == "__main__":
    sys.exit(main())
