"""A request cut by GOAWAY after the verifier handled it: retried once, handled once.

The verifier's real ASGI app runs behind tests/h2harness.py, which answers the
first request with GOAWAY(last_stream_id=0) instead of the response, after the
app has done the work: the worst case, where the client cannot know.
"""

from __future__ import annotations

import asyncio
import sqlite3

from agent.client import VerifierClient
from tests.h2harness import H2TestServer
from verifier.app import create_app
from verifier.settings import VerifierSettings
from verifier.tls import server_context


def test_goaway_cut_request_is_retried_once_and_handled_once(verifier, provisioned) -> None:
    config, identity = provisioned
    settings = VerifierSettings(pki_dir=verifier.pki_dir)
    app = create_app(settings)
    ctx = server_context(settings.server_cert, settings.server_key, settings.ca_file)

    async def go() -> dict:
        local = config.with_overrides(verifier={"url": server.url}, network={"retries": 2})
        async with VerifierClient(local, identity) as client:
            return await client.call("POST", "/v1/challenges", json={})

    with H2TestServer(ctx, app, goaway_after_handling=1) as server:
        answer = asyncio.run(go())
    assert server.log.goaways_sent == 1
    assert server.log.requests == [("POST", "/v1/challenges")] * 2, "retried exactly once"
    first_key, second_key = server.log.idempotency_keys
    assert first_key == second_key
    with sqlite3.connect(settings.database) as db:
        nonces = db.execute("SELECT nonce FROM nonces WHERE device_id = 'kiosk-1'").fetchall()
    assert nonces == [(answer["nonce"],)], "handled once: one nonce, and the retry got the first answer"
