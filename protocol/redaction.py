"""The logs' last line of defence, one rule for the agent and the verifier: secret-looking values are replaced.

A structlog processor is a plain function ``(logger, method name, event dict) ->
event dict``, so this module needs nothing but the standard library; both sides
put :func:`redact_secrets` in their chain *after* ``format_exc_info``, so an
exception's text is scanned too. Code must still never log such values: the
filter is a net, not the rule. What it replaces with ``"[redacted]"``:

* the value of a key named like a secret (``token``, ``password``, ``kek``,
  ``authorization``, ``embedding``, ``template``... see :data:`SECRET_KEY_NAMES`),
  at any depth of nested dicts, lists and tuples, unless the name only describes
  one (``token_scope``, ``key_type``: :data:`DESCRIBING_SUFFIX`); ``True``,
  ``False`` and ``None`` stay (they say whether, not what);
* the value of a key named like a payload (``data``, ``record``, ``body``...)
  unless it is a dict (scanned in turn) or a number;
* bytes, numpy arrays (images, embeddings), and lists or tuples of
  :data:`MIN_FLOATS` floats or more (an embedding by another name);
* inside any text (the event, values, an exception's message and traceback),
  only the secret part: a PEM block, the credential after ``Bearer`` or ``Basic``,
  the value after ``password=``, ``token:``, ``kek=``... , and long base64 or
  base64url runs that mix upper case, lower case and digits (tokens, keys, nonces,
  templates). Lower-case or upper-case hex (certificate fingerprints, serials,
  hashes), UUIDs, timestamps, device ids and URL paths are not such runs.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

REDACTED = "[redacted]"
SECRET_KEY_NAMES = re.compile(
    r"(^|_)(token|password|passwd|passphrase|pwd|secret|key|private|pem|kek|template|image|pixels|nonce_sig"
    r"|signature|embedding|embeddings|minutiae|authorization|bearer|cookie|credential|credentials)($|_)",
    re.IGNORECASE,
)
# Key names that contain a secret word but only describe it: those ending in a word that says what about it
# (token_scope, enrollment_token_issued, key_type, template_count, spki_sha256...), and these.
DESCRIBING_SUFFIX = re.compile(
    r"_(id|ids|type|path|file|scope|issued|count|bytes|shape|backend|at|ttl|hash|sha256|size|len|status|kind"
    r"|name|revoked|used)$",
    re.IGNORECASE,
)
SAFE_KEY_NAMES = frozenset(
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
# Key names of a payload: a template, a record or a request body under a neutral name.
PAYLOAD_KEY_NAMES = re.compile(r"^(data|record|records|body|payload|content|raw)$", re.IGNORECASE)
MIN_FLOATS = 16  # a face embedding has 128 or 512; nothing the daemons log is a list of 16 floats
MAX_DEPTH = 8

_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\Z)", re.DOTALL)
_CREDENTIAL_NAMES = (
    r"(?:[A-Za-z]+_)*(?:password|passwd|passphrase|pwd|secret|token|api_?key|kek|authorization)"
)
_KEY_VALUE = re.compile(  # password=..., "token": "...", Authorization: Bearer ...; not a value already masked
    rf"(?i)(?<![A-Za-z0-9])({_CREDENTIAL_NAMES})([\"']?\s*[=:]\s*[\"']?)"
    r"(?!\[redacted\]|\*+(?![^\s\"'&,;]))(?:(?:bearer|basic)\s+)?[^\s\"'&,;]+"
)
# RFC 6750 / 7617 credentials: not "Bearer error=..." (a challenge's parameters), not a word ("Basic authentication").
_SCHEME = re.compile(
    r"\b([Bb]earer|[Bb]asic|BEARER|BASIC)(\s+)(?![A-Za-z_]+=)(?=[a-z]*[A-Z0-9._~+/=-])[A-Za-z0-9._~+/-]{8,}=*"
)
_RUN = re.compile(r"[A-Za-z0-9+/_-]{20,}={0,2}")


def _mixed(text: str) -> bool:
    """Upper case, lower case, and a digit, + or = (which no word, identifier or hex has all of)."""
    return bool(re.search(r"[A-Z]", text) and re.search(r"[a-z]", text) and re.search(r"[0-9+=]", text))


def _random_looking(run: str) -> bool:
    """Base64 of random or binary bytes rather than a word, a path or hex (see the module's list).

    Half the letters of base64 are upper case; words, names and paths are mostly
    lower case (``/tmp/pytest-7/test_a0/ttyZFM-unplugged``, ``Kiosk-Lobby-North-2024``):
    under a quarter upper case is not a run. Then, without a slash: 24 mixed
    characters, or 40 of both cases. A path's segments are words: a run with slashes
    counts when a piece between them is long and mixed, or when it is long and mixed,
    has few slashes (44 characters of base64 hold 0.7 on average) and no piece that
    is a lower-case word (``/v1/subjects/Ana2024/enrollments``). A net with holes:
    about 1 in 700 of ``secrets.token_urlsafe(32)`` passes it (too few upper case, or
    no digit), which the key names, ``Bearer`` and ``token=`` rules still catch where
    such a token usually is.
    """
    upper, lower = sum(c.isupper() for c in run), sum(c.islower() for c in run)
    if not upper or not lower or upper < (upper + lower) / 4:
        return False
    slashes = run.count("/")
    if slashes == 0:
        return len(run) >= 40 or (len(run) >= 24 and _mixed(run))
    pieces = [piece for piece in run.split("/") if piece]
    if any(len(piece) >= 20 and _mixed(piece) for piece in pieces):
        return True
    words = [piece for piece in pieces if len(piece) >= 4 and piece.isalpha() and piece.islower()]
    return _mixed(run) and len(run) >= 32 and slashes <= len(run) / 8 and not words


def redact_text(text: str) -> str:
    """``text`` with its secret-looking parts replaced (the rest kept, so a message still says what happened)."""
    text = _PEM.sub(REDACTED, text)
    text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _RUN.sub(lambda m: REDACTED if _random_looking(m.group(0)) else m.group(0), text)


def _is_float(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)


def redact_value(value: Any, depth: int = 0) -> Any:
    """``value`` with every secret-looking part replaced, dicts, lists and tuples scanned through."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray | memoryview) or depth > MAX_DEPTH:
        return REDACTED
    if type(value).__module__.startswith("numpy"):
        return REDACTED if getattr(value, "ndim", 0) > 0 else value
    if isinstance(value, Mapping):
        return {key: redact_item(str(key), item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        if len(value) >= MIN_FLOATS and all(_is_float(item) for item in value):
            return REDACTED
        items = [redact_value(item, depth + 1) for item in value]
        return tuple(items) if isinstance(value, tuple) else items
    # Anything else is rendered by its repr (the JSON renderer's fallback): scanned, kept when clean.
    shown = repr(value)
    cleaned = redact_text(shown)
    return value if cleaned == shown else cleaned


def redact_item(key: str, value: Any, depth: int = 0) -> Any:
    """The value of ``key`` as it may be logged: judged by its key's name first, then by itself."""
    if value is None or isinstance(value, bool):
        return value
    if SECRET_KEY_NAMES.search(key) and key not in SAFE_KEY_NAMES and not DESCRIBING_SUFFIX.search(key):
        return REDACTED
    if PAYLOAD_KEY_NAMES.match(key) and not isinstance(value, Mapping | numbers.Number):
        return REDACTED
    return redact_value(value, depth)


def redact_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: replace secret-looking values before any renderer sees them (after format_exc_info)."""
    for key, value in list(event.items()):
        event[key] = redact_text(value) if key == "event" and isinstance(value, str) else redact_item(key, value)
    return event
