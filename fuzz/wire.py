"""Fuzz protocol.wire: strict JSON (loads, loads_object), strict base64, and canonical JSON of what loads gave.

Typed errors: WireError, NotBase64Error. Also checked: whatever loads accepts,
canonical_json writes, and reads back to the same value (the bytes signed and
hashed must be one function of the value).
"""

from __future__ import annotations

import contextlib
import sys

from protocol.wire import NotBase64Error, WireError, b64decode_strict, canonical_json, loads, loads_object


def TestOneInput(data: bytes) -> None:
    with contextlib.suppress(NotBase64Error):
        b64decode_strict(data)
    with contextlib.suppress(NotBase64Error):
        b64decode_strict(data.decode("utf-8", "replace"))
    with contextlib.suppress(WireError):
        loads_object(data)
    try:
        value = loads(data)
    except WireError:
        return
    canonical = canonical_json(value)
    if loads(canonical) != value:
        raise AssertionError("canonical_json of an accepted value does not read back to it")


if __name__ == "__main__":
    from fuzz.common import main

    main("wire", TestOneInput, sys.argv)
