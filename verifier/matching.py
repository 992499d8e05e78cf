"""Matching off the event loop: a bounded pool of threads with a time budget per job.

Matching is the only heavy work the verifier does (building cylinders, scoring
them); run on the event loop it would stall every other connection, health
included. Handlers therefore split a biometric request in three: checks and
database reads on the loop, the matching in this pool (pure numpy on data handed
to it, no database), then the decision and its database writes back on the loop.

The pool is bounded three ways, each answered with a 503 and ``Retry-After``
rather than a queue that grows:

- ``workers`` threads plus ``queue`` waiting jobs at most;
- one job per device at a time, from its checks to its decision written (a device's burst waits its turn,
  not everybody's);
- a time budget per job, counted from its submission: a job checks
  :meth:`Budget.check` between probes and gives up once it is spent.

Jobs that name the same ``serial`` key run one at a time, from their job to
their ``then`` (run on the loop once the job is done): an enrollment's
duplicate search and its insert are one step, so two first enrollments of one
person under two ids cannot both search before either inserts. Only
enrollments take a key (one per modality); verifications and identifications
never wait for one. A job waiting for its turn is a queued job: it counts
against the pool's size and its device's one job, and the wait is spent from
its budget.

numpy releases the GIL in its matrix products, so the loop keeps answering
(health, challenges, other devices' checks) while a job runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MatchingBusy(Exception):
    """The pool is full, or the device already has a job in it: try again shortly."""


class OverBudget(Exception):
    """The job used up its time budget."""


class OverBudgetQueued(OverBudget):
    """The budget ran out before the job started (queued behind others' jobs or its serial key's): no matching
    was done for it, so the device's matching allowance is given back (a flood of other devices' work must not
    spend a legitimate device's allowance too)."""


@dataclass(frozen=True)
class Budget:
    """The deadline of one matching job (monotonic seconds)."""

    deadline: float

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise OverBudget


class MatchPool:
    def __init__(self, workers: int, queue: int, budget_s: float) -> None:
        self.workers = workers
        self.capacity = workers + queue
        self.budget_s = budget_s
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="match")
        self._inflight = 0
        self._devices: set[str] = set()
        self._serials: dict[str, asyncio.Lock] = {}  # one per serial key, made on first use (on the loop)

    @property
    def inflight(self) -> int:
        return self._inflight

    def admit(self, device_id: str) -> None:
        """MatchingBusy unless a job of this device would be taken now (checked before a request's checks run)."""
        if device_id in self._devices:
            raise MatchingBusy(f"device {device_id} already has a matching job running")
        if self._inflight >= self.capacity:
            raise MatchingBusy("every matching worker is busy")

    async def run(
        self, device_id: str, job: Callable[[Budget], T], then: Callable[[T], R], serial: str | None = None
    ) -> R:
        """``job(budget)`` in a worker, then ``then(result)`` on the loop; MatchingBusy when full, OverBudget
        when it ran out of time. Jobs of one ``serial`` key run one at a time, each with its ``then``."""
        self.admit(device_id)
        budget = Budget(time.monotonic() + self.budget_s)
        self._inflight += 1
        self._devices.add(device_id)
        running = False
        # The device's one job ends when both holders of its slot let go: its thread, and its request (``then``
        # run, or given up). Freed at the thread's end alone, the device's next request could be taken before
        # ``then`` wrote this one's decision, and pass its lockout check before this failure was counted.
        holders = 2

        def release() -> None:  # on the loop: asyncio runs a future's done callbacks there
            nonlocal holders
            holders -= 1
            if holders == 0:
                self._devices.discard(device_id)

        def thread_done(_: object = None) -> None:  # even if the request was cancelled
            self._inflight -= 1
            release()

        def checked() -> T:
            if time.monotonic() > budget.deadline:  # the time spent queueing counts
                raise OverBudgetQueued
            return job(budget)

        try:
            async with self._turn(serial, budget):
                future = asyncio.get_running_loop().run_in_executor(self._executor, checked)
                running = True
                future.add_done_callback(thread_done)
                # Cancelled meanwhile (the client went away): the turn is given up, the result never used.
                return then(await asyncio.shield(future))
        finally:
            if not running:
                thread_done()
            release()

    @asynccontextmanager
    async def _turn(self, serial: str | None, budget: Budget) -> AsyncIterator[None]:
        """The ``serial`` key held (nothing when None), waited for no longer than the budget allows."""
        if serial is None:
            yield
            return
        lock = self._serials.setdefault(serial, asyncio.Lock())
        try:
            async with asyncio.timeout(max(0.0, budget.deadline - time.monotonic())):
                await lock.acquire()
        except TimeoutError:
            raise OverBudgetQueued from None
        try:
            yield
        finally:
            lock.release()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
