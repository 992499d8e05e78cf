"""The verifier's request and answer types, shared by its route modules.

Handlers are plain synchronous functions from a :class:`Request` to an
:class:`Answer` (or a raised :class:`~verifier.problems.Problem`): the ASGI
layer in :mod:`verifier.app` does the I/O, so handlers stay testable and the
idempotency transaction can wrap them whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from protocol.wire import WireError, loads, loads_object
from verifier.problems import Problem
from verifier.registry import Device

JSON_TYPE = "application/json"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    device: Device | None  # set on routes that need a client certificate
    client_cert: x509.Certificate | None
    subject: str = ""  # from /v1/subjects/{id}/...
    # What the checks charged the device and the subject (its request and identification rates, the subject's
    # rates, its matching allowance), each as the call that gives it back: called when no matching was done for
    # the request (refused 503 before its job started), so a device retrying as told is never rate-limited for
    # requests it was never served (verifier.app._match).
    refunds: list[Callable[[], None]] = field(default_factory=list)


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True)
class Deferred:
    """A handler's answer that needs matching first.

    ``work`` runs in the matching pool (:mod:`verifier.matching`), off the event
    loop and outside any database transaction: it gets only what the handler
    handed it. ``finish`` then runs on the loop, in a new transaction, and turns
    the result into the answer (or raises a problem). What the handler wrote
    before (the nonce consumed) is committed before ``work`` starts.

    Deferreds with the same ``serial`` key run one at a time from ``work`` to
    ``finish``: what ``work`` searched is still all there is when ``finish``
    writes (an enrollment's duplicate search and its insert, per modality).
    """

    device_id: str
    work: Callable[[Any], Any]  # (Budget) -> result
    finish: Callable[[Any], Answer]
    undo: Callable[[], None] = lambda: None  # the work was not done (503): give back what the checks used
    serial: str | None = None  # verifier.matching.MatchPool.run: one job of this key at a time, finish included


@dataclass(frozen=True)
class Route:
    handler: Callable[[Request], Answer | Deferred]
    needs_client_cert: bool
    retention_s: float | None = None  # how long the first answer is kept for repeats (None: a day)
    matches: bool = False  # returns a Deferred: the matching pool must have room before the checks run
    # Its answers carry Server-Timing (``app``, a handler's ``match``). False where the verifier's time grows with
    # a gallery the device must not learn the size of (1:N identification, an enrollment's duplicate search): the
    # durations go to the verifier's log only (verifier.app strips the header from every answer of such a route).
    timed: bool = True


def json_answer(status: int, payload: dict[str, Any], headers: tuple[tuple[bytes, bytes], ...] = ()) -> Answer:
    return Answer(status, JSON_TYPE, json.dumps(payload).encode(), headers)


# The registry's fix, with the rules it leaves out: each refusal's detail says which one the body broke.
BAD_JSON_FIX = ("send one JSON object of UTF-8 text (no byte order mark, no lone \\ud800-\\udfff surrogate), "
                "no duplicate keys, finite numbers, nested at most 32 levels")


def json_body(request: Request) -> Any:
    """The body as strict protocol JSON (no duplicate keys, bounded depth, UTF-8 text), or a 400 problem."""
    try:
        return loads(request.body)
    except WireError as exc:
        raise Problem("bad-json", f"the request body is not protocol JSON: {exc}", BAD_JSON_FIX) from None


def json_object(request: Request) -> dict[str, Any]:
    """:func:`json_body`, and it must be an object."""
    try:
        return loads_object(request.body, "the request body")
    except WireError as exc:
        raise Problem("bad-json", f"the request body is not protocol JSON: {exc}", BAD_JSON_FIX) from None
