"""RFC 9457 problem details as the verifier raises them: a thin user of :mod:`protocol.problems`.

A handler raises ``Problem(slug, detail, fix)``: status, title and the type URI
come from the protocol's registry, so the verifier cannot answer a problem the
agent does not know, nor one status under two slugs. ``fix`` (what the client or
installer should do) defaults to the registry's; a handler gives a more precise
one when it knows more (the device id, the wait).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from protocol.problems import CONTENT_TYPE, REGISTRY, problem_document

__all__ = ["CONTENT_TYPE", "Problem"]


@dataclass
class Problem(Exception):
    slug: str
    detail: str
    fix: str = ""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    extra: tuple[tuple[str, object], ...] = ()  # extension members (RFC 9457 section 3.2)

    def __post_init__(self) -> None:
        if self.slug not in REGISTRY:
            raise ValueError(f"problem type {self.slug!r} is not in protocol.problems.REGISTRY: register it there")

    @property
    def status(self) -> int:
        return REGISTRY[self.slug].status

    def body(self) -> bytes:
        return json.dumps(problem_document(self.slug, self.detail, self.fix, **dict(self.extra))).encode()
