"""The logs' last line of defence, one rule for the agent and the verifier: secret-looking values are replaced.

A structlog processor is a plain function ``(logger, method name, event dict) ->
event dict``, so this module needs nothing but the standard library; both sides
put :func:`redact_secrets` in their chain *after* ``format_exc_info``, so an
exception's text is scanned too. Code must still never log such values: the
filter is a net, not the rule. What it replaces with ``"[redacted]"``:

* the value of a key named like a secret (``token``, ``password``, ``kek``,
  ``authorization``, ``embedding``, ``template``... see :data:`SECRET_KEY_NAMES`),
  at any depth of nested dicts, lists and tuples, unless the name only describes
  one: it names it (``token_scope``, ``key_type``: :data:`NAMING_SUFFIX`), or
  says where it is (``kek_file``: :data:`WHERE_SUFFIX`, kept when the value is a
  path) or how big or when (``template_count``: :data:`MEASURE_SUFFIX`, kept
  when the value is a number or a timestamp); ``True``, ``False`` and ``None``
  stay (they say whether, not what);
* the value of a key named like a payload (``data``, ``record``, ``body``...)
  unless it is a dict (scanned in turn) or a number;
* bytes, numpy arrays (images, embeddings), and lists or tuples of
  :data:`MIN_FLOATS` floats or more (an embedding by another name);
* inside any text (the event, values, an exception's message and traceback),
  only the secret part: a PEM block, the credential after ``Bearer`` or ``Basic``,
  the value after ``password=``, ``token:``, ``kek=``, ``pass=``... , the password
  of a URL's userinfo (``http://admin:[redacted]@cam/``), and long base64 or
  base64url runs that mix upper case, lower case and digits (tokens, keys, nonces,
  templates). Lower-case or upper-case hex (certificate fingerprints, serials,
  hashes), UUIDs, timestamps, URL paths and ids made of words
  (``Site-AMS-Kiosk-Entrance-01``) are not such runs.

An operator searches the logs by device, subject, serial or group: under a key
naming an identifier (``device_id``, ``subject``, ``fix``... :data:`IDENTIFIER_KEY_NAMES`)
a run shaped like a protocol id (:data:`protocol.endpoints.SUBJECT_ID`, the shape
of device ids and group names too) is never judged random, so a random-looking
subject uid stays; credentials in such a value (``Bearer``, ``token=``, userinfo,
PEM) and base64 blobs (``+``, ``/`` or ``=``) are still replaced.
"""

from __future__ import annotations

import datetime
import numbers
import os
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

from protocol.endpoints import SUBJECT_ID

REDACTED = "[redacted]"
SECRET_KEY_NAMES = re.compile(
    r"(^|_)(token|password|passwd|passphrase|pwd|secret|key|private|pem|kek|template|image|pixels|nonce_sig"
    r"|signature|embedding|embeddings|minutiae|authorization|bearer|cookie|credential|credentials)($|_)",
    re.IGNORECASE,
)
# Key names that contain a secret word but only describe it, by their last word. Not "_used", "_revoked", "_value",
# "_old", "_new": such a key may carry the secret itself (token_used=...); a yes or no under it stays anyway.
NAMING_SUFFIX = re.compile(  # what it is: its id, kind, scope, name, a hash of it (enrollment_token_issued: its scope)
    r"_(id|ids|type|scope|issued|backend|hash|sha256|status|kind|name)$", re.IGNORECASE
)
WHERE_SUFFIX = re.compile(r"_(path|file|dir)$", re.IGNORECASE)  # kept when the value is a path: kek_file=/etc/...
MEASURE_SUFFIX = re.compile(  # kept when the value is a number, a shape, a time: template_count=3, token_issued_at=...
    r"_(count|bytes|shape|size|len|ttl|at)$", re.IGNORECASE
)
# Key names with a secret word that the suffixes above do not cover (key_id, key_path, template_count, image_shape,
# spki_sha256... are, with their values checked).
SAFE_KEY_NAMES = frozenset({"idempotency_key"})
# Key names of a payload: a template, a record or a request body under a neutral name.
PAYLOAD_KEY_NAMES = re.compile(r"^(data|record|records|body|payload|content|raw)$", re.IGNORECASE)
# Key names of an identifier an operator searches by: a run shaped like a protocol id is never judged random there
# (unless the name holds a secret word too: secret_name, key_fingerprint).
IDENTIFIER_KEY_NAMES = re.compile(
    r"(^|_)(device|devices|device_id|subject|subjects|subject_id|serial|fingerprint|source|url|uri|path|fix"
    r"|group|groups|principal|host|name)$",
    re.IGNORECASE,
)
MIN_FLOATS = 16  # a face embedding has 128 or 512; nothing the daemons log is a list of 16 floats
MAX_DEPTH = 8

