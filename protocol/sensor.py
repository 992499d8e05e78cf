"""Match-on-sensor readers in protocol v1: the enrollment notice and the device-signed assertion.

A match-on-sensor reader (synaptics, goodixmoc, ...) never hands over an image
or a template: the sensor compares the finger with a print it enrolled, and
says yes or no. The verifier cannot match anything itself, so what the device
sends is an *assertion*: "the sensor of reader R matched (or did not match) the
print enrolled for subject S", signed by the device key over the canonical
request bytes with the verifier's single-use nonce, like every biometric
request (:mod:`protocol.signing`). It is a weaker assurance than a template the
verifier matched itself (a compromised agent can assert anything), so the
verifier applies a per-device policy: accept, step up, or refuse.

Enrollment on such a reader registers "subject S is enrolled on reader R" with
the print's reference: ``print_hash``, the SHA-256 of the sealed print's id
(never the print itself; no template leaves the sensor). A later assertion must
name the same reader and print hash.

    POST /v1/sensor/enrollments    {subject, reader: {driver, device}, print_hash,
                                    group?, session_token?, nonce, signature}
                                   -> 201 {subject, group, reader, assurance}
    POST /v1/sensor/verifications  {subject, reader, print_hash, result: "match" | "no_match",
                                    step_up?, nonce, signature}
                                   -> 200 a Decision (score 1 or 0, threshold 1, assurance);
                                      401 step-up (RFC 9470), 403 sensor-assertion-refused

Both need a nonce: the agent asks a plain one (an empty challenge body) since
the sensor enrollment names no templates for the challenge checks.

An assertion may answer a step-up (``step_up``: the id of an RFC 9470 401):
the one a face verification gets when the subject's factor rule needs a
finger too (``acr_values="finger"``). Nothing else: a sensor cannot show that a
second finger differs from the first, and its own step-up asks for a template.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from protocol import endpoints
from protocol.wire import WireError

ASSURANCE = "match-on-sensor"
RESULTS = ("match", "no_match")
POLICIES = ("accept", "step_up", "refuse")  # the verifier's per-device policy for assertions
DEFAULT_POLICY = "step_up"
ACR_AFTER_SENSOR = "fingerprint_template"  # what satisfies the step-up: a template the verifier matches
PRINT_HASH = re.compile(r"[0-9a-f]{64}")
STEP_UP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # verifier.stepup ids are token_urlsafe(16)
READER_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


def print_hash(print_id: str) -> str:
    """The reference to a sealed print the verifier may know: SHA-256 of its id, hex."""
    return hashlib.sha256(f"capture-agent sensor print\0{print_id}".encode()).hexdigest()


@dataclass(frozen=True)
class ReaderIdentity:
    """Which sensor: the libfprint driver and the device's id on this agent (e.g. ``virtual_device``, ``usb0``)."""

    driver: str
    device: str

    def json(self) -> dict[str, str]:
        return {"driver": self.driver, "device": self.device}

    @classmethod
    def from_json(cls, value: Any) -> ReaderIdentity:
        if not isinstance(value, dict) or set(value) != {"driver", "device"}:
            raise WireError('reader must be {"driver": ..., "device": ...}')
        for part in ("driver", "device"):
            if not isinstance(value[part], str) or not READER_PART.fullmatch(value[part]):
                raise WireError(f"reader.{part} must be 1 to 128 letters, digits, '.', '_', ':', '@' or '-'")
        return cls(value["driver"], value["device"])


class PlainChallenge:
    """A nonce with no early checks (an empty challenge body): what sensor requests sign over."""

    path = endpoints.CHALLENGES

    def body(self) -> dict[str, Any]:
        return {}


def _subject(body: dict[str, Any]) -> str:
    subject = body.get("subject")
    if not isinstance(subject, str) or not endpoints.SUBJECT_ID.fullmatch(subject):
        raise WireError(f"subject must be a subject id ({endpoints.ID_RULE})")
    return subject


