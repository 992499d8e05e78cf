"""Structured logging: JSON lines for journald, readable lines on a terminal.

Events are key-value pairs. A last line of defence drops any value that looks
like secret material (raw bytes, PEM blocks, values under key names such as
``token`` or ``key``), so a careless ``log.info("x", token=t)`` cannot leak: the
event is kept, the value is replaced by ``"[redacted]"``. Code must still never
pass such values; the filter is a net, not the rule.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[redacted]"
_SECRET_KEY_NAMES = re.compile(
    r"(^|_)(token|password|passwd|secret|key|private|pem|kek|template|image|pixels|nonce_sig|signature)($|_)",
    re.IGNORECASE,
)
# Key names that contain a secret word but only describe it.
_SAFE_KEY_NAMES = frozenset(
    {
        "key_id",
        "key_type",
        "key_path",
        "spki_sha256",
        "token_id",
        "image_shape",
        "template_bytes",
        "template_count",
        "idempotency_key",
        "key_backend",
    }
)


def _looks_secret(value: Any) -> bool:
    if isinstance(value, bytes | bytearray | memoryview):
        return True
    if isinstance(value, str):
        return "-----BEGIN" in value
    return type(value).__module__.startswith("numpy") and getattr(value, "ndim", 0) > 0


def redact_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: replace secret-looking values before any renderer sees them."""
    for key in list(event):
        if key == "event":
            continue
        if (_SECRET_KEY_NAMES.search(key) and key not in _SAFE_KEY_NAMES) or _looks_secret(event[key]):
            event[key] = REDACTED
    return event


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
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
