"""Typed requests and answers of protocol v1.

A request knows its path, the operation it asks for (the device's access rule
names operations) and its body without the nonce and signature, which the
client adds (:mod:`protocol.signing`). An answer is parsed from the JSON the
verifier sent, every field checked: a field missing or of the wrong type is a
:class:`~protocol.wire.WireError`, never a ``KeyError`` three calls later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol import endpoints
from protocol.face_template import FACES, FACTORS, LIVENESS, wire_faces, wire_liveness
from protocol.templates import wire_templates
from protocol.wire import WireError


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise WireError(f"{what}: {name!r} is missing or not of the right type")
    return value


def _templates_body(templates: list[bytes], faces: list[bytes], liveness: tuple[str, ...] | None) -> dict[str, Any]:
    """A request's biometric fields: finger records under ``templates``, face records under ``faces``.

    A request carries one modality or both; a face always comes with the
    liveness challenge the device ran (derived from the nonce it signs).
    """
    out: dict[str, Any] = {}
    if templates:
        out["templates"] = wire_templates(templates)
    if faces:
        out[FACES] = wire_faces(faces)
        out[LIVENESS] = wire_liveness(liveness or ())
    return out


# ---------------------------------------------------------------- requests
@dataclass(frozen=True)
class ChallengeRequest:
    """Ask for a nonce for one operation on one subject.

    Naming them lets the verifier refuse, before a person touches the sensor,
    what it would refuse after: an unknown subject, an operation or a subject
    group this device may not use. No subject for ``identify``.
    """

    operation: str
    subject: str | None = None
    group: str | None = None  # enroll only: the group asked for
    # enroll only: a first enrollment (no session token will come), so an id already enrolled is refused now,
    # before the person gives every capture, rather than after them. Absent: no such check (an --add).
    first: bool = False
    # verify only: "face" when the verification is by face, so a subject with no face enrolled is refused now,
    # before the head-turn challenge, rather than after it. Absent: a finger, or no such check.
    modality: str | None = None

    path = endpoints.CHALLENGES

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"operation": self.operation}
        if self.subject is not None:
            out["subject"] = self.subject
        if self.group is not None:
            out["group"] = self.group
        if self.first:
            out["first"] = True
        if self.modality is not None:
            out["modality"] = self.modality
        return out

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ChallengeRequest:
        """Parse and check a challenge request; an empty body asks for a plain nonce (no early checks)."""
        operation = body.get("operation")
        subject = body.get("subject")
        group = body.get("group")
        first = body.get("first", False)
        modality = body.get("modality")
        unknown = set(body) - {"operation", "subject", "group", "first", "modality"}
        if unknown:
            raise WireError(f"unknown fields {sorted(unknown)} in a challenge request")
        if operation is None and subject is None and group is None and "first" not in body and modality is None:
            return cls("")
        if not isinstance(first, bool) or (first and operation != "enroll"):
            raise WireError("first is true or false, and only for enroll")
        if modality is not None and (operation != "verify" or modality not in ("finger", "face")):
            raise WireError('modality is "finger" or "face", and only for verify')
        if operation not in endpoints.OPERATIONS:
            raise WireError(f"operation must be one of {', '.join(endpoints.OPERATIONS)}")
        if operation == "identify" and subject is not None:
            raise WireError("identify names no subject")
        if operation != "identify" and (not isinstance(subject, str) or not endpoints.SUBJECT_ID.fullmatch(subject)):
            raise WireError(f"{operation} needs a subject id ({endpoints.ID_RULE})")
        if group is not None and (
            operation != "enroll" or not isinstance(group, str) or not endpoints.GROUP_NAME.fullmatch(group)
        ):
            raise WireError(f"group is a group name ({endpoints.ID_RULE}), and only for enroll")
        return cls(operation, subject, group, first, modality)


@dataclass(frozen=True)
class VerificationRequest:
    subject: str
    templates: list[bytes] = field(repr=False)
    step_up: str | None = None
    faces: list[bytes] = field(default_factory=list, repr=False)
    liveness: tuple[str, ...] | None = None

    path = endpoints.VERIFICATIONS
    operation = "verify"

    def challenge(self) -> ChallengeRequest:
        return ChallengeRequest(self.operation, self.subject)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"subject": self.subject, **_templates_body(self.templates, self.faces, self.liveness)}
        if self.step_up is not None:
            out["step_up"] = self.step_up
        return out


@dataclass(frozen=True)
class IdentificationRequest:
    templates: list[bytes] = field(repr=False)
    faces: list[bytes] = field(default_factory=list, repr=False)
    liveness: tuple[str, ...] | None = None

    path = endpoints.IDENTIFICATIONS
    operation = "identify"

    def challenge(self) -> ChallengeRequest:
        return ChallengeRequest(self.operation)

    def body(self) -> dict[str, Any]:
        return _templates_body(self.templates, self.faces, self.liveness)


@dataclass(frozen=True)
class EnrollmentRequest:
    subject: str
    templates: list[bytes] = field(repr=False)
    group: str | None = None
    session_token: str | None = field(default=None, repr=False)
    faces: list[bytes] = field(default_factory=list, repr=False)
    liveness: tuple[str, ...] | None = None

    operation = "enroll"

    @property
    def path(self) -> str:
        return endpoints.enrollments_path(self.subject)

    def challenge(self) -> ChallengeRequest:
        return ChallengeRequest(self.operation, self.subject, self.group)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = _templates_body(self.templates, self.faces, self.liveness)
        if self.group is not None:
            out["group"] = self.group
        if self.session_token is not None:
            out["session_token"] = self.session_token
        return out


# ---------------------------------------------------------------- answers
@dataclass(frozen=True)
class Challenge:
    nonce: str = field(repr=False)
    expires_at: str
    ttl_s: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Challenge:
        what = "the challenge answer"
        return cls(_field(data, "nonce", str, what), _field(data, "expires_at", str, what),
                   float(_field(data, "ttl_s", (int, float), what)))

    def json(self) -> dict[str, Any]:
        return {"nonce": self.nonce, "expires_at": self.expires_at, "ttl_s": self.ttl_s}


@dataclass(frozen=True)
class Decision:
    """The verifier's 1:1 decision; ``token`` (accept only) authorises adding templates for minutes."""

    subject: str
    decision: str  # "accept" or "reject"
    score: float
    threshold: float
    token: str | None = field(default=None, repr=False)
    expires_in: float | None = None
    # The factor whose match decided: "finger" or "face" (a face verification finished by a finger step-up was
    # decided by the finger). None from a verifier that does not say.
    modality: str | None = None

    @property
    def accepted(self) -> bool:
        return self.decision == "accept"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decision:
        what = "the verification answer"
        decision = _field(data, "decision", str, what)
        if decision not in ("accept", "reject"):
            raise WireError(f"{what}: decision {decision!r} is neither accept nor reject")
        token = data.get("token")
        if token is not None and not isinstance(token, str):
            raise WireError(f"{what}: 'token' is not a string")
        expires_in = data.get("expires_in")
        if token is not None and not isinstance(expires_in, int | float):
            raise WireError(f"{what}: a token needs its 'expires_in'")
        modality = data.get("modality")
        if modality is not None and modality not in FACTORS:
            raise WireError(f"{what}: modality {modality!r} is not one of {', '.join(FACTORS)}")
        return cls(
            _field(data, "subject", str, what),
            decision,
            float(_field(data, "score", (int, float), what)),
            float(_field(data, "threshold", (int, float), what)),
            token,
            float(expires_in) if token is not None else None,
            modality,
        )

    def public(self) -> dict[str, Any]:
        """What may be shown or logged: everything but the token (``modality`` when the verifier said it)."""
        shown = {"subject": self.subject, "decision": self.decision, "score": self.score,
                 "threshold": self.threshold, "has_token": self.token is not None}
        return {**shown, "modality": self.modality} if self.modality is not None else shown