_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\Z)", re.DOTALL)
_CREDENTIAL_NAMES = (  # "pass" only before "=" (a query's ?pass=...): "first pass: ok" is prose
    r"(?:[A-Za-z]+_)*(?:password|passwd|passphrase|pwd|secret|token|api_?key|kek|authorization|pass(?=\s*=))"
)
_KEY_VALUE = re.compile(  # password=..., "token": "...", Authorization: Bearer ...; not a value already masked
    rf"(?i)(?<![A-Za-z0-9])({_CREDENTIAL_NAMES})([\"']?\s*[=:]\s*[\"']?)"
    r"(?!\[redacted\]|\*+(?![^\s\"'&,;]))(?:(?:bearer|basic)\s+)?[^\s\"'&,;]+"
)
# RFC 6750 / 7617 credentials: not "Bearer error=..." (a challenge's parameters), not a word ("Basic authentication").
_SCHEME = re.compile(
    r"\b([Bb]earer|[Bb]asic|BEARER|BASIC)(\s+)(?![A-Za-z_]+=)(?=[a-z]*[A-Z0-9._~+/=-])[A-Za-z0-9._~+/-]{8,}=*"
)
# A URL's userinfo password, up to the last "@" before the path (a password may hold "@"); not one already masked.
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s/?#@:]*:)(?!\*+@|\[redacted\]@)[^\s/?#]+(?=@)")
_RUN = re.compile(r"[A-Za-z0-9+/_-]{20,}={0,2}")


def _mixed(text: str) -> bool:
    """Upper case, lower case, and a digit, + or = (which no word, identifier or hex has all of)."""
    return bool(re.search(r"[A-Z]", text) and re.search(r"[a-z]", text) and re.search(r"[0-9+=]", text))


def _named_id(piece: str) -> bool:
    """A protocol id made of words (``Site-AMS-Kiosk-Entrance-01``, ``LOBBY-North-Kiosk-2024-A``, ``Ana2024``).

    Each part between ``-``, ``_`` and ``.`` is one case (with digits) or a capitalised
    word; base64 of random bytes has parts mixing both cases (``7Gd``, ``Mg6XH4rAS8f``).
    """
    return bool(SUBJECT_ID.fullmatch(piece)) and all(_WORD.fullmatch(part) for part in re.split(r"[-_.]", piece))


_WORD = re.compile(r"[A-Z]?[a-z0-9]*|[A-Z0-9]*")


def _identifier_run(run: str) -> bool:
    """A run an identifier's value may hold: protocol ids, alone or as a path's pieces, not a base64 blob (+, =)."""
    pieces = run.split("/")
    return all(not piece or SUBJECT_ID.fullmatch(piece) for piece in pieces) and any(pieces)


def _random_looking(run: str) -> bool:
    """Base64 of random or binary bytes rather than a word, a path, an id of words or hex (see the module's list).

    Half the letters of base64 are upper case; words, names and paths are mostly
    lower case (``/tmp/pytest-7/test_a0/ttyZFM-unplugged``, ``Kiosk-Lobby-North-2024``):
    under a quarter upper case is not a run. Neither is an id made of words
    (:func:`_named_id`), alone or as every piece of a path. Then, without a slash:
    24 mixed characters, or 40 of both cases. A path's segments are words: a run with
    slashes counts when a piece between them is long, mixed and not an id of words,
    or when it is long and mixed, has few slashes (44 characters of base64 hold 0.7
    on average) and no piece that is a lower-case word (``/v1/subjects/Ana2024/enrollments``).
    A net with holes: about 1 in 700 of ``secrets.token_urlsafe(32)`` passes it (too
    few upper case, or no digit), which the key names, ``Bearer`` and ``token=`` rules
    still catch where such a token usually is.
    """
    upper, lower = sum(c.isupper() for c in run), sum(c.islower() for c in run)
    if not upper or not lower or upper < (upper + lower) / 4:
        return False
    pieces = [piece for piece in run.split("/") if piece]
    if all(_named_id(piece) for piece in pieces):
        return False
    slashes = run.count("/")
    if slashes == 0:
        return len(run) >= 40 or (len(run) >= 24 and _mixed(run))
    if any(len(piece) >= 20 and _mixed(piece) and not _named_id(piece) for piece in pieces):
        return True
    words = [piece for piece in pieces if len(piece) >= 4 and piece.isalpha() and piece.islower()]
    return _mixed(run) and len(run) >= 32 and slashes <= len(run) / 8 and not words


