"""Fuzz the local API's request handling (agent.localapi.LocalAPI) with raw bytes on its unix socket.

There is no pure parse function: the request goes through h11, the head and body
bounds, the JSON body and the session checks inside the connection handler. So
the real LocalAPI runs in-process (its own event loop in a thread, a socket in a
temporary directory) and each input is one connection: the bytes, then end of
input. Sessions it starts are a stand-in that answers at once (a real capture
session needs a reader and a verifier; what is fuzzed here is the request, not
the capture).

Findings: an exception escaping the connection handler (asyncio's exception
handler sees it), an answer that is not HTTP, or a 500: the API turns any
exception a route raises into a 500 (and a ``local_api_request_failed`` log
event), and with a stand-in session that cannot fail, a 500 is a request the
API did not expect, not a refusal it typed.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from agent.localapi import LocalAPI

REQUEST_DEADLINE_S = 1.0


class _AnsweringSession:
    """A session that ends at once with a decision; what LocalAPI needs of one (operations, cancel)."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    async def enroll(self, *args: Any) -> dict[str, Any]:
        return {"enrolled": True}

    async def verify(self, *args: Any) -> dict[str, Any]:
        return {"decision": "accept"}

    async def identify(self, *args: Any) -> dict[str, Any]:
        return {"candidates": []}

    def cancel(self) -> None:
        self.cancelled.set()


class LocalAPIEscape(Exception):
    """An exception escaped the local API's connection handler (its original is the cause)."""


class _Running:
    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="fuzz-localapi-")
        self.path = Path(self.dir.name) / "api.sock"
        self.escaped: list[BaseException] = []
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._handler)
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-localapi", daemon=True)
        self.thread.start()
        self.api = api = LocalAPI(self.path, lambda emit, **kw: _AnsweringSession(),
                       make_face_session=lambda emit: _AnsweringSession(), request_deadline_s=REQUEST_DEADLINE_S)
        asyncio.run_coroutine_threadsafe(api.start(), self.loop).result(10)

    def _handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self.escaped.append(exc if exc is not None else RuntimeError(str(context.get("message"))))

    def settle(self) -> None:
        """Let the loop run what the connection left (its handler's end) before looking at ``escaped``."""
        for _ in range(3):
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.loop).result(10)


    def close(self) -> None:
        """Stop the API, then its loop and thread, and remove its folder."""
        asyncio.run_coroutine_threadsafe(self.api.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.dir.cleanup()


_running: _Running | None = None


def close() -> None:
    """End the API and its loop thread (a replay in a test process must leave none behind); the next input starts
    them again."""
    global _running
    if _running is not None:
        _running.close()
        _running = None


def TestOneInput(data: bytes) -> None:
    global _running
    if _running is None:
        _running = _Running()
    answer = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(REQUEST_DEADLINE_S + 5)
        sock.connect(str(_running.path))
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the API refused and closed before taking it all (a 413, a 431): its answer is read below
            pass
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    _running.settle()
    if _running.escaped:
        escaped, _running.escaped = _running.escaped[0], []
        raise LocalAPIEscape(f"{type(escaped).__name__}: {escaped}") from escaped
    # No answer at all is the API's choice for a client that closed before a whole request head
    # (_read_request: end of input reads as the client gone), so only an answer that is not HTTP is a finding.
    if answer and not answer.startswith(b"HTTP/1.1 "):
        raise LocalAPIEscape(f"the answer is not HTTP/1.1 ({answer[:40]!r})")
    if b"HTTP/1.1 500 " in answer:
        head = answer[answer.index(b"HTTP/1.1 500 ") :][:200]
        raise LocalAPIEscape(f"the API answered 500: a route raised what it does not type ({head!r})")


if __name__ == "__main__":
    from fuzz.common import main

    main("localapi", TestOneInput, sys.argv)
