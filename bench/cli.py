"""What every benchmark's command line shares: figures on stdout, one error line, a clean stop.

A benchmark prints one JSON object on stdout and its progress and logs on stderr,
so ``python -m bench.x > figures.json`` keeps the figures alone. Around each
``main()`` (:func:`bench_main`):

- a bad argument or data folder is a :class:`BenchError` (a usage mistake too, through
  :class:`BenchParser`), printed as one line
  ``python -m bench.x: error: ... (fix: ...)``, exit 2, before any long work
  where it can be checked first; the biometric packages' own typed errors (a
  resolution or a rate out of range) are printed the same way;
- Ctrl-C and SIGTERM stop it the same way, exit 130 with one line and no
  traceback: the with-blocks it is in stop what it started (the verifier, an
  agent daemon, worker processes) and remove its temporary folders, which hold
  a development PKI's private keys. SIGTERM used to kill the benchmark alone and
  leave those behind;
- structlog writes to stderr, so no log line lands among the figures.

Worker processes go through :func:`parallel_map`, which ends them on the way out.
"""

from __future__ import annotations

import argparse
import functools
import logging
import multiprocessing
import multiprocessing.pool
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import NoReturn, TypeVar

import structlog

T = TypeVar("T")
R = TypeVar("R")

# Set by the signal, beside the KeyboardInterrupt it raises: numpy 2.4's Generator.choice(p=...) loses
# an exception raised by a signal handler while it runs, and the synthetic fingers call it for each
# finger. Loops between units of work check it (:func:`stop_requested`).
_STOP = threading.Event()


class BenchError(Exception):
    """A benchmark cannot run as asked: ``message`` says what, ``fix`` what to give instead."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message, fix)  # both in args: a worker process's error pickles whole
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class BenchParser(argparse.ArgumentParser):
    """argparse, raising a :class:`BenchError` naming the benchmark's ``--help`` for a usage mistake.

    Why: argparse printed its usage block and ``error: ...`` with no fix, unlike every
    other refusal of a benchmark (one line, ``python -m bench.x: error: ... (fix: ...)``).
    """

    def error(self, message: str) -> NoReturn:
        raise BenchError(message, f"`{self.prog} --help` shows its options")


def _typed_errors() -> tuple[type[Exception], ...]:
    """The errors printed as one line: ours, and the biometric packages' (each message names its fix)."""
    from biometrics.face.errors import FaceError
    from biometrics.fingerprint.errors import FingerprintError

    return BenchError, FaceError, FingerprintError


# Held (blocked) while workers are forked, and in a new worker until it has its own handlers: see parallel_map.
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _interrupt(signum: int, frame: object) -> None:
    _STOP.set()
    raise KeyboardInterrupt


def stop_requested() -> None:
    """Raise the KeyboardInterrupt a signal asked for, if something swallowed it on the way."""
    if _STOP.is_set():
        raise KeyboardInterrupt


def bench_main(prog: str) -> Callable[[Callable[[list[str] | None], int]], Callable[[list[str] | None], int]]:
    """Decorate a benchmark's ``main(argv)``: errors as one line, Ctrl-C / SIGTERM as a clean stop (module doc).

    The process's signal handlers and structlog setup are put back afterwards, so
    a test may call ``main()`` in its own process and see what a user sees.
    """

    def decorate(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            config = structlog.get_config()
            structlog.configure(
                logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
                wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            )
            handlers = None
            if threading.current_thread() is threading.main_thread():
                _STOP.clear()
                handlers = [(sig, signal.signal(sig, _interrupt)) for sig in (signal.SIGINT, signal.SIGTERM)]
            try:
                return main(argv)
            except _typed_errors() as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
                return 2
            except KeyboardInterrupt:
                print(f"{prog}: interrupted, no figures printed", file=sys.stderr, flush=True)
                return 130
            finally:
                for sig, handler in handlers or ():
                    signal.signal(sig, handler)
                structlog.configure(**config)

        return run

    return decorate


def at_least(value: float, least: float, option: str, why: str = "") -> None:
    """Refuse ``option``'s value below ``least`` (NaN included): a count of 0 or less gives no figure."""
    if not value >= least:
        raise BenchError(f"{option} {value:g} is below {least:g}{': ' + why if why else ''}",
                         f"give {option} {least:g} or more")


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries only the figures)."""
    print(message, file=sys.stderr, flush=True)


def _worker_start(initializer: Callable[[], object] | None) -> None:
    """In a worker: the parent handles Ctrl-C and ends the workers; SIGTERM (its way of ending them) just ends one.

    The worker was forked with both signals held (parallel_map): only now, with its own handlers set, are they let
    through, so a SIGTERM that came meanwhile ends it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if initializer is not None:
        initializer()


def parallel_map(
    fn: Callable[[T], R],
    jobs: Iterable[T],
    workers: int,
    *,
    initializer: Callable[[], object] | None = None,
    chunksize: int = 1,
    label: str = "",
) -> list[R]:
    """``[fn(job) for job in jobs]`` in ``workers`` processes (in this one for 1), in order, with progress.

    Interrupted (Ctrl-C, SIGTERM, an error in a job) the workers are ended at
    once, queued jobs dropped: a concurrent.futures pool waited for every queued
    job first, and a SIGTERM to the benchmark alone left its workers running on.
    ``label`` names the jobs in a progress line every tenth of them.
    """
    jobs = list(jobs)
    step = max(1, len(jobs) // 10)
    out: list[R] = []

    def done(result: R) -> None:
        out.append(result)
        if label and (len(out) % step == 0 or len(out) == len(jobs)):
            progress(f"  {label}: {len(out)}/{len(jobs)}")
        stop_requested()

    if workers <= 1:
        for job in jobs:
            done(fn(job))
        return out
    # The signals are held while the pool forks its workers (and its threads, which fork the replacements, are
    # made: they inherit the mask). Why: a new worker inherits this process's SIGTERM handler until _worker_start
    # replaces it, and a SIGTERM from terminate() landing then was swallowed: the worker ran on and join() hung
    # (3 runs in 60 with a SIGTERM at each fork). And in this process a signal landing in an at-fork hook
    # (logging's lock release) was printed with a traceback and dropped. Held, it is delivered once the forks
    # are done, inside the try below.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        pool = multiprocessing.get_context().Pool(workers, initializer=_worker_start, initargs=(initializer,))
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        raise
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a signal held during the forks is raised here
        for result in pool.imap(fn, jobs, chunksize):
            done(result)
        pool.close()
    except BaseException:
        _end(pool)
        raise
    finally:
        pool.join()
    return out


def _end(pool: multiprocessing.pool.Pool) -> None:
    """Terminate the workers with the signals held: a second Ctrl-C must not cut the terminate (and leave workers
    running) halfway; it is raised once they have ended."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        pool.terminate()
        pool.join()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
