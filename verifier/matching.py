"""Matching off the event loop: a bounded pool of threads with a time budget per job.

Matching is the only heavy work the verifier does (building cylinders, scoring
them); run on the event loop it would stall every other connection, health
included. Handlers therefore split a biometric request in three: checks and
database reads on the loop, the matching in this pool (pure numpy on data handed
to it, no database), then the decision and its database writes back on the loop.

The pool is bounded three ways, each answered with a 503 and ``Retry-After``
rather than a queue that grows:

- ``workers`` threads plus ``queue`` waiting jobs at most;
- one job per device at a time (a device's burst waits its turn, not everybody's);
- a time budget per job, counted from its submission: a job checks
  :meth:`Budget.check` between probes and gives up once it is spent.

numpy releases the GIL in its matrix products, so the loop keeps answering
(health, challenges, other devices' checks) while a job runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class MatchingBusy(Exception):
    """The pool is full, or the device already has a job in it: try again shortly."""


class OverBudget(Exception):
    """The job used up its time budget."""


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

    @property
    def inflight(self) -> int:
        return self._inflight

    def admit(self, device_id: str) -> None:
        """MatchingBusy unless a job of this device would be taken now (checked before a request's checks run)."""
        if device_id in self._devices:
            raise MatchingBusy(f"device {device_id} already has a matching job running")
        if self._inflight >= self.capacity:
            raise MatchingBusy("every matching worker is busy")

    async def run(self, device_id: str, job: Callable[[Budget], T]) -> T:
        """Run ``job(budget)`` in a worker; MatchingBusy when full, OverBudget when it ran out of time."""
        self.admit(device_id)
        budget = Budget(time.monotonic() + self.budget_s)
        self._inflight += 1
        self._devices.add(device_id)

        def release(_: object) -> None:  # when the thread is done, even if the request was cancelled
            self._inflight -= 1
            self._devices.discard(device_id)

        def checked() -> T:
            budget.check()  # the time spent queueing counts
            return job(budget)

        future = asyncio.get_running_loop().run_in_executor(self._executor, checked)
        future.add_done_callback(release)
        return await asyncio.shield(future)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
