"""Delivering the outbox to the verifier's /v1/events, in order, exactly once.

Batches go oldest first. A batch's Idempotency-Key is derived from its event ids,
and the verifier stores events by id, so a batch resent after a lost answer is
not stored twice. Rows leave the outbox only on the verifier's receipt
(:class:`protocol.messages.EventsReceipt`) accounting for every event of the
batch: a redirect, a proxy's page or another service's JSON is an
:class:`~agent.errors.AnswerError`, and the rows stay. While the verifier is
unreachable or answers garbage the task backs off; when the outbox is empty it
sleeps until a new event wakes it (no polling). The task never ends on an
error: a failure of its own (a bug, a full disk) is logged and retried like an
unreachable verifier, since a delivery task that died would leave the daemon
"ready" while its audit trail piles up unseen.
"""

from __future__ import annotations

import asyncio
import hashlib
import random

import structlog

from agent.client import VerifierClient, answer_error
from agent.errors import AgentError
from agent.outbox import Outbox
from protocol.endpoints import EVENTS
from protocol.messages import EventsReceipt
from protocol.wire import WireError

log = structlog.get_logger()

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 60.0


def batch_key(event_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(event_ids).encode()).hexdigest()


class EventDelivery:
    def __init__(self, outbox: Outbox | None, client: VerifierClient, batch_size: int = 100) -> None:
        # None until the daemon can open it (started on a full or read-only disk): nothing to deliver till then
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
        if self.outbox is None:
            return 0
        events = self.outbox.pending(self.batch_size)
        if not events:
            return 0
        ids = [e["id"] for e in events]
        answer = await self.client.call("POST", EVENTS, json={"events": events}, idempotency_key=batch_key(ids))
        receipt = receipt_of(answer, len(ids))
        self.outbox.delivered(ids)
        self.delivered_total += len(ids)
        if receipt.anomalies:
            log.warning("verifier_reported_anomalies", count=len(receipt.anomalies))
        return len(ids)

    async def run(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            self.wake.clear()
            try:
                sent = await self.deliver_once()
            except Exception as exc:  # whatever failed, the rows are still queued: wait, then try again
                if isinstance(exc, AgentError):  # the verifier or the network
                    # with its fix: an expired certificate or a moved verifier is told here first, and only here
                    log.warning("event_delivery_failed", error=exc.message, fix=exc.fix, retry_in_s=round(backoff, 2))
                else:  # ours or the disk's
                    log.error("event_delivery_error", error_type=type(exc).__name__, error=str(exc),
                              retry_in_s=round(backoff, 2))
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
        except Exception as exc:  # a deadline, the verifier's refusal or garbage: what is left stays queued
            pending = self.outbox.size() if self.outbox is not None else 0
            log.warning("outbox_flush_incomplete", pending=pending, error=type(exc).__name__)
            return False
        return True


def receipt_of(answer: object, sent: int) -> EventsReceipt:
    """The verifier's receipt for ``sent`` events; :class:`AnswerError` unless it accounts for all of them."""
    if not isinstance(answer, dict):
        raise answer_error(EVENTS, "the events receipt is not a JSON object")
    try:
        receipt = EventsReceipt.from_json(answer)
    except WireError as exc:
        raise answer_error(EVENTS, str(exc)) from None
    if not receipt.accounts_for(sent):
        raise answer_error(
            EVENTS,
            f"the receipt counts {receipt.accepted} stored, {receipt.duplicates} duplicates and "
            f"{len(receipt.anomalies)} anomalies for {sent} events sent",
        )
    return receipt
