"""The registry of problem types: every refusal of protocol v1, once, for both sides.

The verifier answers an error as RFC 9457 problem details whose ``type`` is
:data:`TYPE_BASE` + a slug from this registry, with the registered status; the
agent reads the slug back and raises the registered error class (named here,
defined in ``agent/errors.py`` under ``VerifierError``). Neither side decides
anything on the English ``title`` or ``detail``: a retry, a prompt or a fix is
chosen by the slug alone.

Each entry's ``fix`` is the default a person is told; the verifier may answer
a more precise one (naming the device id, the wait), never a vaguer one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.endpoints import ID_RULE

TYPE_BASE = "https://capture-agent.invalid/problems/"
CONTENT_TYPE = "application/problem+json"


@dataclass(frozen=True)
class ProblemType:
    slug: str
    status: int
    title: str
    error: str  # the agent's exception class (agent/errors.py), a VerifierError
    fix: str

    @property
    def type_uri(self) -> str:
        return TYPE_BASE + self.slug


_ENTRIES = (
    # -- the request itself is not the protocol (a bug or an attack, never a person's doing)
    ProblemType("bad-json", 400, "Body is not protocol JSON", "BadRequestError",
                "send one JSON object, no duplicate keys, nested at most 32 levels"),
    ProblemType("bad-csr", 400, "Bad certificate request", "BadRequestError",
                "send base64 of the DER PKCS#10 request (RFC 7030 section 4.2); make a new request"),
    ProblemType("bad-subject", 400, "Bad subject id", "BadRequestError",
                f"use {ID_RULE}"),
    ProblemType("bad-group", 400, "Bad group name", "BadRequestError",
                f"use {ID_RULE}"),
    ProblemType("bad-challenge", 400, "Bad challenge request", "BadRequestError",
                'send {"operation": "enroll" | "verify" | "identify", "subject": "<id>"} (no subject to identify)'),
    ProblemType("key-reused", 400, "Key reused", "BadRequestError",
                "generate a new EC P-256 key for the renewal"),
    ProblemType("idempotency-key-required", 400, "Idempotency-Key required", "BadRequestError",
                "send an Idempotency-Key header: a fresh random key per request, the same key on retries"),
    ProblemType("disconnected", 400, "Client went away", "BadRequestError", "retry"),
    ProblemType("not-found", 404, "Not found", "BadRequestError", "check the URL and the protocol version"),
    ProblemType("method-not-allowed", 405, "Method not allowed", "BadRequestError",
                "see the protocol table in DESIGN.md"),
    ProblemType("too-large", 413, "Request too large", "BadRequestError", "send a smaller request"),
    ProblemType("idempotency-key-reused", 422, "Idempotency-Key reused", "BadRequestError",
                "use a fresh key for each new request"),
    ProblemType("bad-template", 422, "Malformed template", "BadTemplateError",
                "send the ISO/IEC 19794-2:2005 record the agent's extractor made; capture again"),
    ProblemType("bad-events", 422, "Malformed audit events", "BadRequestError",
                "send events as the agent's outbox makes them (DESIGN.md, audit trail)"),
    ProblemType("too-many-views", 422, "Too many finger views", "BadTemplateError",
                "send fewer views per request (a capture is one view)"),
    ProblemType("body-timeout", 408, "Request body too slow", "BadRequestError",
                "send the whole body at once; check the network"),
    # -- who is asking
    ProblemType("client-certificate-required", 401, "Client certificate required", "DeviceNotAuthorisedError",
                "provision the device (`capture-agent provision`) and use its certificate"),
    ProblemType("device-not-authorised", 403, "Device not authorised", "DeviceNotAuthorisedError",
                "re-provision the device with a new token; ask the operator if it was revoked"),
    ProblemType("device-revoked", 403, "Device revoked", "DeviceNotAuthorisedError",
                "issue a token for a new device id"),
    ProblemType("certificate-expired", 403, "Client certificate expired", "DeviceNotAuthorisedError",
                "re-provision the device with a new token (`capture-agent provision`; `capture-agent doctor` "
                "says why)"),
    ProblemType("certificate-not-yet-valid", 403, "Client certificate not yet valid", "DeviceNotAuthorisedError",
                "set the device's clock right (NTP)"),
    ProblemType("certificate-superseded", 403, "Certificate already renewed", "DeviceNotAuthorisedError",
                "renew with the device's newest certificate (the agent uses it after a renewal)"),
    ProblemType("renewal-rate-limited", 429, "Too many renewals", "RateLimitedError",
                "renew at about two thirds of the certificate's life, not in a loop"),
    ProblemType("token-required", 401, "Bootstrap token required", "BootstrapTokenError",
                "pass the token printed by `capture-verifier token new` to `capture-agent provision`"),
    ProblemType("bad-token", 401, "Bootstrap token refused", "BootstrapTokenError",
                "ask for a new token (`capture-verifier token new`)"),
    ProblemType("bad-signature", 401, "Device signature refused", "BadSignatureError",
                "sign the request body with the device key (protocol.signing); check nothing rewrites the body"),
    # -- the challenge nonce: distinct, so the agent retries only what a retry can fix
    ProblemType("nonce-expired", 409, "Challenge nonce expired", "NonceExpiredError",
                "ask for a fresh challenge and send the request again (the agent does this once by itself)"),
    ProblemType("nonce-used", 409, "Challenge nonce already used", "NonceUsedError",
                "ask for a fresh challenge for every request; never resend one (a replayed request?)"),
    ProblemType("nonce-unknown", 409, "Challenge nonce unknown", "NonceUnknownError",
                "ask this verifier for a challenge with this device's certificate; never reuse one from elsewhere"),
    # -- what this device may do
    ProblemType("operation-not-allowed", 403, "Operation not allowed", "OperationNotAllowedError",
                "ask the operator to allow it: capture-verifier device allow DEVICE --operations ..."),
    ProblemType("group-not-allowed", 403, "Subject group not allowed", "GroupNotAllowedError",
                "ask the operator to allow this device the subject's group: "
                "capture-verifier device allow DEVICE --groups GROUP"),
    ProblemType("device-rate-limited", 429, "Too many requests from this device", "RateLimitedError",
                "slow down; a kiosk should never need this rate (a stuck loop? a stolen device?)"),
    ProblemType("device-work-limited", 429, "Too much matching work from this device", "RateLimitedError",
                "send fewer views per request, or fewer requests; a kiosk never needs this much"),
    # -- the subject
    ProblemType("unknown-subject", 404, "Unknown subject", "UnknownSubjectError",
                "enroll the subject first: capture-agent enroll --subject ID"),
    ProblemType("subject-in-other-group", 409, "Subject is in another group", "SubjectInOtherGroupError",
                "enroll without --group (the subject keeps its group), or ask the operator: "
                "capture-verifier subject group ID GROUP"),
    ProblemType("verification-required", 401, "Subject already enrolled", "VerificationRequiredError",
                "add templates after the person verifies: capture-agent enroll --subject ID --add"),
    ProblemType("session-token-refused", 401, "Session token refused", "SessionTokenRefusedError",
                "verify the subject again on this device (capture-agent enroll --subject ID --add): "
                "a token lasts minutes and is bound to its device"),
    ProblemType("not-the-verified-person", 403, "Templates are not the subject's", "SubjectError",
                "add captures of the verified person's enrolled fingers only; "
                "a new finger needs a new enrollment by the operator"),
    ProblemType("duplicate-identity", 409, "Already enrolled as another subject", "SubjectError",
                "verify the person under their existing id; ask the operator if the match is wrong"),
    ProblemType("subject-id-taken", 409, "Subject id taken but for letter case", "SubjectError",
                "enroll under another id, or under the enrolled one with the person's verification: "
                "ids that differ only in letter case read as one person"),
    ProblemType("subject-full", 409, "The subject holds the most templates kept per person", "SubjectError",
                "verify instead of adding: the person is enrolled; to start again, ask the operator "
                "(capture-verifier subject remove ID, then a first enrollment)"),
    ProblemType("factor-not-enrolled", 403, "A factor the rule needs is not enrolled", "FactorNotEnrolledError",
                "enroll the missing factor with the answer's enrollment_token: "
                "capture-agent enroll [--face] --subject ID --add"),
    ProblemType("face-not-enrolled", 404, "No face enrolled for the subject", "UnknownSubjectError",
                "enroll a face after the person verifies: capture-agent enroll --face --subject ID --add"),
    ProblemType("liveness-mismatch", 400, "Liveness challenge is not the nonce's", "BadRequestError",
                "run the head-turn challenge derived from this request's nonce (biometrics.face.challenge_for)"),
    ProblemType("subject-rate-limited", 429, "Too many verifications of this subject", "RateLimitedError",
                "wait; if nobody at your sites claims this subject so often, someone is guessing"),
    ProblemType("subject-locked", 429, "Subject locked out", "SubjectLockedError",
                "wait, or verify another way; each further lockout doubles"),
    # -- match-on-sensor assertions (protocol.sensor)
    ProblemType("sensor-assertion-refused", 403, "Sensor assertions refused for this device", "NotAllowedError",
                "verify with a fingerprint image reader, or ask the operator: "
                "capture-verifier device allow ID --sensor-assertions step-up|accept"),
    ProblemType("sensor-enrollment-unknown", 404, "Not enrolled on this sensor", "UnknownSubjectError",
                "enroll the subject on this reader first: capture-agent enroll --subject ID (on the sensor)"),
    # -- step-up (RFC 9470): an answer the agent turns into a prompt, not a failure
    ProblemType("insufficient-user-authentication", 401, "Another factor needed", "StepUpRequiredError",
                "capture another finger of the same person and send it with this step_up id"),
    ProblemType("step-up-unknown", 409, "Unknown step-up", "StepUpUnknownError", "start the verification again"),
    # -- the verifier's settings against what the device may search (verifier/ranking.py): an installer's fix
    ProblemType("identification-unreachable", 422, "Identification past its capacity", "IdentificationUnreachableError",
                "raise identify_fpir, or the modality's own finger_identify_fpir / face_identify_fpir where the "
                "verifier sets one (fewer comparisons per identification then suffice), narrow the device's groups "
                "(capture-verifier device allow --groups), send fewer views per identification, or verify a claimed "
                "subject (1:1) instead"),
    # -- the verifier itself
    ProblemType("internal", 500, "Internal error", "VerifierInternalError",
                "retry; if it persists, see the verifier's log"),
    ProblemType("storage-unavailable", 503, "Verifier cannot store", "VerifierBusyError",
                "retry after the Retry-After seconds (the agent does so by itself); if it persists, the "
                "verifier's operator must free its disk (its log says why: storage_refused)"),
    ProblemType("matching-busy", 503, "Verifier busy", "VerifierBusyError",
                "retry after the Retry-After seconds (the agent does so by itself)"),
    ProblemType("connection-busy", 503, "Too many request bodies at once", "VerifierBusyError",
                "send fewer requests at once: wait for the answers of those in flight before sending more bodies "
                "on the connection, then retry after the Retry-After seconds (the agent does so by itself)"),
    ProblemType("matching-over-budget", 503, "Matching over budget", "VerifierBusyError",
                "send fewer finger views per request, or retry after the Retry-After seconds"),
)

REGISTRY: dict[str, ProblemType] = {entry.slug: entry for entry in _ENTRIES}
if len(REGISTRY) != len(_ENTRIES):  # pragma: no cover - a registry edit that repeats a slug
    raise RuntimeError("protocol.problems: a slug is registered twice")


def problem_type(slug: str) -> ProblemType:
    """The registered type of ``slug``; KeyError for a slug that is not part of the protocol."""
    return REGISTRY[slug]


def slug_of(document: dict[str, Any]) -> str:
    """The slug of a problem document's ``type`` ("" when it is not one of ours)."""
    uri = document.get("type")
    if isinstance(uri, str) and uri.startswith(TYPE_BASE):
        return uri[len(TYPE_BASE) :]
    return ""


def problem_document(slug: str, detail: str, fix: str = "", **extra: Any) -> dict[str, Any]:
    """The RFC 9457 document of a registered problem (``fix`` defaults to the registry's)."""
    entry = REGISTRY[slug]
    return {
        "type": entry.type_uri,
        "title": entry.title,
        "status": entry.status,
        "detail": detail,
        "fix": fix or entry.fix,
        **extra,
    }
