"""Serialized libfprint prints (``FpPrint.serialize()``) read back safely, or refused with a typed error.

Why not just ``FPrint.Print.deserialize`` and its ``GLib.Error``: libfprint
(1.94) trusts the print's layout once its header is read. A print of 3 bytes or
fewer fails an assertion, and one cut short or damaged inside is repaired by
GLib into a "normal form" whose print data is empty, which libfprint then reads
item 0 of: GLib's "Attempt to access item 0 in a container with only 0 items",
an abort of the whole agent, not an error. So the layout is checked here first,
with GLib's own parser (which never aborts on untrusted data), and only a print
laid out as libfprint writes it is handed to libfprint; its remaining refusals
(a wrong header) become :class:`UnreadablePrint` too.

A print type libfprint does not know (anything but ``FPI_PRINT_RAW`` and
``FPI_PRINT_NBIS``, its ``FpiPrintType``; ``FPI_PRINT_UNDEFINED`` only exists
before enrolment) is refused here as well: libfprint's ``fp_print_deserialize``
first logs a ``g_warning`` ("Invalid print type"), which ends the process where
warnings are fatal (``G_DEBUG=fatal-warnings``), and only then fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drivers.fprint.errors import UnreadablePrint

HEADER_BYTES = 3  # libfprint's "FP<version>" before the GVariant
PRINT_TYPE = "(issbymsmsia{sv}v)"  # libfprint's FPI_PRINT_VARIANT_TYPE: type, driver, device id, ..., the print data
PRINT_DATA = 9  # the field of PRINT_TYPE holding the print data (a variant)
RAW = 1  # FPI_PRINT_RAW: the sensor's own data, compared as is (match-on-sensor readers)
NBIS, NBIS_DATA = 2, "(a(aiaiai))"  # FPI_PRINT_NBIS (image readers' minutiae) and the layout it is read with
KNOWN_TYPES = {RAW: "raw", NBIS: "NBIS minutiae"}  # the print types fp_print_deserialize reads


def layout_problem(blob: bytes) -> str | None:
    """Why libfprint could not read ``blob`` safely, or None when it is laid out as libfprint writes prints."""
    from gi.repository import GLib

    if len(blob) <= HEADER_BYTES:
        return f"{len(blob)} bytes: too short to be a print"
    value = GLib.Variant.new_from_bytes(GLib.VariantType(PRINT_TYPE), GLib.Bytes(blob[HEADER_BYTES:]), False)
    if not value.is_normal_form():  # libfprint writes normal form only: anything else is cut short or damaged
        return "damaged or cut short"
    kind = value.get_child_value(0).get_int32()
    if kind not in KNOWN_TYPES:
        known = ", ".join(f"{number} ({name})" for number, name in KNOWN_TYPES.items())
        return f"print type {kind}, not one libfprint reads: {known}"
    data = value.get_child_value(PRINT_DATA).get_variant()
    if kind == NBIS and data.get_type_string() != NBIS_DATA:
        return f"minutiae laid out as {data.get_type_string()}, not {NBIS_DATA}"
    if not data.is_container() or data.n_children() < 1:  # libfprint reads its item 0 whatever the type
        return "no print data"
    return None


def deserialized(blob: bytes, name: str) -> Any:
    """``blob`` as an ``FPrint.Print`` for the reader ``name``; :class:`UnreadablePrint` when it is not one."""
    from gi.repository import FPrint, GLib

    problem = layout_problem(blob)
    if problem is not None:
        raise UnreadablePrint(name, problem)
    try:
        return FPrint.Print.deserialize(blob)
    except GLib.Error as exc:
        raise UnreadablePrint(name, f"libfprint: {exc.message}") from None


def unreadable(blobs: Sequence[bytes], name: str) -> dict[int, UnreadablePrint]:
    """The prints among ``blobs`` libfprint cannot read, by index, each with why.

    Why apart from identify: identify reads all its prints at once and the first
    unreadable one refused the whole list, without saying which; a caller that
    knows whose print each is can leave those out and name them.
    """
    found: dict[int, UnreadablePrint] = {}
    for index, blob in enumerate(blobs):
        try:
            deserialized(blob, name)
        except UnreadablePrint as exc:
            found[index] = exc
    return found
