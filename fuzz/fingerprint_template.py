"""Fuzz the ISO/IEC 19794-2:2005 record decoder (biometrics.fingerprint.iso19794_2.decode), as the verifier
receives records: inside a ``templates`` envelope (protocol.templates.records_of).

Typed errors: TemplateFormatError (the decoder's, a TemplateError), TemplateWireError (the envelope's).
Also checked: a record that decodes encodes again, and that encoding decodes to the same views.
"""

from __future__ import annotations

import base64
import sys

import numpy as np

from biometrics.fingerprint.errors import TemplateError
from biometrics.fingerprint.iso19794_2 import decode, encode
from protocol.templates import ISO19794_2, TemplateWireError, records_of


def TestOneInput(data: bytes) -> None:
    try:
        (record,) = records_of([{"format": ISO19794_2, "data": base64.b64encode(data).decode()}])
    except TemplateWireError:
        return
    try:
        templates = decode(record)
    except TemplateError:
        return
    again = decode(encode(templates))
    if len(again) != len(templates):
        raise AssertionError("a decoded record re-encodes to another number of views")
    for first, second in zip(templates, again, strict=True):
        if not np.array_equal(first.minutiae.x, second.minutiae.x) or not np.array_equal(
            first.minutiae.y, second.minutiae.y
        ):
            raise AssertionError("a decoded record re-encodes to other minutiae positions")


if __name__ == "__main__":
    from fuzz.common import main

    main("fingerprint_template", TestOneInput, sys.argv)