@dataclass(frozen=True)
class StepUp:
    """RFC 9470: the verifier needs another factor before it decides."""

    step_up: str
    acr_values: str
    reasons: list[str]

    @classmethod
    def from_problem(cls, problem: dict[str, Any]) -> StepUp:
        what = "the step-up answer"
        reasons = problem.get("reasons", [])
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise WireError(f"{what}: 'reasons' is not a list of strings")
        return cls(_field(problem, "step_up", str, what), _field(problem, "acr_values", str, what), reasons)


@dataclass(frozen=True)
class EnrollmentGrant:
    """A ``factor-not-enrolled`` answer's token: it enrolls ``factor`` for the subject, once, and nothing else.

    Sent as an enrollment's ``session_token`` (the verifier tells the two apart by
    what it stored); it is no decision and no session.
    """

    factor: str
    token: str = field(repr=False)
    expires_in: float

    @classmethod
    def from_problem(cls, problem: dict[str, Any]) -> EnrollmentGrant:
        what = "the factor-not-enrolled answer"
        factor = _field(problem, "factor", str, what)
        if factor not in FACTORS:
            raise WireError(f"{what}: factor {factor!r} is not one of {', '.join(FACTORS)}")
        expires_in = float(_field(problem, "expires_in", (int, float), what))
        return cls(factor, _field(problem, "enrollment_token", str, what), expires_in)


