"""Structured logging: JSON lines for journald, readable lines on a terminal.

Events are key-value pairs. A last line of defence, shared with the verifier
(:mod:`protocol.redaction`), replaces any value that looks like secret material
(raw bytes, PEM blocks, embeddings, values under key names such as ``token`` or
``key`` at any depth, bearer credentials and long base64 runs inside text,
exception text included), so a careless ``log.info("x", token=t)`` cannot leak:
the event is kept, the value is replaced by ``"[redacted]"``. Code must still
never pass such values; the filter is a net, not the rule.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from protocol.redaction import REDACTED, redact_secrets

__all__ = ["REDACTED", "configure_logging", "redact_secrets"]


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog once per process.

    ``fmt="auto"`` renders JSON when the stream is not a terminal (journald,
    files, pipes) and coloured readable lines when a person is watching.
    """
    out = stream if stream is not None else sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,  # after the exception is text: its message and traceback are scanned too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
