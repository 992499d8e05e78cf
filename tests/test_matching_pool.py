"""The matching pool's serial keys: one job of a key at a time, its ``then`` included; nothing else waits.

The pool with its real threads and event loop; the jobs block on events the
test sets, so the order is the test's, not the scheduler's.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from verifier.matching import Budget, MatchingBusy, MatchPool, OverBudget, OverBudgetQueued


def blocking(started: threading.Event, go: threading.Event, result: str):
    def job(budget: Budget) -> str:
        started.set()
        assert go.wait(5)
        return result

    return job


async def until(event: threading.Event) -> None:
    while not event.is_set():
        await asyncio.sleep(0.005)


def test_jobs_of_one_key_run_one_at_a_time_through_their_then_and_others_do_not_wait() -> None:
    async def run() -> list[str]:
        pool = MatchPool(workers=2, queue=2, budget_s=5)
        order: list[str] = []
        a_started, a_go = threading.Event(), threading.Event()
        b_started, b_go = threading.Event(), threading.Event()
        try:
            first = asyncio.create_task(
                pool.run("kiosk-a", blocking(a_started, a_go, "a"), lambda r: order.append(f"then {r}"), "enroll")
            )
            await until(a_started)
            second = asyncio.create_task(pool.run("kiosk-b", blocking(b_started, b_go, "b"), order.append, "enroll"))
            # A verification (no key) is matched and answered while the enrollment holds the key.
            order.append(await pool.run("kiosk-c", lambda budget: "verify", lambda r: r))
            await asyncio.sleep(0.05)
            assert not b_started.is_set()  # the second enrollment waits for the first one's then
            assert pool.inflight == 2  # ... as a queued job
            with pytest.raises(MatchingBusy):  # ... and as its device's one job
                pool.admit("kiosk-b")
            a_go.set()
            await first
            await until(b_started)
            second.cancel()  # its client went away: the key is given up, its then never runs
            with pytest.raises(asyncio.CancelledError):
                await second
            b_go.set()
            order.append(await pool.run("kiosk-d", lambda budget: "next", lambda r: r, "enroll"))
        finally:
            pool.close()
        return order

    assert asyncio.run(run()) == ["verify", "then a", "next"]


def test_the_wait_for_a_key_is_spent_from_the_budget() -> None:
    async def run() -> None:
        pool = MatchPool(workers=2, queue=2, budget_s=0.2)
        started, go = threading.Event(), threading.Event()
        try:
            holder = asyncio.create_task(pool.run("kiosk-a", blocking(started, go, "a"), lambda r: r, "enroll"))
            await until(started)
            with pytest.raises(OverBudget):
                await pool.run("kiosk-b", lambda budget: "b", lambda r: r, "enroll")
            assert pool.inflight == 1
            pool.admit("kiosk-b")  # its place is given back: not busy
            go.set()
            assert await holder == "a"
        finally:
            pool.close()

    asyncio.run(run())


def test_a_device_holds_its_one_job_until_its_then_has_written_the_decision() -> None:
    """The device's slot is freed once its ``then`` ran (the decision, a lockout's failure, written), not when its
    thread ended: a request of the same device taken in between passed its lockout check before the failure of the
    job before it was counted, one more guess per lockout for a stolen device hammering with parallel streams
    (a refused one costs it nothing). A job whose client went away keeps the slot until its thread is done."""

    async def run() -> list[str]:
        pool = MatchPool(workers=2, queue=2, budget_s=5)
        seen: list[str] = []

        def then(result: str) -> str:
            try:
                pool.admit("kiosk-a")
                seen.append("admitted")
            except MatchingBusy:
                seen.append("busy")
            return result

        started, go = threading.Event(), threading.Event()
        try:
            await pool.run("kiosk-a", lambda budget: "a", then)
            pool.admit("kiosk-a")  # its then has run: free again
            cancelled = asyncio.create_task(pool.run("kiosk-a", blocking(started, go, "b"), then))
            await until(started)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            with pytest.raises(MatchingBusy):  # the thread still runs: still the device's one job
                pool.admit("kiosk-a")
            go.set()
            for _ in range(200):
                await asyncio.sleep(0.005)
                if pool.inflight == 0:
                    break
            pool.admit("kiosk-a")  # the thread is done
        finally:
            go.set()
            pool.close()
        return seen

    assert asyncio.run(run()) == ["busy"]


def test_only_a_job_that_never_started_is_told_apart_as_queued() -> None:
    """OverBudgetQueued (no comparison made: the charge is given back) only for a budget spent before the job
    ran; a job that ran out of time mid-match did its work and stays charged (plain OverBudget)."""
    ran: list[str] = []

    def slow_job(budget) -> None:
        ran.append("slow")
        time.sleep(max(0.0, budget.deadline - time.monotonic()) + 0.01)  # past its budget, from inside the job
        budget.check()

    async def run(pool: MatchPool, job) -> BaseException:
        try:
            await pool.run("kiosk-1", job, lambda result: result)
        except OverBudget as exc:
            return exc
        finally:
            pool.close()
        raise AssertionError("the job kept its budget")

    mid_match = asyncio.run(run(MatchPool(1, 0, budget_s=1.0), slow_job))  # a second to start in, even loaded
    assert type(mid_match) is OverBudget and ran == ["slow"]
    never_started = asyncio.run(run(MatchPool(1, 0, budget_s=1e-9), slow_job))
    assert isinstance(never_started, OverBudgetQueued) and ran == ["slow"], "the job ran, or was not told apart"
