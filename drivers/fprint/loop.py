"""The one thread that runs libfprint: it owns GLib's default main context.

libfprint is asynchronous on GLib's main context; its USB layer dispatches on
the default context, and calling ``get_devices()`` from another thread while a
main loop runs there deadlocks. So the whole process has one ``GLibThread``:
it acquires the default context, runs its main loop, and every libfprint call
is a function submitted to it. Callers in other threads (or asyncio, through
``asyncio.wrap_future``) get a ``concurrent.futures.Future``.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from drivers.fprint.errors import FprintUnavailable

T = TypeVar("T")

_lock = threading.Lock()
_shared: GLibThread | None = None


class GLibThread:
    """A daemon thread running a GLib main loop on the default main context."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: Any = None
        self._thread = threading.Thread(target=self._run, name="libfprint", daemon=True)

    def start(self) -> GLibThread:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def in_loop(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def _run(self) -> None:
        from gi.repository import GLib

        context = GLib.MainContext.default()
        if not context.acquire():
            self._error = FprintUnavailable(
                "GLib's default main context is owned by another thread",
                "run libfprint only through drivers.fprint (one loop thread per process)",
            )
            self._ready.set()
            return
        try:
            self._loop = GLib.MainLoop.new(context, False)
            self._ready.set()
            self._loop.run()
        finally:
            context.release()

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Run ``fn(*args)`` in the loop thread; its return value (or exception) resolves the future."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> bool:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:
                    future.set_exception(exc)
            return False  # GLib.SOURCE_REMOVE

        self._schedule(run)
        return future

    def start_async(self, starter: Callable[[concurrent.futures.Future[T]], None]) -> concurrent.futures.Future[T]:
        """Begin an asynchronous libfprint operation in the loop thread; its callback resolves the future."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> bool:
            if future.set_running_or_notify_cancel():
                try:
                    starter(future)
                except BaseException as exc:
                    if not future.done():
                        future.set_exception(exc)
            return False

        self._schedule(run)
        return future

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = 30.0) -> T:
        """``submit`` and wait; called from the loop thread itself, runs inline."""
        if self.in_loop():
            return fn(*args)
        return self.submit(fn, *args).result(timeout)

    def _schedule(self, run: Callable[[], bool]) -> None:
        from gi.repository import GLib

        GLib.idle_add(run)  # thread-safe: attaches to the default context and wakes it


def shared_loop() -> GLibThread:
    """The process's libfprint thread, started on first use."""
    global _shared
    from drivers.fprint import unavailable_reason

    reason = unavailable_reason()
    if reason:
        raise FprintUnavailable("libfprint is not available", reason)
    with _lock:
        if _shared is None:
            _shared = GLibThread().start()
        return _shared
