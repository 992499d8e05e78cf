"""What a signed biometric request carries, parsed in one place: finger templates, faces, or a sensor message.

Every route that takes a signed body (enrollments, verifications and their
step-ups, identifications, sensor enrollments and assertions) parses what the
body carries with a function of this module, behind the same gate
(:meth:`verifier.biometric.BiometricRoutes.signed_content`). A body that does
not parse raises :class:`Malformed`, which the gate turns into an audited
refusal: the device has passed the access rule, the rate and the signature, so
a malformed body is the device's doing (a bug, or someone probing), and the
operator sees it.

What goes to the audit is fixed words: which item (``templates[2]``) and which
check failed (the error's class), never the detail, which may quote bytes of the
record (a header field), and never the record. The client gets the full detail
and a fix that names what to send instead: it sent the bytes itself.

Pure: no I/O, no database; the gate does the logging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from biometrics.fingerprint import FingerprintTemplate, TemplateError
from biometrics.fingerprint.iso19794_2 import decode
from protocol.face_template import FACES, LIVENESS, FaceTemplateError, face_records_of, liveness_steps_of
from protocol.sensor import SensorAssertion, SensorEnrollmentRequest
from protocol.templates import TemplateWireError, records_of
from protocol.wire import WireError
from verifier.problems import Problem

FINGER_FIX = "send the ISO/IEC 19794-2:2005 record the agent's extractor made (protocol.templates); capture again"
FACE_FIX = (
    "send the face embedding record the agent's face pipeline made (protocol.face_template: "
    "model, dimension, unit-norm float32) with the liveness steps of this nonce; capture again"
)
BOTH_FIX = "send the other factor in its own request, with the step_up id the verifier answered"
SENSOR_FIX = "send the sensor message as the agent's sensor session makes it (protocol.sensor); update the agent"

_Message = TypeVar("_Message", SensorEnrollmentRequest, SensorAssertion)


class Malformed(Exception):
    """A signed body whose content does not parse: the problem to answer, and the audit's fixed words."""

    def __init__(self, problem: Problem, reason: str, defect: str, item: str = "") -> None:
        super().__init__(reason)
        self.problem = problem
        self.reason = reason  # a fixed phrase: "malformed fingerprint template"
        self.defect = defect  # the check that failed (an error class name), never the content
        self.item = item  # which item of the body: "templates[2]", "faces[0]", "" for the body as a whole

    def audit_fields(self) -> dict[str, str]:
        """What the audit event carries about the defect (no bytes, no detail)."""
        return {"defect": self.defect, **({"item": self.item} if self.item else {})}


@dataclass(frozen=True)
class Carried:
    """The templates of an enrollment, verification or identification: fingers or faces, never both.

    ``views`` lines up with ``records``: each record's finger views, decoded once here.
    """

    records: list[bytes]  # ISO/IEC 19794-2 records (fingers); empty when the request carries faces
    views: list[list[FingerprintTemplate]]
    faces: list[bytes]  # face embedding records (protocol.face_template); empty when it carries fingers
    liveness: tuple[str, ...]  # the liveness steps a face request claims (checked against the nonce by the gate)

    @property
    def has_faces(self) -> bool:
        return bool(self.faces)


def carried_of(body: dict[str, Any]) -> Carried:
    """The templates a signed body carries, each decoded and checked; :class:`Malformed` names the first defect.

    Fingers and faces together are refused: each modality is decided on its own
    request (the second through a step-up), and a face riding along a finger
    request would otherwise be ignored, its liveness unchecked.
    """
    if FACES in body and "templates" in body:
        raise Malformed(
            Problem("bad-template", "a request carries finger templates or faces, not both", BOTH_FIX),
            "fingers and faces in one request",
            "BothModalities",
        )
    if FACES in body:
        return _faces(body)
    return _fingers(body)


def _fingers(body: dict[str, Any]) -> Carried:
    try:
        records = records_of(body.get("templates"))
    except TemplateWireError as exc:
        raise Malformed(Problem("bad-template", str(exc), FINGER_FIX), "malformed fingerprint template",
                        type(exc).__name__, exc.item) from None
    views = []
    for index, record in enumerate(records):
        try:
            views.append(decode(record))
        except TemplateError as exc:
            raise Malformed(Problem("bad-template", f"templates[{index}]: {exc}", FINGER_FIX),
                            "malformed fingerprint template", type(exc).__name__, f"templates[{index}]") from None
    return Carried(records, views, [], ())


def _faces(body: dict[str, Any]) -> Carried:
    try:
        faces = face_records_of(body.get(FACES))
        liveness = liveness_steps_of(body.get(LIVENESS))
    except FaceTemplateError as exc:
        raise Malformed(Problem("bad-template", str(exc), FACE_FIX), "malformed face template",
                        type(exc).__name__, exc.item) from None
    return Carried([], [], faces, liveness)


def message_of(body: dict[str, Any], message: type[_Message]) -> _Message:
    """A sensor enrollment or assertion (``message.from_body``); :class:`Malformed` when it is not one."""
    try:
        return message.from_body(body)
    except WireError as exc:
        raise Malformed(Problem("bad-json", str(exc), SENSOR_FIX), "malformed sensor message",
                        type(exc).__name__) from None