@dataclass(frozen=True)
class Candidate:
    subject: str
    score: float


@dataclass(frozen=True)
class Identification:
    """A 1:N answer. ``threshold`` is the one of the search's decade (verifier/ranking.py, reported_threshold): at
    most the threshold the candidates were cut at, never the exact one, which would tell the gallery's size."""

    candidates: list[Candidate]
    threshold: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Identification:
        what = "the identification answer"
        items = _field(data, "candidates", list, what)
        candidates = []
        for item in items:
            if not isinstance(item, dict):
                raise WireError(f"{what}: a candidate is not an object")
            candidates.append(
                Candidate(_field(item, "subject", str, what), float(_field(item, "score", (int, float), what)))
            )
        return cls(candidates, float(_field(data, "threshold", (int, float), what)))

    def json(self) -> dict[str, Any]:
        return {"candidates": [{"subject": c.subject, "score": c.score} for c in self.candidates],
                "threshold": self.threshold}


@dataclass(frozen=True)
class Enrollment:
    subject: str
    group: str
    templates: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Enrollment:
        what = "the enrollment answer"
        return cls(_field(data, "subject", str, what), _field(data, "group", str, what),
                   _field(data, "templates", int, what))

    def json(self) -> dict[str, Any]:
        return {"subject": self.subject, "group": self.group, "templates": self.templates}


@dataclass(frozen=True)
class EventsReceipt:
    """The verifier's receipt for a batch of audit events: what it stored, already held, or set aside.

    The agent deletes a batch from its outbox only on a receipt that accounts for
    every event it sent (:meth:`accounts_for`): an answer that merely parses as
    JSON (a proxy's page, a redirect's body, another service's reply) must not
    make the device forget events no verifier holds.
    """

    accepted: int
    duplicates: int
    anomalies: list[dict[str, Any]]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EventsReceipt:
        what = "the events receipt"
        anomalies = _field(data, "anomalies", list, what)
        if not all(isinstance(a, dict) for a in anomalies):
            raise WireError(f"{what}: an anomaly is not an object")
        receipt = cls(_field(data, "accepted", int, what), _field(data, "duplicates", int, what), anomalies)
        if receipt.accepted < 0 or receipt.duplicates < 0:
            raise WireError(f"{what}: negative counts")
        return receipt

    def accounts_for(self, sent: int) -> bool:
        """Every event sent is stored, a duplicate, or held as an anomaly (a bad hash, a fork).

        An event stored after a gap is both accepted and the cause of a "gap"
        anomaly, so the anomalies may outnumber what is left over.
        """
        held = self.accepted + self.duplicates
        return held <= sent <= held + len(self.anomalies)

    def json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "anomalies": self.anomalies}