def _print_hash(body: dict[str, Any]) -> str:
    value = body.get("print_hash")
    if not isinstance(value, str) or not PRINT_HASH.fullmatch(value):
        raise WireError("print_hash must be 64 lowercase hex digits (SHA-256 of the sealed print's id)")
    return value


def _no_unknown(body: dict[str, Any], known: set[str], what: str) -> None:
    unknown = set(body) - known - {"nonce", "signature"}
    if unknown:
        raise WireError(f"unknown fields {sorted(unknown)} in {what}")


@dataclass(frozen=True)
class SensorEnrollmentRequest:
    """Subject S is enrolled on this device's sensor (reader R, print hash H)."""

    subject: str
    reader: ReaderIdentity
    print_hash: str
    group: str | None = None
    session_token: str | None = field(default=None, repr=False)

    path = endpoints.SENSOR_ENROLLMENTS
    operation = "enroll"

    def challenge(self) -> PlainChallenge:
        return PlainChallenge()

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"subject": self.subject, "reader": self.reader.json(), "print_hash": self.print_hash}
        if self.group is not None:
            out["group"] = self.group
        if self.session_token is not None:
            out["session_token"] = self.session_token
        return out

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> SensorEnrollmentRequest:
        _no_unknown(body, {"subject", "reader", "print_hash", "group", "session_token"}, "a sensor enrollment")
        group = body.get("group")
        if group is not None and (not isinstance(group, str) or not endpoints.GROUP_NAME.fullmatch(group)):
            raise WireError(f"group must be a group name ({endpoints.ID_RULE})")
        token = body.get("session_token")
        if token is not None and not isinstance(token, str):
            raise WireError("session_token must be a string")
        return cls(_subject(body), ReaderIdentity.from_json(body.get("reader")), _print_hash(body), group, token)


@dataclass(frozen=True)
class SensorAssertion:
    """The device's signed word: the sensor matched (or not) the print enrolled for ``subject``."""

    subject: str
    reader: ReaderIdentity
    print_hash: str
    result: str  # "match" or "no_match"
    step_up: str | None = None  # the id of the step-up this assertion answers (a finger the policy asks for)

    path = endpoints.SENSOR_VERIFICATIONS
    operation = "verify"

    def challenge(self) -> PlainChallenge:
        return PlainChallenge()

    @property
    def matched(self) -> bool:
        return self.result == "match"

    def body(self) -> dict[str, Any]:
        out = {"subject": self.subject, "reader": self.reader.json(), "print_hash": self.print_hash,
               "result": self.result}
        if self.step_up is not None:
            out["step_up"] = self.step_up
        return out

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> SensorAssertion:
        _no_unknown(body, {"subject", "reader", "print_hash", "result", "step_up"}, "a sensor assertion")
        result = body.get("result")
        if result not in RESULTS:
            raise WireError(f"result must be one of {', '.join(RESULTS)}")
        step_up = body.get("step_up")
        if step_up is not None and (not isinstance(step_up, str) or not STEP_UP_ID.fullmatch(step_up)):
            raise WireError("step_up must be the id of the verifier's step-up answer (1 to 64 URL-safe characters)")
        return cls(_subject(body), ReaderIdentity.from_json(body.get("reader")), _print_hash(body), str(result),
                   step_up)


@dataclass(frozen=True)
class SensorEnrollment:
    """The verifier's answer to a sensor enrollment."""

    subject: str
    group: str
    reader: ReaderIdentity

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SensorEnrollment:
        subject, group = data.get("subject"), data.get("group")
        if not isinstance(subject, str) or not isinstance(group, str):
            raise WireError("the sensor enrollment answer: 'subject' or 'group' is missing or not a string")
        return cls(subject, group, ReaderIdentity.from_json(data.get("reader")))

    def json(self) -> dict[str, Any]:
        return {"subject": self.subject, "group": self.group, "reader": self.reader.json(), "assurance": ASSURANCE}
