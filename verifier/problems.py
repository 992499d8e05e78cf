"""RFC 9457 problem details: every error the verifier answers, in one shape.

Besides the standard members (type, title, status, detail) each problem carries
``fix``: what the client or installer should do, so the agent can print it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

PROBLEM_TYPE_BASE = "https://capture-agent.invalid/problems/"
CONTENT_TYPE = "application/problem+json"


@dataclass
class Problem(Exception):
    status: int
    slug: str
    title: str
    detail: str
    fix: str = ""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    extra: tuple[tuple[str, object], ...] = ()  # extension members (RFC 9457 section 3.2)

    def body(self) -> bytes:
        return json.dumps(
            {
                "type": PROBLEM_TYPE_BASE + self.slug,
                "title": self.title,
                "status": self.status,
                "detail": self.detail,
                "fix": self.fix,
                **dict(self.extra),
            }
        ).encode()
