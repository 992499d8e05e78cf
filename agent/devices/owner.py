"""A device's owner: the one thread that calls into its driver.

Drivers are blocking and not thread-safe (a serial port read from two threads
interleaves packets; libfprint and OpenCV have their own thread rules). So
every call to a device's driver, a session's capture as well as the
supervisor's close and reopen, is a job on this thread's queue, run one at a
time. Callers get a ``concurrent.futures.Future`` (asyncio: ``await run()``).

Once stopped, the owner refuses new jobs with :class:`~agent.devices.errors.DeviceStopped`: a job queued
behind its stop would never run, and a session worker still waiting on it (one that outlived the daemon's
bounded wait for its sessions) blocked for good, and with it the interpreter's exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from agent.devices.errors import DeviceStopped

T = TypeVar("T")
_STOP = object()


class DeviceOwner:
    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Held while a job is queued or the stop is: so no job can land behind the stop, where none runs.
        self._queueing = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name=f"device {name}", daemon=True)
        self._thread.start()

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    @property
    def alive(self) -> bool:
        """Whether the owner thread still runs (it ends once the device is stopped)."""
        return self._thread.is_alive()

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called: every job submitted since is refused."""
        return self._stopped

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._queueing:
            # Stopped first: once the owner thread has ended, its ident may be a new thread's (a session
            # worker's), which the check below then refused as a deadlock, seen as "unplugged".
            if self._stopped:
                raise DeviceStopped(self.name)
            if threading.get_ident() == self._thread.ident:
                raise RuntimeError(f"device {self.name}: a job submitted from its own owner thread would deadlock")
            self._jobs.put((future, fn, args, kwargs))
        return future

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run on the owner thread and wait (from a worker thread: sessions use asyncio.to_thread)."""
        return self.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def stop(self, timeout_s: float = 10.0, *, last: Callable[[], Any] | None = None) -> None:
        """End the thread once the jobs already queued have run; later submits raise DeviceStopped.

        ``last`` (a device's close) is queued just before the end, by the first stop only, under the same lock:
        queued apart, a second stop of the device between the two (the daemon's, a failed start's) found the
        owner not yet stopped, then submitted its close after the first had stopped it, and was refused with
        DeviceStopped. Every stop, the first or not, returns once the thread has ended (or ``timeout_s``).
        """
        with self._queueing:
            if not self._stopped:
                self._stopped = True
                if last is not None:
                    self._jobs.put((concurrent.futures.Future(), last, (), {}))  # its error is the device's own
                self._jobs.put(_STOP)
        if threading.get_ident() != self._thread.ident:
            self._thread.join(timeout_s)
