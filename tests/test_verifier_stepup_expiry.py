"""A pending step-up (a person's first capture, kept in the verifier's memory only) is gone once its lifetime
(``step_up_ttl_s``) has passed and housekeeping has run: not kept until some later step-up is opened."""

from __future__ import annotations

import asyncio
import json
import ssl
import time

from hypercorn.asyncio.worker_context import WorkerContext

from biometrics.fingerprint.iso19794_2 import encode
from tests.test_biometric_api import wire
from verifier.matching import Budget
from verifier.server import ConnectionServer

TTL_S = 0.2  # the lifetime the tests give a step-up: short, so the wait past it is short too


def _open_step_up(app, signed, templates) -> str:
    """alice verifies on kiosk-1 (its first use: a step-up asked), the step-up id."""
    app.biometric.enrollments.add("alice", "kiosk-1", [encode(x) for x in templates[0][:2] + templates[1][:2]])
    deferred = app.biometric.verify(signed("/v1/verifications", subject="alice", templates=[wire(templates[0][2])]))
    asked = deferred.finish(deferred.work(Budget(time.monotonic() + 60)))
    assert asked.status == 401
    return str(json.loads(asked.body)["step_up"])


def test_an_abandoned_step_up_is_dropped_by_housekeeping_once_expired(app_in_process, synthetic_templates) -> None:
    """Was: kept (with alice's first template) until the next step-up was opened, on a quiet verifier for hours."""
    app, signed = app_in_process(step_up_ttl_s=TTL_S)
    step_up = _open_step_up(app, signed, synthetic_templates)
    assert app.forget_expired() == 0 and step_up in app.biometric.stepup.pending  # live: kept
    time.sleep(TTL_S + 0.1)
    assert app.forget_expired() == 1
    assert app.biometric.stepup.pending == {}


def test_the_server_s_housekeeping_drops_it_with_no_request_coming(app_in_process, synthetic_templates) -> None:
    """No request reaches the verifier after the step-up: the server's own timer drops it."""
    app, signed = app_in_process(step_up_ttl_s=TTL_S)
    _open_step_up(app, signed, synthetic_templates)
    server = ConnectionServer(app, app.settings, ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
                              WorkerContext(None))

    async def idle() -> None:
        timer = asyncio.create_task(server.housekeep(interval_s=0.05))
        try:
            await asyncio.sleep(TTL_S + 0.3)
        finally:
            timer.cancel()

    asyncio.run(idle())
    assert app.biometric.stepup.pending == {}
