"""Match-on-sensor readers: sensor enrollments, device-signed assertions, and the policy for them.

A match-on-sensor reader compares the finger on the sensor; the verifier gets
only the device's signed word that it matched (:mod:`protocol.sensor`). That
is a weaker assurance than a template the verifier matched itself: whoever
holds the device key can assert anything. So each device has a policy for
assertions, set by the operator (``capture-verifier device allow ID
--sensor-assertions accept|step-up|refuse``):

- ``accept``: a match is a decision (a subject marked high-risk still steps up),
  doing what every decision does (:meth:`BiometricRoutes.decided`: lockout
  count, the session token; not the device's first use), but its session token
  adds only another print on a sensor, never finger templates or a face
  (:meth:`BiometricRoutes.check_portable_add`: the device's word must not make
  a portable identity; a subject enrolled only on sensors gets one portable
  enrollment with the operator's grant, ``capture-verifier subject portable``);
- ``step_up`` (the default): RFC 9470 401 ``insufficient_user_authentication``;
  a fingerprint template of the same subject, sent to ``/v1/verifications``
  with the step-up id, is matched by the verifier and decides;
- ``refuse``: 403 ``sensor-assertion-refused``.

Every outcome is an audit event (device, subject, reader, outcome, reason;
never a print). The gate is the biometric routes' own (access rule, rate,
signature over the canonical bytes, single-use nonce), then the same subject
rate and lockouts as a template the verifier matches.

Factor rules (``capture-verifier subject require S --factors finger,face``,
:class:`verifier.faces.FactorRules`): a sensor's match is the *finger* factor,
never the face, and only from a device whose policy is not ``refuse``.

- Finger first: a match of a subject whose rule needs a face is answered with
  a step-up asking for the face (``acr_values="face"``). Under ``step_up`` the
  face, which the verifier matches itself, is also the verifier-matched second
  factor the policy wants, so it decides; no template is asked on top.
- Face first: the face verification's step-up asking for a finger
  (``acr_values="finger"``) may be answered by an assertion carrying its
  ``step_up`` id (a kiosk with a sensor and no image reader). It decides under
  ``accept`` and ``step_up`` alike (the face was matched by the verifier); it
  answers no other step-up: not the face's, not a second finger's (a sensor
  cannot show the finger differs), not its own (that one asks for a template).
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any, TypeVar

import structlog

from protocol import endpoints
from protocol.face_template import ACR_FACE, ACR_FINGER, FACE, FINGER
from protocol.sensor import (
    ACR_AFTER_SENSOR,
    ASSURANCE,
    DEFAULT_POLICY,
    POLICIES,
    SensorAssertion,
    SensorEnrollmentRequest,
)
from verifier.biometric import BiometricRoutes, locked_out
from verifier.content import message_of
from verifier.faces import FACE_REQUIRED
from verifier.http import Answer, Request, Route, json_answer
from verifier.problems import CONTENT_TYPE as PROBLEM_CONTENT_TYPE
from verifier.problems import Problem
from verifier.sessions import SENSOR_SESSION, SESSION

log = structlog.get_logger()
_Message = TypeVar("_Message", SensorEnrollmentRequest, SensorAssertion)

SENSOR_STEP_UP_REASON = "sensor_assertion"

SCHEMA = """
CREATE TABLE IF NOT EXISTS sensor_policy (
    device_id     TEXT PRIMARY KEY,
    policy        TEXT NOT NULL
);
"""


class SensorPolicy:
    """Per device: accept, step_up or refuse sensor assertions (default step_up)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.executescript(SCHEMA)

    def set(self, device_id: str, policy: str) -> None:
        policy = policy.replace("-", "_")
        if policy not in POLICIES:
            raise ValueError(f"sensor assertion policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.conn.execute(
            "INSERT INTO sensor_policy (device_id, policy) VALUES (?, ?) "
            "ON CONFLICT(device_id) DO UPDATE SET policy = excluded.policy",
            (device_id, policy),
        )

    def of(self, device_id: str) -> str:
        row = self.conn.execute("SELECT policy FROM sensor_policy WHERE device_id = ?", (device_id,)).fetchone()
        return row[0] if row else DEFAULT_POLICY


