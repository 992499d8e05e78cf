"""Delivering the outbox to the verifier's /v1/events, in order, exactly once.

Batches go oldest first. A batch's Idempotency-Key is derived from its event ids,
and the verifier stores events by id, so a batch resent after a lost answer is
not stored twice. Rows leave the outbox only after the verifier said 2xx. While
the verifier is unreachable the task backs off; when the outbox is empty it
sleeps until a new event wakes it (no polling).
"""

from __future__ import annotations

import asyncio
import hashlib
import random

import structlog

from agent.client import VerifierClient
from agent.errors import AgentError
from agent.outbox import Outbox

log = structlog.get_logger()

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 60.0


def batch_key(event_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(event_ids).encode()).hexdigest()


class EventDelivery:
    def __init__(self, outbox: Outbox, client: VerifierClient, batch_size: int = 100) -> None:
        self.outbox = outbox
        self.client = client
        self.batch_size = batch_size
        self.wake = asyncio.Event()
        self.delivered_total = 0

    def notify(self) -> None:
        """Called after an event is recorded."""
        self.wake.set()

    async def deliver_once(self) -> int:
        """Send one batch; the number of events the verifier took (0: nothing pending)."""
        events = self.outbox.pending(self.batch_size)
        if not events:
            return 0
        ids = [e["id"] for e in events]
        answer = await self.client.call("POST", "/v1/events", json={"events": events}, idempotency_key=batch_key(ids))
        self.outbox.delivered(ids)
        self.delivered_total += len(ids)
        if answer.get("anomalies"):
            log.warning("verifier_reported_anomalies", count=len(answer["anomalies"]))
        return len(ids)

    async def run(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            self.wake.clear()
            try:
                sent = await self.deliver_once()
            except AgentError as exc:
                log.warning("event_delivery_failed", error=exc.message, retry_in_s=round(backoff, 2))
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                continue
            backoff = BACKOFF_MIN_S
            if not sent:
                await self.wake.wait()

    async def flush(self, timeout_s: float) -> bool:
        """Deliver what is pending, within a time budget (on shutdown). True if empty."""
        try:
            async with asyncio.timeout(timeout_s):
                while await self.deliver_once():
                    pass
        except (TimeoutError, AgentError) as exc:
            log.warning("outbox_flush_incomplete", pending=self.outbox.size(), error=type(exc).__name__)
            return False
        return True
