"""Template wire formats (DESIGN.md): how a template travels inside a request body.

A fingerprint template travels as ``{"format": "iso19794-2:2005", "data": base64}``,
the data an ISO/IEC 19794-2:2005 finger minutiae record. The record codec is
biometric code and stays in ``biometrics/``; what is here is what both sides
must agree on: the format's name, the envelope, and the bounds a record must
keep to be accepted.
"""

from __future__ import annotations

import base64
from typing import Any

from protocol.wire import NotBase64Error, b64decode_strict

ISO19794_2 = "iso19794-2:2005"  # ISO/IEC 19794-2:2005 finger minutiae record
MAX_TEMPLATES = 10  # records per request
# Minutiae per finger view: fewer than the minimum cannot identify anyone (a record with
# none would be enrolled and then match nothing); more than the maximum is not a real
# finger, and costs matching time quadratic in the count.
MIN_MINUTIAE_PER_VIEW = 8
MAX_MINUTIAE_PER_VIEW = 150


class TemplateWireError(ValueError):
    """A template envelope that is not the protocol's; the message names the item, ``item`` holds it (``templates[0]``).
    """

    def __init__(self, message: str, item: str = "") -> None:
        super().__init__(message)
        self.item = item


def wire_template(record: bytes, fmt: str = ISO19794_2) -> dict[str, str]:
    return {"format": fmt, "data": base64.b64encode(record).decode("ascii")}


def wire_templates(records: list[bytes]) -> list[dict[str, str]]:
    return [wire_template(r) for r in records]


def records_of(items: Any, fmt: str = ISO19794_2) -> list[bytes]:
    """The records of a ``templates`` list, envelope checked (the records themselves are not decoded here)."""
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_TEMPLATES:
        raise TemplateWireError(f"the body needs 1 to {MAX_TEMPLATES} templates")
    records = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or item.get("format") != fmt:
            raise TemplateWireError(f"templates[{index}] is not a {fmt} template", f"templates[{index}]")
        try:
            records.append(b64decode_strict(str(item.get("data", ""))))
        except NotBase64Error:
            raise TemplateWireError(f"templates[{index}]: the data is not base64", f"templates[{index}]") from None
    return records


def minutiae_problem(index: int, view: int, count: int) -> str | None:
    """Why a view with ``count`` minutiae is refused, or None when it is within bounds."""
    if count < MIN_MINUTIAE_PER_VIEW:
        return (
            f"templates[{index}] view {view} has {count} minutiae; at least {MIN_MINUTIAE_PER_VIEW} are needed "
            "to tell one finger from another"
        )
    if count > MAX_MINUTIAE_PER_VIEW:
        return f"templates[{index}] view {view} has {count} minutiae; at most {MAX_MINUTIAE_PER_VIEW} are accepted"
    return None


def field_problem(index: int, view: int, has_field: bool) -> str | None:
    """Why a view without its orientation field is refused, or None when it has one.

    The score a verifier calibrates multiplies the minutiae evidence by how well
    the two prints' orientation fields agree; a view sent without its field would
    be scored with an assumed agreement that is not its own, which a device could
    use to lift an impostor's score (or lower a duplicate's). Stored enrollments
    made before the field existed are the only views scored that way.
    """
    if has_field:
        return None
    return (
        f"templates[{index}] view {view} carries no orientation field (the record's vendor extended data); "
        "capture again with an agent of this release, which writes it"
    )


def coverage_problem(index: int, view: int, coverage: float, minimum: float) -> str | None:
    """Why a view whose field covers only ``coverage`` of its minutiae is refused, or None when it covers enough.

    A field cut down to a block or two would agree fully by chance; one extracted
    from the same image as the minutiae covers nearly all of them.
    """
    if coverage >= minimum:
        return None
    return (
        f"templates[{index}] view {view}: its orientation field covers {coverage:.0%} of its minutiae, "
        f"under the {minimum:.0%} a field extracted from the same image does; "
        "extract the minutiae and the field from one image"
    )


def spread_problem(index: int, view: int, spread: float, minimum: float) -> str | None:
    """Why a view whose field puts its weight on few blocks is refused, or None when it spreads enough.

    A block's weight grows with its coherence; a field whose foreground weighs
    almost nothing outside a few blocks next to its minutiae would agree by
    construction wherever those minutiae are aligned.
    """
    if spread >= minimum:
        return None
    return (
        f"templates[{index}] view {view}: its orientation field carries its weight on {spread:.0%} of its "
        f"foreground, under the {minimum:.0%} an extracted field does; extract the field from the image, "
        "with an agent of this release"
    )