class SensorRoutes:
    """``/v1/sensor/enrollments`` and ``/v1/sensor/verifications``, through the biometric routes' gate."""

    def __init__(self, conn: sqlite3.Connection, biometric: BiometricRoutes) -> None:
        self.conn = conn
        self.bio = biometric
        self.policy = SensorPolicy(conn)

    def routes(self) -> dict[tuple[str, str], Route]:
        return {
            ("POST", endpoints.SENSOR_ENROLLMENTS): Route(self.enroll, needs_client_cert=True),
            ("POST", endpoints.SENSOR_VERIFICATIONS): Route(self.verify, needs_client_cert=True),
        }

    def _parsed(self, request: Request, operation: str, message: type[_Message]) -> _Message:
        """The signed body as ``message``, through the biometric routes' one parse path (audited when malformed)."""
        _, parsed = self.bio.signed_content(request, operation, functools.partial(message_of, message=message))
        return parsed

    # ---------------------------------------------------------------- enrollment
    def enroll(self, request: Request) -> Answer:
        assert request.device is not None
        device_id = request.device.device_id
        asked = self._parsed(request, "enroll", SensorEnrollmentRequest)
        self.bio.sync_removals()  # a removed subject's pending step-ups gone before its id can be enrolled again
        subject = asked.subject
        recorded = self.bio.subjects.recorded(subject)
        group = self.bio.enrollment_group(request, subject, asked.group)
        self.bio.check_group(request, subject, group)
        # An enrolled subject (templates, a face, or a print on any sensor) gains a print only after verifying.
        enrolled = self.bio.is_enrolled(subject)
        if enrolled:
            self.bio.spend_session_token(request, subject, asked.session_token)
        else:
            self.bio.check_id_free(request, subject)
        if recorded is None:
            self.bio.subjects.assign(subject, group)
        self.bio.sensor_prints.record(subject, device_id, asked.reader.driver, asked.reader.device, asked.print_hash)
        log.info(
            "sensor_enrollment",
            audit=True,
            device_id=device_id,
            subject=subject,
            group=group,
            reader=f"{asked.reader.driver}/{asked.reader.device}",
            with_session_token=enrolled,
        )
        answer = {"subject": subject, "group": group, "reader": asked.reader.json(), "assurance": ASSURANCE}
        return json_answer(201, answer)

    # ---------------------------------------------------------------- assertions
    def _audit(self, device_id: str, assertion: SensorAssertion, outcome: str, reason: str, **fields: Any) -> None:
        log.info(
            "verification_attempt",
            audit=True,
            device_id=device_id,
            subject=assertion.subject,
            outcome=outcome,
            reason=reason,
            assurance=ASSURANCE,
            reader=f"{assertion.reader.driver}/{assertion.reader.device}",
            sensor_result=assertion.result,
            **fields,
        )

    def verify(self, request: Request) -> Answer:
        assert request.device is not None
        device_id = request.device.device_id
        assertion = self._parsed(request, "verify", SensorAssertion)
        # A step-up it answers must be of a subject not removed since: the removal drops its pending step-ups
        # (their first capture is the removed person's), also when the id was enrolled again on this sensor.
        self.bio.sync_removals()
        subject = assertion.subject
        # Another group's subject reads as one with no print here (BiometricRoutes.check_visible says why).
        self.bio.check_visible(request, subject, _sensor_unknown(device_id, assertion))
        known = self.bio.sensor_prints.print_hash(subject, device_id, assertion.reader.driver, assertion.reader.device)
        if known != assertion.print_hash:
            self._audit(device_id, assertion, "unknown_subject", "no such print enrolled on this device's sensor")
            raise _sensor_unknown(device_id, assertion)
        self.bio.check_subject_rate(device_id, subject)
        locked = self.bio.lockouts.locked_for(device_id, subject)
        if locked > 0:
            self._audit(device_id, assertion, "locked_out", "too many failures", locked_for_s=round(locked, 1))
            raise locked_out(subject, locked)
        policy = self.policy.of(device_id)
        if policy == "refuse":  # before any step-up is looked at: a refused device's word satisfies nothing
            self._audit(device_id, assertion, "refused", "sensor assertions refused for this device", policy=policy,
                        step_up_answered=assertion.step_up is not None)
            raise Problem(
                "sensor-assertion-refused",
                f"device {device_id} may not verify with match-on-sensor assertions",
                "verify with a fingerprint image reader, or ask the operator: "
                f"capture-verifier device allow {device_id} --sensor-assertions step-up",
            )
        if assertion.step_up is not None:
            return self._answer_step_up(device_id, assertion, policy)
        if not assertion.matched:
            self._audit(device_id, assertion, "reject", "the sensor did not match", policy=policy)
            return self._decision(device_id, subject, "reject")
        reasons = [SENSOR_STEP_UP_REASON] if policy == "step_up" else []
        risky = self.bio.stepup.reasons(device_id, subject, 1.0, 0.0, 0)
        reasons += [r for r in risky if r == "high_risk_subject"]
        if FACE in self.bio.faces.required(subject):
            # The rule's face, matched by the verifier, is also the second factor a step_up policy wants.
            return self._ask_step_up(device_id, assertion, [FACE_REQUIRED, *reasons], policy, ACR_FACE)
        if reasons:
            return self._ask_step_up(device_id, assertion, reasons, policy, ACR_AFTER_SENSOR)
        self._audit(device_id, assertion, "accept", "the sensor matched; policy accepts sensor assertions",
                    policy=policy)
        return self._decision(device_id, subject, "accept", first_use_done=False, scope=SENSOR_SESSION)

    def _answer_step_up(self, device_id: str, assertion: SensorAssertion, policy: str) -> Answer:
        """The finger a face verification's step-up asks for (``acr_values="finger"``), asserted by the sensor."""
        subject, step_id = assertion.subject, str(assertion.step_up)
        pending = self.bio.stepup.take(step_id, device_id, subject)
        if pending is None or pending.acr != ACR_FINGER:  # only a face's step-up asks a finger
            if pending is not None:  # the step-up asks for something else (a face, a template): it stays for that
                self.bio.stepup.give_back(step_id, pending)
            self._audit(device_id, assertion, "step_up_unknown", "no pending step-up asking this device for a finger",
                        policy=policy, step_up=",".join(pending.reasons) if pending is not None else "")
            raise Problem("step-up-unknown", "no pending step-up asking this device for a finger",
                          "start the verification again")
        decision = "accept" if assertion.matched else "reject"
        self._audit(device_id, assertion, decision,
                    "the sensor matched the finger the factor rule asks for" if assertion.matched
                    else "the sensor did not match", policy=policy, step_up=",".join(pending.reasons))
        return self._decision(device_id, subject, decision)

    def _decision(self, device_id: str, subject: str, decision: str, first_use_done: bool = True,
                  scope: str = SESSION) -> Answer:
        """The sensor's decision, with what every decision does (lockout, first use, token: ``bio.decided``).

        A direct accept passes ``first_use_done=False``: the sensor's own word is not
        the verifier-checked second finger a device's first use asks for; and
        ``scope=SENSOR_SESSION``: its token adds another print on a sensor, never
        finger templates or a face (BiometricRoutes.check_portable_add says why, and
        the operator's grant that lets a subject enrolled only on sensors get one).
        An accept of a face's step-up (the face was the verifier's match) is a full session.
        """
        answer: dict[str, Any] = {
            "subject": subject,
            "decision": decision,
            "score": 1.0 if decision == "accept" else 0.0,
            "threshold": 1.0,
            "modality": FINGER,  # a sensor's match is the finger factor
            "assurance": ASSURANCE,
        }
        answer.update(self.bio.decided(device_id, subject, decision == "accept", first_use_done, scope))
        return json_answer(200, answer)

    def _ask_step_up(self, device_id: str, assertion: SensorAssertion, reasons: list[str], policy: str,
                     acr: str) -> Answer:
        """RFC 9470 401: a template (``fingerprint_template``) or a face (``face``) the verifier matches itself."""
        # No first template to differ from.
        step = self.bio.stepup.open(device_id, assertion.subject, [], reasons, acr)
        self._audit(device_id, assertion, "step_up", ",".join(reasons), policy=policy, acr_values=acr)
        if acr == ACR_FACE:
            what, fix = "a face", "capture the same person's face and send it with this step_up id"
        else:
            what = "a second factor"
            fix = "capture a fingerprint on an image reader and send its template with this step_up id"
        problem = Problem(
            "insufficient-user-authentication",
            f"a sensor's match needs {what} ({', '.join(reasons)})",
            fix,
            extra=(("step_up", step), ("acr_values", acr), ("reasons", reasons)),
        )
        challenge = (
            'Bearer error="insufficient_user_authentication", '
            f'error_description="{", ".join(reasons)}", acr_values="{acr}"'
        )
        return Answer(401, PROBLEM_CONTENT_TYPE, problem.body(), ((b"www-authenticate", challenge.encode()),))


def _sensor_unknown(device_id: str, assertion: SensorAssertion) -> Problem:
    """404 ``sensor-enrollment-unknown``: no such print of the subject on this reader (or none the device may see)."""
    return Problem(
        "sensor-enrollment-unknown",
        f"subject {assertion.subject!r} is not enrolled with this print on reader "
        f"{assertion.reader.driver}/{assertion.reader.device} of device {device_id}",
        f"enroll the subject on this reader first: capture-agent enroll --subject {assertion.subject}",
    )
