"""The routes that carry templates: challenges, enrollments, verifications, identifications.

Every biometric request passes the same gate (:meth:`BiometricRoutes._checked`):
the device's access rule for the operation, the device's rate, the signature by
the device key over the canonical request, and the nonce (single use, short
life). Then the subject's group against the device's allowed groups, then the
operation. Every outcome, accepted or refused, is an audit event naming the
device, the subject and the reason; a template never appears in one.

The challenge itself names the operation and the subject (protocol.messages.
ChallengeRequest), so what needs no finger (the operation, the subject's group,
an unknown subject, a lockout) is refused before the person touches the sensor.
Answers never name another subject's group; the audit event does.

Matching: the request's templates become cylinders once per request; a
subject's enrolled templates are decrypted, built and packed once and kept
until the subject enrolls more. ``Server-Timing: match`` reports the time spent
building the probe and scoring, the part of the decision the device cannot see.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from typing import Any

import structlog

from biometrics.fingerprint import GalleryIndex, TemplateError, mcc_match, threshold_for_fmr
from biometrics.fingerprint.cylinders import Cylinders
from biometrics.fingerprint.iso19794_2 import decode
from biometrics.fingerprint.matcher import cylinders_of
from protocol import endpoints
from protocol.messages import ChallengeRequest
from protocol.signing import SignatureError, check_signature
from protocol.templates import TemplateWireError, minutiae_problem, records_of
from protocol.wire import WireError
from verifier.challenges import NONCE_MARGIN_S, Challenges, NonceError
from verifier.enrollments import EnrollmentStore, load_or_create_key
from verifier.http import Answer, Request, Route, json_answer, json_object
from verifier.policy import AccessRules, Lockouts, RateLimit
from verifier.problems import CONTENT_TYPE as PROBLEM_CONTENT_TYPE
from verifier.problems import Problem
from verifier.sessions import SessionTokens
from verifier.settings import VerifierSettings
from verifier.stepup import ACR_SECOND_FINGER, StepUpPolicy
from verifier.subjects import DEFAULT_GROUP, SubjectGroups

log = structlog.get_logger()

IDENTIFY_TOP_K = 10
SUBJECT_ID = endpoints.SUBJECT_ID
ENROLLMENTS_PATH = endpoints.ENROLLMENTS


class BiometricRoutes:
    def __init__(self, conn: sqlite3.Connection, settings: VerifierSettings) -> None:
        self.challenges = Challenges(conn, ttl_s=settings.nonce_ttl_s)
        self.enrollments = EnrollmentStore(conn, load_or_create_key(settings.enrollment_key))
        self.threshold = threshold_for_fmr(settings.target_fmr)
        self.rules = AccessRules(conn)
        self.subjects = SubjectGroups(conn)
        self.lockouts = Lockouts(conn, settings.max_failures, settings.lockout_base_s, settings.lockout_devices)
        self.device_rate = RateLimit(settings.device_requests_per_min, settings.lockout_base_s)
        self.challenge_rate = RateLimit(settings.device_challenges_per_min, settings.lockout_base_s)
        # Claims of a subject: per (device, subject), and across devices a bound one device cannot reach alone.
        self.subject_rate = RateLimit(settings.subject_requests_per_min, settings.lockout_base_s)
        self.subject_rate_all = RateLimit(
            settings.subject_requests_per_min * settings.lockout_devices, settings.lockout_base_s
        )
        self.stepup = StepUpPolicy(conn, first_use=settings.step_up_first_use)
        self.sessions = SessionTokens(conn, settings.session_ttl_s)
        self._gallery: GalleryIndex | None = None
        self._packed: dict[str, mcc_match.Packed | None] = {}  # per subject; dropped when it enrolls more
        self._match_ms = 0.0  # of the request being handled (handlers run one at a time)

    def routes(self) -> dict[tuple[str, str], Route]:
        return {
            # A nonce's answer is kept for repeats only as long as the nonce itself: no row outlives it.
            ("POST", endpoints.CHALLENGES): Route(
                self.new_challenge, needs_client_cert=True, retention_s=self.challenges.ttl_s + NONCE_MARGIN_S
            ),
            ("POST", ENROLLMENTS_PATH): Route(self.enroll, needs_client_cert=True),
            ("POST", endpoints.VERIFICATIONS): Route(self.verify, needs_client_cert=True),
            ("POST", endpoints.IDENTIFICATIONS): Route(self.identify, needs_client_cert=True),
        }

    # ---------------------------------------------------------------- the gate
    @staticmethod
    def _refused(request: Request, problem: Problem, reason: str, **fields: Any) -> Problem:
        """A refused biometric request: audited (invariant 5), then answered as a problem."""
        assert request.device is not None
        log.warning(
            "biometric_request_refused",
            audit=True,
            device_id=request.device.device_id,
            path=request.path,
            status=problem.status,
            reason=reason,
            **fields,
        )
        return problem

    def _check_operation(self, request: Request, operation: str) -> None:
        """403 (audited) unless the device's access rule allows ``operation``."""
        assert request.device is not None
        device_id = request.device.device_id
        if not self.rules.allows(device_id, operation):
            raise self._refused(
                request,
                Problem(
                    "operation-not-allowed",
                    f"device {device_id} may not {operation}",
                    f"ask the operator to allow it: capture-verifier device allow {device_id} --operations ...",
                ),
                "operation not allowed for this device",
            )

    def _checked(self, request: Request, operation: str) -> tuple[dict[str, Any], list[bytes]]:
        """Access rule, rate, signature, nonce (single use), templates: what every biometric request passes."""
        assert request.device is not None and request.client_cert is not None
        device_id = request.device.device_id
        self._check_operation(request, operation)
        body = json_object(request)
        wait = self.device_rate.check(device_id)
        if wait > 0:
            raise self._refused(
                request,
                Problem(
                    "device-rate-limited",
                    f"device {device_id} is over its rate; wait {wait:.0f} s",
                    "slow down; a kiosk should never need this rate (a stuck loop? a stolen device?)",
                    headers=((b"retry-after", str(int(wait) + 1).encode()),),
                ),
                "device rate limit",
            )
        try:
            check_signature(request.client_cert.public_key(), request.method, request.path, body)
        except SignatureError as exc:
            raise self._refused(
                request,
                Problem("bad-signature", str(exc)),
                str(exc),
            ) from None
        nonce = body.get("nonce")
        try:
            if not isinstance(nonce, str):
                raise NonceError("unknown", "the body has no nonce")
            self.challenges.consume(device_id, nonce)
        except NonceError as exc:
            raise self._refused(request, Problem(f"nonce-{exc.kind}", str(exc)), str(exc)) from None
        return body, _template_records(body)

    def _check_group(self, request: Request, subject: str, group: str) -> None:
        """403 (audited) unless the device may act on subjects of ``group``."""
        assert request.device is not None
        device_id = request.device.device_id
        if not self.rules.allows_group(device_id, group):
            raise self._refused(
                request,
                # The answer never names the subject's group (it would tell one device about
                # subjects it may not see); the audit event does, for the operator.
                Problem(
                    "group-not-allowed",
                    f"device {device_id} may not act on subject {subject!r}: its group is not one of this device's",
                    "ask the operator to allow this device the subject's group (the verifier's audit log names it): "
                    f"capture-verifier device allow {device_id} --groups GROUP,...",
                ),
                "subject group not allowed for this device",
                subject=subject,
                group=group,
            )

    def _check_session_token(self, request: Request, subject: str, token: object) -> None:
        """Templates are added to an enrolled subject only by the person: a live token from their verification.

        Without this, any enrolling device could attach someone else's finger to a
        subject and then pass as them. The token must come from a verification of
        this subject on this device, within its lifetime.
        """
        assert request.device is not None
        device_id = request.device.device_id
        if not isinstance(token, str) or not token:
            raise self._refused(
                request,
                Problem(
                    "verification-required",
                    f"subject {subject!r} is enrolled: adding templates needs the subject's session token",
                    "verify the subject first on this device and send its session_token with the enrollment "
                    "(capture-agent enroll --add)",
                ),
                "enrollment of an enrolled subject without a session token",
                subject=subject,
            )
        if self.sessions.check(token, device_id) != subject:
            raise self._refused(
                request,
                Problem(
                    "session-token-refused",
                    f"the session token is not a live token of subject {subject!r} issued to device {device_id}",
                    "verify the subject again on this device: a token lasts minutes and is bound to its device",
                ),
                "session token expired, or of another subject or device",
                subject=subject,
            )

    # ---------------------------------------------------------------- matching
    @staticmethod
    def _probes(records: list[bytes]) -> list[Cylinders]:
        """The request's templates as matching cylinders, built once per request."""
        return [c for record in records for c in (cylinders_of(t) for t in decode(record)) if len(c)]

    @staticmethod
    def _best_score(probes: list[Cylinders], gallery: mcc_match.Packed | None) -> float:
        """Best score of any probe against a packed set of templates (all scored at once)."""
        if gallery is None:
            return 0.0
        return max((float(mcc_match.scores(p, gallery).max()) for p in probes), default=0.0)

    def _enrolled(self, subject: str) -> mcc_match.Packed | None:
        """The subject's enrolled templates, decrypted, built and packed once (None: not enrolled)."""
        if subject not in self._packed:
            cylinders = [c for c in (cylinders_of(t) for t in self.enrollments.templates(subject)) if len(c)]
            self._packed[subject] = mcc_match.pack(cylinders) if cylinders else None
        return self._packed[subject]

    def _gallery_index(self) -> GalleryIndex:
        if self._gallery is None:
            self._gallery = GalleryIndex()
            for subject, template in self.enrollments.all():
                self._gallery.add(subject, template)
        return self._gallery

    # ---------------------------------------------------------------- handlers
    def new_challenge(self, request: Request) -> Answer:
        """A nonce, after the checks that need no finger: rate, operation, subject, group, lockout.

        The body names the operation and the subject (``ChallengeRequest``), so what
        would be refused after the captures is refused before the person touches
        the sensor, on a round trip the session makes anyway. An empty body gets a
        plain nonce (the full checks still run on the signed request).
        """
        assert request.device is not None
        device_id = request.device.device_id
        wait = self.challenge_rate.check(device_id)
        if wait > 0:
            raise self._refused(
                request,
                Problem(
                    "device-rate-limited",
                    f"device {device_id} asked for too many challenges; wait {wait:.0f} s",
                    headers=((b"retry-after", str(int(wait) + 1).encode()),),
                ),
                "challenge rate limit",
            )
        try:
            asked = ChallengeRequest.from_body(json_object(request))
        except WireError as exc:
            raise Problem("bad-challenge", str(exc)) from None
        if asked.operation:
            self._precheck(request, asked)
        nonce, expires_at = self.challenges.issue(device_id)
        expires = dt.datetime.fromtimestamp(expires_at, dt.UTC).isoformat().replace("+00:00", "Z")
        return json_answer(201, {"nonce": nonce, "expires_at": expires, "ttl_s": self.challenges.ttl_s})

    def _precheck(self, request: Request, asked: ChallengeRequest) -> None:
        """What a challenge for ``asked`` would meet after the captures, checked now."""
        assert request.device is not None
        device_id = request.device.device_id
        self._check_operation(request, asked.operation)
        subject = asked.subject
        if subject is None:
            return
        if asked.operation == "enroll":
            group = self._enrollment_group(request, subject, asked.group)
            self._check_group(request, subject, group)
            return
        self._check_group(request, subject, self.subjects.group_of(subject))
        if not self.enrollments.exists(subject):
            raise self._refused(request, _unknown_subject(subject), "unknown subject", subject=subject)
        locked = self.lockouts.locked_for(device_id, subject)
        if locked > 0:
            raise self._refused(request, _locked(subject, locked), "locked out", subject=subject)

    def _enrollment_group(self, request: Request, subject: str, requested: object) -> str:
        """The group an enrollment puts the subject in; 409 (audited) when it names another one."""
        if requested is not None and (not isinstance(requested, str) or not endpoints.GROUP_NAME.fullmatch(requested)):
            raise Problem("bad-group", f"{requested!r} is not a group name")
        recorded = self.subjects.recorded(subject)
        if recorded is not None and requested is not None and requested != recorded:
            raise self._refused(
                request,
                Problem(
                    "subject-in-other-group",
                    f"subject {subject!r} is in another group than {requested!r}",  # never which one
                    f"enroll {subject} without --group (it keeps its group), or ask the operator: "
                    f"capture-verifier subject group {subject} GROUP",
                ),
                "enrollment names another group",
                subject=subject,
                group=recorded,
            )
        return recorded or requested or DEFAULT_GROUP

    def enroll(self, request: Request) -> Answer:
        assert request.device is not None
        subject = request.subject
        if not SUBJECT_ID.fullmatch(subject):
            raise Problem("bad-subject", f"{subject!r} is not a subject id")
        body, records = self._checked(request, "enroll")
        recorded = self.subjects.recorded(subject)
        group = self._enrollment_group(request, subject, body.get("group"))
        self._check_group(request, subject, group)
        if self.enrollments.exists(subject):
            self._check_session_token(request, subject, body.get("session_token"))
        if recorded is None:
            self.subjects.assign(subject, group)
        self.enrollments.add(subject, request.device.device_id, records)
        self._packed.pop(subject, None)
        if self._gallery is not None:
            for record in records:
                for template in decode(record):
                    self._gallery.add(subject, template)
        log.info(
            "enrollment",
            audit=True,
            device_id=request.device.device_id,
            subject=subject,
            group=group,
            templates=len(records),
        )
        return json_answer(201, {"subject": subject, "group": group, "templates": len(records)})

    def verify(self, request: Request) -> Answer:
        assert request.device is not None
        device_id = request.device.device_id
        body, records = self._checked(request, "verify")
        subject = body.get("subject")
        if not isinstance(subject, str) or not SUBJECT_ID.fullmatch(subject):
            raise Problem("bad-subject", "the body needs a claimed subject", 'add "subject": "<id>"')
        self._check_group(request, subject, self.subjects.group_of(subject))
        enrolled = self._enrolled(subject)
        if enrolled is None:
            raise self._attempt_refused(device_id, subject, "unknown_subject", _unknown_subject(subject))
        wait = self.subject_rate.check(f"{device_id}\x00{subject}") or self.subject_rate_all.check(subject)
        if wait > 0:
            raise self._attempt_refused(
                device_id,
                subject,
                "subject_rate_limited",
                Problem(
                    "subject-rate-limited",
                    f"subject {subject!r} was claimed too often; wait {wait:.0f} s",
                    "wait; if nobody at your sites claims this subject so often, someone is guessing",
                    headers=((b"retry-after", str(int(wait) + 1).encode()),),
                ),
                wait_s=round(wait, 1),
            )
        locked = self.lockouts.locked_for(device_id, subject)
        if locked > 0:
            raise self._attempt_refused(
                device_id, subject, "locked_out", _locked(subject, locked), locked_for_s=round(locked, 1)
            )
        step_id = body.get("step_up")
        if step_id is not None:
            return self._complete_step_up(device_id, subject, str(step_id), records, enrolled)
        started = time.perf_counter()
        score = self._best_score(self._probes(records), enrolled)
        self._match_ms = (time.perf_counter() - started) * 1000
        if score >= self.threshold:
            reasons = self.stepup.reasons(device_id, subject, score, self.threshold, self.lockouts.failures(subject))
            if reasons:
                return self._ask_step_up(device_id, subject, records, reasons, score)
        return self._decided(device_id, subject, "accept" if score >= self.threshold else "reject", score)

    @staticmethod
    def _attempt_refused(device_id: str, subject: str, outcome: str, problem: Problem, **fields: Any) -> Problem:
        """A verification that ends before matching: audited with its outcome, then answered."""
        log.warning("verification_attempt", audit=True, device_id=device_id, subject=subject, outcome=outcome, **fields)
        return problem

    def _ask_step_up(
        self, device_id: str, subject: str, records: list[bytes], reasons: list[str], score: float
    ) -> Answer:
        """RFC 9470: 401 insufficient_user_authentication, naming the factor still needed."""
        step = self.stepup.open(device_id, subject, records, reasons)
        log.info(
            "verification_attempt",
            audit=True,
            device_id=device_id,
            subject=subject,
            outcome="step_up",
            reasons=",".join(reasons),
            score=round(score, 4),
        )
        # An answer, not an exception: the nonce stays consumed, so this request cannot be replayed.
        problem = Problem(
            "insufficient-user-authentication",
            f"a second finger is needed ({', '.join(reasons)})",
            "capture another finger of the same person and send it with this step_up id",
            extra=(("step_up", step), ("acr_values", ACR_SECOND_FINGER), ("reasons", reasons)),
        )
        challenge = (
            'Bearer error="insufficient_user_authentication", '
            f'error_description="{", ".join(reasons)}", acr_values="{ACR_SECOND_FINGER}"'
        )
        return Answer(401, PROBLEM_CONTENT_TYPE, problem.body(), ((b"www-authenticate", challenge.encode()),))

    def _complete_step_up(
        self, device_id: str, subject: str, step_id: str, records: list[bytes], enrolled: mcc_match.Packed
    ) -> Answer:
        pending = self.stepup.take(step_id, device_id, subject)
        if pending is None:
            raise self._attempt_refused(
                device_id,
                subject,
                "step_up_unknown",
                Problem(
                    "step-up-unknown",
                    "no pending step-up with this id for you",
                    "start the verification again",
                ),
            )
        started = time.perf_counter()
        probes = self._probes(records)
        score = self._best_score(probes, enrolled)
        first = self._probes(pending.first_records)
        same_finger = self._best_score(probes, mcc_match.pack(first) if first else None) >= self.threshold
        self._match_ms = (time.perf_counter() - started) * 1000
        decision = "accept" if score >= self.threshold and not same_finger else "reject"
        reason = "step-up with the same finger" if same_finger else ""
        return self._decided(device_id, subject, decision, score, step_up=pending.reasons, reason=reason)

    def _decided(
        self,
        device_id: str,
        subject: str,
        decision: str,
        score: float,
        step_up: list[str] | None = None,
        reason: str = "",
    ) -> Answer:
        self.lockouts.record(device_id, subject, decision == "accept")
        log.info(
            "verification_attempt",
            audit=True,
            device_id=device_id,
            subject=subject,
            outcome=decision,
            score=round(score, 4),
            step_up=",".join(step_up or []),
            reason=reason or ("score above threshold" if decision == "accept" else "score below threshold"),
        )
        answer: dict[str, Any] = {
            "subject": subject,
            "decision": decision,
            "score": round(score, 4),
            "threshold": round(self.threshold, 4),
        }
        if decision == "accept":
            self.stepup.completed(device_id)
            answer.update(self.sessions.issue(device_id, subject))
        timing = f"match;dur={self._match_ms:.3f}".encode()  # Server-Timing: what the device cannot see
        return json_answer(200, answer, ((b"server-timing", timing),))

    def identify(self, request: Request) -> Answer:
        """1:N among the subjects of the groups this device may act on, best first."""
        assert request.device is not None
        device_id = request.device.device_id
        _, records = self._checked(request, "identify")
        gallery = self._gallery_index()
        allowed = self.rules.groups(device_id)
        among = None if allowed is None else self.subjects.members(gallery.subject_ids(), allowed)
        started = time.perf_counter()
        best: dict[str, float] = {}
        for record in records:
            for probe in decode(record):
                for subject, score in gallery.search(probe, top_k=IDENTIFY_TOP_K, among=among):
                    best[str(subject)] = max(best.get(str(subject), 0.0), float(score))
        match_ms = (time.perf_counter() - started) * 1000
        candidates = sorted(
            ({"subject": s, "score": round(v, 4)} for s, v in best.items() if v >= self.threshold),
            key=lambda c: -c["score"],
        )
        log.info(
            "identification_attempt",
            audit=True,
            device_id=device_id,
            outcome="candidates" if candidates else "no_candidate",
            candidates=len(candidates),
            groups=",".join(sorted(allowed)) if allowed is not None else "*",
        )
        timing = f"match;dur={match_ms:.3f}".encode()
        answer = {"candidates": candidates, "threshold": round(self.threshold, 4)}
        return json_answer(200, answer, ((b"server-timing", timing),))


def _unknown_subject(subject: str) -> Problem:
    return Problem(
        "unknown-subject",
        f"no enrollment for subject {subject!r}",
        f"enroll the subject first: capture-agent enroll --subject {subject}",
    )


def _locked(subject: str, seconds: float) -> Problem:
    return Problem(
        "subject-locked",
        f"too many failed attempts for {subject!r} on this device; locked for {seconds:.0f} s more",
        "wait, or verify another way; each further lockout doubles",
        headers=((b"retry-after", str(int(seconds) + 1).encode()),),
    )


def _template_records(body: dict[str, Any]) -> list[bytes]:
    """The ISO/IEC 19794-2 records of a request, each decoded, its views within the minutiae bounds."""
    try:
        records = records_of(body.get("templates"))
    except TemplateWireError as exc:
        raise Problem("bad-template", str(exc)) from None
    for index, record in enumerate(records):
        try:
            views = decode(record)
        except TemplateError as exc:
            raise Problem("bad-template", f"templates[{index}]: {exc}") from None
        for view, template in enumerate(views):
            reason = minutiae_problem(index, view, len(template.minutiae))
            if reason is not None:
                raise Problem("bad-template", reason)
    return records