def redact_text(text: str, identifier: bool = False) -> str:
    """``text`` with its secret-looking parts replaced (the rest kept, so a message still says what happened).

    ``identifier``: the text is the value of an identifier (:data:`IDENTIFIER_KEY_NAMES`), whose
    runs shaped like protocol ids are kept however random they look.
    """
    text = _PEM.sub(REDACTED, text)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)

    def run(match: re.Match[str]) -> str:
        found = match.group(0)
        if identifier and _identifier_run(found):
            return found
        return REDACTED if _random_looking(found) else found

    return _RUN.sub(run, text)


def _is_float(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)


def redact_value(value: Any, depth: int = 0, identifier: bool = False) -> Any:
    """``value`` with every secret-looking part replaced, dicts, lists and tuples scanned through.

    ``identifier``: the value of an identifier key (see :func:`redact_text`); a dict inside is judged by its own keys.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value, identifier)
    if isinstance(value, bytes | bytearray | memoryview) or depth > MAX_DEPTH:
        return REDACTED
    if type(value).__module__.startswith("numpy"):
        return REDACTED if getattr(value, "ndim", 0) > 0 else value
    if isinstance(value, Mapping):
        return {key: redact_item(str(key), item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        if len(value) >= MIN_FLOATS and all(_is_float(item) for item in value):
            return REDACTED
        items = [redact_value(item, depth + 1, identifier) for item in value]
        return tuple(items) if isinstance(value, tuple) else items
    # Anything else is rendered by its repr (the JSON renderer's fallback): scanned, kept when clean.
    shown = repr(value)
    cleaned = redact_text(shown, identifier)
    return value if cleaned == shown else cleaned


def redact_item(key: str, value: Any, depth: int = 0) -> Any:
    """The value of ``key`` as it may be logged: judged by its key's name first, then by itself."""
    if value is None or isinstance(value, bool):
        return value
    if SECRET_KEY_NAMES.search(key) and key not in SAFE_KEY_NAMES and not _describes(key, value):
        return REDACTED
    if PAYLOAD_KEY_NAMES.match(key) and not isinstance(value, Mapping | numbers.Number):
        return REDACTED
    identifier = bool(IDENTIFIER_KEY_NAMES.search(key)) and not SECRET_KEY_NAMES.search(key)  # not secret_name
    return redact_value(value, depth, identifier)


def _describes(key: str, value: Any) -> bool:
    """Whether a key named like a secret only describes it, and its value is what such a description holds."""
    if NAMING_SUFFIX.search(key):
        return True
    if WHERE_SUFFIX.search(key):  # password_file="hunter2" is not a path
        return isinstance(value, os.PathLike) or (isinstance(value, str) and "/" in value)
    if MEASURE_SUFFIX.search(key):  # template_bytes="Rk1SACAy..." is not a size
        if isinstance(value, numbers.Number | datetime.date | datetime.time | datetime.timedelta):
            return True
        if isinstance(value, list | tuple):
            return all(isinstance(item, numbers.Integral) for item in value)  # a shape
        return isinstance(value, str) and _timestamp(value)
    return False


def _timestamp(text: str) -> bool:
    try:
        datetime.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def redact_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: replace secret-looking values before any renderer sees them (after format_exc_info)."""
    for key, value in list(event.items()):
        event[key] = redact_text(value) if key == "event" and isinstance(value, str) else redact_item(key, value)
    return event
