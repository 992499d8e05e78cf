"""JSON as the protocol reads and writes it.

Canonical JSON (sorted keys, no spaces, ASCII) is what gets signed and hashed:
one byte string for one value, whoever makes it.

Strict parsing is what both sides apply to what the other sends: a duplicate
key is refused (two parsers could otherwise read two different values from the
signed bytes: "last one wins" is not a rule every JSON library follows),
nesting deeper than :data:`MAX_DEPTH` is refused with a typed error rather than
a ``RecursionError`` from deep inside a parser, and so is a number out of
range: ``NaN`` and ``Infinity`` are not JSON (RFC 8259), ``1e400`` reads as
infinity, and an integer of 400 digits overflows a float or an sqlite column:
each would turn into an ``OverflowError`` or a comparison that is never true
wherever the value is used (a lifetime, a score, a sequence number). Integers
must fit in 64 bits (:data:`MAX_INT`), as sqlite and every other JSON
implementation that matters can hold them. A string holding a lone UTF-16
surrogate (``"\\ud800"``: valid JSON, not Unicode text) is refused too: it
cannot be encoded as UTF-8, so it would fail later, wherever the value is
stored, hashed or logged, instead of here with a typed error.

Bytes are decoded as UTF-8, strictly, before any JSON is parsed (RFC 8259
section 8.1: JSON exchanged between systems is UTF-8). ``json.loads`` given
bytes would guess instead: UTF-16 and UTF-32 with or without a byte order
mark, a UTF-8 byte order mark, and a surrogate written as raw bytes (``ED A0
80``, CESU-8: not UTF-8) all parse there, so two readers of the same signed
bytes could disagree on what they say. Each is a :class:`WireError` here.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

from protocol.shown import shortened

MAX_DEPTH = 32  # the deepest request or answer of v1 is 4 levels; room for extensions
MAX_INT = 2**63 - 1  # the largest integer of the protocol: sqlite's INTEGER


# A JSON escape of a UTF-16 surrogate (U+D800..U+DFFF); only bodies holding one are searched for a lone one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

# Byte order marks, UTF-32 first (its little-endian mark begins with UTF-16's).
_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
         (b"\xfe\xff", "UTF-16"), (b"\xef\xbb\xbf", "UTF-8"))
_SEND_UTF8 = "send the JSON as UTF-8 text without a byte order mark"


class WireError(ValueError):
    """Bytes that are not the protocol's JSON; the message says what is wrong."""


class NotBase64Error(ValueError):
    """Text that is not strict standard base64; the message says why (never repeats the text)."""


def b64decode_strict(text: str | bytes) -> bytes:
    """Standard base64 (padding required, no other character) to bytes; anything else is a :class:`NotBase64Error`.

    The one strict decoder of both sides. Why: ``base64.b64decode(validate=True)``
    raises ``binascii.Error`` for a wrong alphabet or padding, but a plain
    ``ValueError`` for a ``str`` holding a non-ASCII character ("é", "–"): a caller
    catching only ``binascii.Error`` lets it through as an untyped failure (a 500
    on the verifier, a raw traceback from the agent's config).
    """
    if isinstance(text, str) and not text.isascii():
        raise NotBase64Error("not base64: a character outside ASCII")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NotBase64Error(f"not base64: {exc}") from None


def canonical_json(value: Any) -> bytes:
    """The one byte string of a JSON value: sorted keys, no spaces, ASCII."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise WireError(f"the key {shortened(key)!r} appears twice in one object")  # not 60 KB of key
            seen.add(key)
    return result


def _depth(value: Any) -> int:
    """Nesting depth, without recursion (the value may be as deep as the parser allowed)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _no_constant(name: str) -> float:
    raise WireError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise WireError(f"the number {shortened(text)} is out of range")
    return value


def _int64(text: str) -> int:
    value = int(text)
    if abs(value) > MAX_INT:
        raise WireError(f"the integer {shortened(text)} is out of range")
    return value


def _not_utf8(value: Any) -> bool:
    """Whether a key or a string anywhere in ``value`` holds a lone surrogate (walked without recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def _utf8_text(data: bytes | str) -> str:
    """The JSON text of ``data``: bytes decoded as strict UTF-8, or a string that UTF-8 can hold.

    Why not let ``json.loads`` decode: it guesses UTF-16/32 from the NUL bytes
    and decodes with ``surrogatepass``, so bytes that are not UTF-8 would parse.
    """
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            raise WireError(f"the JSON is not UTF-8 text (a lone surrogate); {_SEND_UTF8}") from None
        if data.startswith("\ufeff"):
            raise WireError(f"the JSON starts with a byte order mark; {_SEND_UTF8}")
        return data
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            raise WireError(f"the JSON starts with a {encoding} byte order mark; {_SEND_UTF8}")
    if b"\x00" in data:  # never in JSON text (a control character must be escaped), always in UTF-16/32 of ASCII
        raise WireError(f"the JSON holds NUL bytes (UTF-16 or UTF-32 text?); {_SEND_UTF8}")
    try:
        return data.decode("utf-8")  # strict: refuses CESU-8 surrogates, overlong forms, stray bytes
    except UnicodeDecodeError as exc:
        if data[exc.start] == 0xED and data[exc.start + 1:exc.start + 2] >= b"\xa0":
            raise WireError(f"the JSON holds a UTF-16 surrogate as raw bytes at byte {exc.start} (CESU-8, "
                            f"not UTF-8); {_SEND_UTF8}, a character above U+FFFF as one 4-byte sequence") from None
        raise WireError(f"the JSON is not UTF-8 (byte {exc.start}: {exc.reason}); {_SEND_UTF8}") from None


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON strictly: UTF-8 text, no duplicate keys, at most ``max_depth`` levels, numbers in range.

    Anything else is a :class:`WireError`.
    """
    text = _utf8_text(data)
    # Fast path: fewer brackets than the limit cannot nest deeper than it.
    shallow = text.count("[") + text.count("{") <= max_depth
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_int64,
        )
    except RecursionError:
        raise WireError(f"the JSON is nested deeper than {max_depth} levels") from None
    except WireError:
        raise
    except ValueError as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not shallow and _depth(value) > max_depth:
        raise WireError(f"the JSON is nested deeper than {max_depth} levels")
    # Walked only when an escape of a surrogate is in the text (a pair, e.g. an emoji, is text and passes).
    if _SURROGATE_ESCAPE.search(text) and _not_utf8(value):
        raise WireError("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff escape): not Unicode text; "
                        "escape a character above U+FFFF as a surrogate pair, or send it as UTF-8")
    return value


def loads_object(data: bytes | str, what: str = "the body") -> dict[str, Any]:
    """:func:`loads`, and the value must be an object."""
    value = loads(data)
    if not isinstance(value, dict):
        raise WireError(f"{what} must be a JSON object")
    return value
