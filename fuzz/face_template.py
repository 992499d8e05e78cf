"""Fuzz the face template record (protocol.face_template.decode) inside a ``faces`` list, as the verifier
receives it (face_records_of), and the ``liveness`` field beside it when the bytes are JSON.

Typed errors: FaceTemplateError (all its subclasses), WireError for bytes that are not JSON.
Also checked: a record that decodes encodes again to the same bytes.
"""

from __future__ import annotations

import base64
import contextlib
import sys

from protocol.face_template import FaceTemplateError, decode, encode, face_records_of, liveness_steps_of, wire_faces
from protocol.wire import WireError, loads


def TestOneInput(data: bytes) -> None:
    with contextlib.suppress(WireError, FaceTemplateError):
        liveness_steps_of(loads(data))
    try:
        face_records_of([{"format": wire_faces([b""])[0]["format"], "data": base64.b64encode(data).decode()}])
    except FaceTemplateError:
        return
    template = decode(data)
    if encode(template.model, template.values) != data:
        raise AssertionError("a face record that decodes does not encode back to its bytes")


if __name__ == "__main__":
    from fuzz.common import main

    main("face_template", TestOneInput, sys.argv)
