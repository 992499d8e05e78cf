"""The routes that carry templates: challenges, enrollments, verifications, identifications.

Every biometric request passes the same gate (:meth:`BiometricRoutes.signed_content`):
the device's access rule for the operation, the device's rate, the signature by
the device key over the canonical request, and the nonce (single use, short
life). Then what the body carries is parsed, once, by :mod:`verifier.content`
(a malformed template, face or sensor message is a refusal like any other).
Then the subject's group against the device's allowed groups (a verification
of a subject the device may not see is answered as one of an unknown id:
:meth:`BiometricRoutes.check_visible`), then the operation. Every outcome,
accepted or refused, is an audit event naming the device, the subject and the
reason; a template never appears in one.

The challenge itself names the operation and the subject (protocol.messages.
ChallengeRequest), so what needs no finger (the operation, the subject's group,
an unknown subject, a lockout) is refused before the person touches the sensor.
Answers never name another subject's group; the audit event does.

Work: a request carries at most ``max_views_per_request`` finger views, and a
device may cause at most ``device_comparisons_per_min`` template comparisons a
minute (views times the templates they are compared with), so the limit counts
work, not requests.

Matching runs off the event loop (:mod:`verifier.matching`): a handler does its
checks and database reads, returns a :class:`~verifier.http.Deferred` whose
``work`` builds cylinders and scores in the pool (on data handed to it only),
and whose ``finish`` decides and writes back on the loop. A subject's enrolled
templates are built and packed once and kept (by generation: an enrollment makes
the next request rebuild them); the 1:N gallery lives in the pool's threads
behind one lock, fed new templates through a queue.

Enrollment: every new template is searched 1:N against the other subjects
(one person, one identity: a 409 that names nobody), and templates added to an
enrolled subject with a session token (single use) must each match that
subject's enrolled templates (one identity, one person). A subject whose factor
rule needs a factor they never enrolled gets, from a match of the one they have,
an enrollment token for the missing factor only (:meth:`BiometricRoutes.grant_missing_factor`).

``Server-Timing: match`` on a verification's answer reports the time spent
building the probe and scoring, the part of the decision the device cannot see.
Identifications and enrollments answer without Server-Timing: their matching
searches a gallery (an enrollment's, every group's), and its duration would tell
the device the gallery's size; ``match_ms`` is in their audit lines instead
(:class:`~verifier.http.Route`'s ``timed``).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from biometrics.fingerprint import FingerprintTemplate, GalleryIndex, mcc_match, orientation_field, threshold_for_fmr
from biometrics.fingerprint.cylinders import Cylinders
from biometrics.fingerprint.iso19794_2 import decode
from biometrics.fingerprint.matcher import cylinders_of
from protocol import endpoints
from protocol.face_template import ACR_FACE, ACR_FINGER, FACE, FINGER
from protocol.messages import ChallengeRequest
from protocol.signing import SignatureError, check_signature
from protocol.templates import coverage_problem, field_problem, minutiae_problem, spread_problem
from protocol.wire import WireError
from verifier.at_rest_key import load_or_create_key
from verifier.challenges import NONCE_MARGIN_S, Challenges, NonceError
from verifier.connections import EventSummary
from verifier.content import Carried, Malformed, carried_of
from verifier.enrollments import EnrollmentStore
from verifier.faces import FACE_REQUIRED, FaceRoutes
from verifier.http import Answer, Deferred, Request, Route, json_answer, json_object
from verifier.matching import Budget
from verifier.policy import AccessRules, Lockouts, RateLimit, WorkLimit
from verifier.problems import CONTENT_TYPE as PROBLEM_CONTENT_TYPE
from verifier.problems import Problem
from verifier.ranking import (
    IDENTIFY_TOP_K,
    charged_templates,
    identification_capacity,
    identification_threshold,
    ranked,
    reported_threshold,
    searched_groups,
    unreachable_problem,
    warn_if_unreachable,
)
from verifier.sensor_prints import SensorPrints
from verifier.sessions import SENSOR_SESSION, SESSION, SessionTokens, SpentToken, enroll_scope
from verifier.settings import VerifierSettings
from verifier.stepup import ACR_SECOND_FINGER, Pending, StepUpPolicy
from verifier.subjects import (
    DEFAULT_GROUP,
    ENROLLMENT_TABLES,
    Seen,
    SubjectGroups,
    held_since,
    removal_epoch,
    same_but_for_case,
    seen_now,
)

log = structlog.get_logger()

_Content = TypeVar("_Content")
ENROLL_FINGERS = "enroll-fingers"  # the serial key of finger enrollments (verifier.matching: search to insert)
SUBJECT_ID = endpoints.SUBJECT_ID
ENROLLMENTS_PATH = endpoints.ENROLLMENTS


class BiometricRoutes:
    def __init__(
        self, conn: sqlite3.Connection, settings: VerifierSettings, flood_events: EventSummary | None = None
    ) -> None:
        # Refusals a device can repeat as fast as it sends (verifier.connections.EventSummary, the app's).
        self.flood_events = flood_events if flood_events is not None else EventSummary()
        self.challenges = Challenges(conn, ttl_s=settings.nonce_ttl_s)
        key = load_or_create_key(settings.enrollment_key, conn)
        self.enrollments = EnrollmentStore(conn, key)
        self.threshold = threshold_for_fmr(settings.target_fmr)
        # One search per new template against every other subject: N comparisons, so a stricter rate.
        self.duplicate_threshold = threshold_for_fmr(settings.duplicate_fmr)
        # 1:N's threshold grows with the search (verifier/ranking.py); finger_identify_fpir when set, else
        # identify_fpir (fingers' score tail is lighter than faces': they can be asked for a stricter rate).
        self.identify_setting, self.identify_fpir = settings.identify_fpir_of(FINGER)
        # The largest search whose threshold a finger's score can still reach; SettingsError (the verifier does
        # not start, naming that key) when not even one comparison can (verifier/ranking.py: refuse, not clamp).
        self.identify_capacity = identification_capacity(
            FINGER, threshold_for_fmr, fpir=self.identify_fpir, verify_threshold=self.threshold,
            setting=self.identify_setting,
        )
        self.rules = AccessRules(conn)
        self.subjects = SubjectGroups(conn)
        self.lockouts = Lockouts(conn, settings.max_failures, settings.lockout_base_s, settings.lockout_devices)
        self.device_rate = RateLimit(settings.device_requests_per_min, settings.lockout_base_s)
        self.challenge_rate = RateLimit(settings.device_challenges_per_min, settings.lockout_base_s)
        # 1:N tests a probe against every subject at once: a device's identifications get their own, lower rate.
        self.identify_rate = RateLimit(settings.device_identifications_per_min, settings.lockout_base_s)
        # Claims of a subject: per (device, subject), and across devices a bound one device cannot reach alone.
        self.subject_rate = RateLimit(settings.subject_requests_per_min, settings.lockout_base_s)
        self.subject_rate_all = RateLimit(
            settings.subject_requests_per_min * settings.lockout_devices, settings.lockout_base_s
        )
        self.stepup = StepUpPolicy(conn, first_use=settings.step_up_first_use, ttl_s=settings.step_up_ttl_s)
        self.sessions = SessionTokens(conn, settings.session_ttl_s)
        self.device_work = WorkLimit(settings.device_comparisons_per_min)
        self.max_views = settings.max_views_per_request
        self.max_templates = settings.max_templates_per_subject
        self.faces = FaceRoutes(  # verifier/faces.py
            self, conn, key, settings.target_fmr, settings.duplicate_fmr, settings.identify_fpir_of(FACE)
        )
        self.sensor_prints = SensorPrints(conn)  # subjects enrolled on a match-on-sensor reader
        # Subjects' packed templates: written by pool threads, invalidated by the loop (generation). The lock
        # makes a pool thread's write-back and the loop's new generation one step each (:meth:`_keep_pack`).
        self._packs: dict[str, _SubjectPack] = {}
        self._generation: dict[str, int] = {}
        self._packs_lock = threading.Lock()
        # The 1:N gallery: used only in pool threads, under the lock; the loop feeds it through the queue
        # (a subject and a template to add, or a subject and None: remove its templates).
        self._gallery: GalleryIndex | None = None
        self._gallery_lock = threading.Lock()
        self._gallery_queue: deque[tuple[str, FingerprintTemplate | None]] = deque()
        self._gallery_loaded = False
        self._gallery_size = 0  # templates in the gallery once the queue is drained
        self._templates_of: Counter[str] = Counter()  # the same, per subject: what one identification searches
        self._after_commit: list[Callable[[], None]] = []  # in-memory changes waiting for their transaction
        self._removals = removal_epoch(conn)  # `subject remove`s this server's memory reflects

    def sync_removals(self) -> int:
        """On the loop: the removal epoch, after forgetting what memory keeps of subjects removed since it was seen.

        Why: `capture-verifier subject remove` deletes a subject's rows from another
        process while this one serves, and the galleries (fingers, faces), the packed
        templates and the pending step-ups are kept in memory, loaded once; they would go
        on naming, matching and finding duplicates of a person whose data is erased.
        The removal command moves the epoch (verifier.subjects.remove_subject) and names
        nobody; seeing it move, this drops from memory every subject the database no
        longer holds templates of (gallery entries, packs, pending step-ups, whose first
        capture is a template): one query per modality, no gallery rebuilt. Called first
        by each template route and match-on-sensor route (one read of one row), and again at a decision whose
        matching may have started before a removal (:meth:`removed_during`).
        """
        epoch = removal_epoch(self.subjects.conn)
        if epoch != self._removals:
            self._removals = epoch
            gone = self._forget_fingers()
            faces = self.faces.forget_removed()
            steps = self.stepup.forget(lambda subject: not self.is_enrolled(subject))
            log.info("removed_subjects_forgotten", reason="a subject was removed by the operator", removal_epoch=epoch,
                     finger_subjects_dropped=gone, face_subjects_dropped=faces, pending_step_ups_dropped=steps)
        return epoch

    def _forget_fingers(self) -> int:
        """On the loop: the packs and gallery templates of subjects with no finger template left, dropped; how many
        subjects had any.

        A pack a pool thread writes back later carries the generation it was built for, now below the subject's:
        it is discarded then (:meth:`_keep_pack`), not kept in memory until the next removal. Every subject a
        job builds a pack of has a generation (:meth:`_subject_templates`), so each such job is seen here. The
        gallery's templates go in its queue's order, behind what it holds.
        """
        current = self.enrollments.subject_ids()
        gone = (set(self._templates_of) | set(self._packs) | set(self._generation)) - current
        dropped = 0  # subjects memory held templates of: not every id with a generation (removed ones keep theirs)
        for subject in gone:
            dropped += self._new_generation(subject) or subject in self._templates_of
            if subject in self._templates_of:
                self._gallery_size -= self._templates_of.pop(subject)
                self._gallery_queue.append((subject, None))
        return dropped

    def seen(self) -> Seen:
        """On the loop, first in a template route's handler (in its transaction): the removals synced, and what
        the decision will compare with (:meth:`still_held`): the epoch and the enrollment tables' row marks."""
        return seen_now(self.subjects.conn, self.sync_removals())

    def removed_during(self, seen: Seen) -> bool:
        """A removal happened since ``seen`` (read by a handler): its matching may have used removed templates."""
        return self.sync_removals() != seen.epoch

    def still_held(self, subject: str, seen: Seen, kinds: tuple[str, ...] = tuple(ENROLLMENT_TABLES)) -> bool:
        """On the loop, at a decision: the subject still holds the templates (of ``kinds``) its request was
        matched on, i.e. it was not removed since ``seen``.

        Not merely enrolled: removed while matched, the id may have been enrolled again by
        another person before the decision, and the match was the first person's. Asked of
        the database only when a removal happened since ``seen``.
        """
        return not self.removed_during(seen) or held_since(self.subjects.conn, subject, seen, kinds)

    def after_commit(self, change: Callable[[], None]) -> None:
        """Make ``change`` to what is kept in memory (the 1:N galleries) once the request's transaction commits.

        Why not at once: a commit that fails (a full disk: 503 storage-unavailable) rolls the enrollment back,
        and a gallery changed before it would go on naming a subject the database does not hold, and count the
        retry's templates twice.
        """
        self._after_commit.append(change)

    def committed(self) -> None:
        """The request's transaction committed: make the changes it waited for (verifier.app calls this)."""
        changes, self._after_commit = self._after_commit, []
        for change in changes:
            change()

    def rolled_back(self) -> None:
        """The request's transaction was rolled back: drop the changes it waited for."""
        self._after_commit.clear()

    def routes(self) -> dict[tuple[str, str], Route]:
        return {
            # A nonce's answer is kept for repeats only as long as the nonce itself: no row outlives it.
            ("POST", endpoints.CHALLENGES): Route(
                self.new_challenge, needs_client_cert=True, retention_s=self.challenges.ttl_s + NONCE_MARGIN_S
            ),
            # 1:N searches (an enrollment's duplicate search spans every group): no Server-Timing on their answers,
            # whose durations grow with the gallery (Route.timed); a verification's is the claimed subject's own.
            ("POST", ENROLLMENTS_PATH): Route(self.enroll, needs_client_cert=True, matches=True, timed=False),
            ("POST", endpoints.VERIFICATIONS): Route(self.verify, needs_client_cert=True, matches=True),
            ("POST", endpoints.IDENTIFICATIONS): Route(self.identify, needs_client_cert=True, matches=True,
                                                       timed=False),
        }

    # ---------------------------------------------------------------- the gate
    @staticmethod
    def refused(request: Request, problem: Problem, reason: str, **fields: Any) -> Problem:
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

    def flooded(self, request: Request, problem: Problem, reason: str, **fields: Any) -> Problem:
        """A refusal a device can repeat as fast as it sends: audited through the flood summary, then answered.

        For refusals that spend nothing a device is limited by (an operation it may
        not call, checked before its rate; a request over its rate): the first few
        of each window are logged one by one like :meth:`refused`, the rest counted
        in one ``connection_events_summary`` line. Before, a stolen device wrote one
        audit line per refused request, about a thousand per HTTP/2 connection.
        """
        assert request.device is not None
        self.flood_events.note(
            "biometric_request_refused",
            reason,
            device_id=request.device.device_id,
            path=request.path,
            status=problem.status,
            **fields,
        )
        return problem

    def _check_operation(self, request: Request, operation: str) -> None:
        """403 (audited) unless the device's access rule allows ``operation``."""
        assert request.device is not None
        device_id = request.device.device_id
        if not self.rules.allows(device_id, operation):
            raise self.flooded(  # checked before the device's rate: a refusal that costs the device nothing
                request,
                Problem(
                    "operation-not-allowed",
                    f"device {device_id} may not {operation}",
                    f"ask the operator to allow it: capture-verifier device allow {device_id} --operations ...",
                ),
                "operation not allowed for this device",
            )

    def _checked(self, request: Request, operation: str) -> tuple[dict[str, Any], Carried]:
        """The gate, then the templates (fingers or faces) the body carries, each decoded and checked."""
        return self.signed_content(request, operation, carried_of)

    def signed_content(
        self, request: Request, operation: str, parse: Callable[[dict[str, Any]], _Content]
    ) -> tuple[dict[str, Any], _Content]:
        """The gate (access rule, rate, signature, nonce), then what the body carries, parsed by ``parse``.

        The one parse path of every signed biometric route (templates, faces, sensor
        messages: :mod:`verifier.content`): content that does not parse is an
        audited refusal naming the item and the check that failed, never its bytes.
        """
        body = self._signed_body(request, operation)
        try:
            return body, parse(body)
        except Malformed as exc:
            raise self.refused(request, exc.problem, exc.reason, **exc.audit_fields()) from None

    def _signed_body(self, request: Request, operation: str) -> dict[str, Any]:
        """Access rule, rate, signature, nonce (single use): the gate, templates or not (sensor assertions).

        The rate comes before the body is read as JSON: a device sending bodies that
        do not parse spends its rate like any other, and each refusal is audited.
        """
        assert request.device is not None and request.client_cert is not None
        device_id = request.device.device_id
        self._check_operation(request, operation)
        wait = self.counted(request, self.device_rate, device_id)
        if wait > 0:
            raise self.flooded(
                request,
                Problem(
                    "device-rate-limited",
                    f"device {device_id} is over its rate; wait {wait:.0f} s",
                    "slow down; a kiosk should never need this rate (a stuck loop? a stolen device?)",
                    headers=((b"retry-after", str(int(wait) + 1).encode()),),
                ),
                "device rate limit",
            )
        body = self._json_object(request)
        try:
            check_signature(request.client_cert.public_key(), request.method, request.path, body)
        except SignatureError as exc:
            raise self.refused(
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
            raise self.refused(request, Problem(f"nonce-{exc.kind}", str(exc)), str(exc)) from None
        return body

    def _json_object(self, request: Request) -> dict[str, Any]:
        """The body as a protocol JSON object; a body that is not one is an audited 400 ``bad-json``."""
        try:
            return json_object(request)
        except Problem as problem:
            raise self.refused(request, problem, "body not protocol JSON") from None

    def is_enrolled(self, subject: str) -> bool:
        """The subject has a finger, a face or a print on a match-on-sensor reader enrolled."""
        return self.enrollments.exists(subject) or self.faces.enrolled(subject) or self.sensor_prints.exists(subject)

    @staticmethod
    def counted(request: Request | None, limit: RateLimit, key: str) -> float:
        """``limit.check(key)``; when it counted the request, its give-back goes into ``request.refunds``.

        Why: a request the matching pool then refuses before its job starts (503, Retry-After) was never served,
        and the device retries it as told; counted, those retries alone put a kiosk over its rate (a 429 and a
        doubling lock) while other devices' work kept the pool full. A refused request is still counted: a
        device is at most one job in the pool at a time, so it cannot make refunded requests faster than one
        per matching budget.
        """
        now = time.time()
        wait = limit.check(key, now)
        if wait == 0 and request is not None:
            request.refunds.append(lambda: limit.give_back(key, now))
        return wait

    def check_subject_rate(self, device_id: str, subject: str, request: Request | None = None) -> None:
        """429 (audited) when the subject is claimed too often, by this device or across devices. ``request``:
        the claim's, whose refunds give the counts back if it is never matched (:meth:`counted`)."""
        wait = (self.counted(request, self.subject_rate, f"{device_id}\x00{subject}")
                or self.counted(request, self.subject_rate_all, subject))
        if wait > 0:
            raise self.attempt_refused(
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

    def check_group(self, request: Request, subject: str, group: str) -> None:
        """403 (audited) unless the device may act on subjects of ``group``."""
        assert request.device is not None
        device_id = request.device.device_id
        if not self.rules.allows_group(device_id, group):
            raise self.refused(
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

    def check_visible(self, request: Request, subject: str, unknown: Problem | None = None) -> None:
        """A verification's (and its prechecks'): refused as ``unknown`` (default: 404 ``unknown-subject``) unless
        the device may act on the subject's group; audited with the group, for the operator.

        Why not :meth:`check_group`'s 403: a device allowed only ``default`` asking for an id
        of another group got 403 where an id nobody holds got 404, so it could tell which ids
        exist in groups it cannot see (and a device not allowed ``default`` got 403 for every
        id nobody holds, that group's by default). Now both read alike: same status, problem
        type, detail and fix (but for the id), no other header, refused at the same point
        (nothing spent that an unknown id does not spend). Enrollment keeps the 403: an id
        taken in another group cannot be enrolled again, a leak the README documents.
        """
        assert request.device is not None
        group = self.subjects.group_of(subject)
        if not self.rules.allows_group(request.device.device_id, group):
            raise self.refused(
                request,
                unknown if unknown is not None else _unknown_subject(subject),
                "subject group not allowed for this device",
                subject=subject,
                group=group,
                answered_as=(unknown.slug if unknown is not None else "unknown-subject"),
            )

    def has_factor(self, subject: str, factor: str) -> bool:
        """The subject has ``factor`` enrolled: a face, or a finger (templates, or a print on a match-on-sensor
        reader, whose assertion answers a finger step-up)."""
        if factor == FACE:
            return self.faces.enrolled(subject)
        return self.enrollments.exists(subject) or self.sensor_prints.exists(subject)

    def _check_session_token(self, request: Request, subject: str, token: object, factor: str | None = None) -> str:
        """Templates are added to an enrolled subject only by the person: a live token from their verification.

        Without this, any enrolling device could attach someone else's finger to a
        subject and then pass as them. The token must come from a verification of
        this subject on this device, within its lifetime. Returns the token's scope:
        a session token's, or (``factor`` named) an enrollment token of that factor
        for a subject who has none of it yet (:meth:`grant_missing_factor`).
        """
        assert request.device is not None
        device_id = request.device.device_id
        if not isinstance(token, str) or not token:
            raise self.refused(
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
        if self.sessions.check(token, device_id) == subject:
            return SESSION
        if self.sessions.check(token, device_id, SENSOR_SESSION) == subject:
            if factor is not None:  # a portable factor: only the operator's one-time grant lets it through
                self.check_portable_add(request, subject, factor)
            return SENSOR_SESSION
        scope = enroll_scope(factor) if factor is not None else None
        if scope is not None and self.sessions.check(token, device_id, scope) == subject:
            if self.has_factor(subject, str(factor)):  # only ever the missing factor: never a graft onto one
                raise self.refused(
                    request,
                    Problem(
                        "session-token-refused",
                        f"an enrollment token adds a {factor} only to a subject with none; {subject!r} has one",
                        "verify the subject with every factor its rule needs, then add with that session token",
                    ),
                    "enrollment token for a factor the subject has",
                    subject=subject,
                    token_scope=scope,
                )
            return scope
        raise self.refused(
            request,
            Problem(
                "session-token-refused",
                f"the session token is not a live token of subject {subject!r} issued to device {device_id}",
                "verify the subject again on this device: a token lasts minutes and is bound to its device",
            ),
            "session token expired, or of another subject or device",
            subject=subject,
        )

    def has_portable(self, subject: str) -> bool:
        """The subject has a factor every kiosk verifies: finger templates or a face (not only sensor prints)."""
        return self.enrollments.exists(subject) or self.faces.enrolled(subject)

    def check_portable_add(self, request: Request, subject: str, factor: str) -> None:
        """401 ``session-token-refused`` (audited) unless a token earned by a sensor's assertion alone may add
        ``factor`` (finger templates or a face) to ``subject``: only to a subject with no portable factor at all,
        and only with the operator's one-time grant (``capture-verifier subject portable ID``).

        Why: under ``--sensor-assertions accept`` the verifier takes the device's word that the sensor matched,
        and whoever holds the device key (a stolen kiosk) can say it. The operator accepted that word for that
        device; a template or a face added with it verifies at every kiosk, so the device's word would have
        made a portable identity: the thief's finger or face on a person's id (or grafted beside the fingers of
        a subject with no face). So such a token adds only what stays on a sensor (another print). The README's
        remedy for a subject enrolled only on sensors (add templates, or a face, after a sensor's accept) is
        kept behind the operator, who grants one portable enrollment to such a subject once the person is
        known to be there; a subject with any portable factor must verify with it instead (a template or face
        the verifier matches itself earns a full session token).
        """
        if not self.has_portable(subject) and self.sensor_prints.portable_granted(subject):
            return
        has = self.has_portable(subject)
        raise self.refused(
            request,
            Problem(
                "session-token-refused",
                f"the session token of {subject!r} was earned by a match-on-sensor assertion alone (the device's "
                f"word): it adds a print on a sensor, never a {factor}, which would verify at every kiosk",
                (f"verify {subject} with a fingerprint template or a face (capture-agent verify on an image reader "
                 "or a camera) and add with that session token")
                if has else
                (f"{subject} is enrolled only on sensors: ask the operator to grant one portable enrollment "
                 f"(capture-verifier subject portable {subject}), then verify on the sensor again and add"),
            ),
            "sensor-earned token for a portable factor",
            subject=subject,
            factor=factor,
            has_portable_factor=has,
            portable_granted=self.sensor_prints.portable_granted(subject),
        )

    def spend_session_token(
        self, request: Request, subject: str, token: object, factor: str | None = None
    ) -> SpentToken:
        """An enrollment adding to an enrolled subject spends the subject's token; what was spent, or 401 (audited).

        ``factor`` is what the enrollment adds: an enrollment token of that factor is
        taken too (not only a session token) while the subject has none of it. None
        (a sensor print) takes session tokens only. Spent by this attempt whatever it
        gives (a refused finger does not leave it for another try). When the verifier
        does not decide, the token is back: a refusal before matching (a 429) rolls the
        request's transaction back with it, and a busy pool or spent budget after it
        calls ``sessions.give_back`` with what was spent.
        """
        assert request.device is not None
        scope = self._check_session_token(request, subject, token, factor)
        spent = self.sessions.take(str(token), request.device.device_id, subject, scope)
        if spent is None:
            raise self.refused(  # used meanwhile by a concurrent request (single use)
                request,
                Problem(
                    "session-token-refused",
                    "the session token was already used, or expired",
                    "verify the subject again on this device: a token authorises one enrollment",
                ),
                "session token used or expired",
                subject=subject,
            )
        return spent

    # ---------------------------------------------------------------- work
    def _views(self, request: Request, carried: Carried) -> list[FingerprintTemplate]:
        """The request's finger views, all records together: at most ``max_views_per_request``, each
        within the protocol's minutiae bounds (a view with none would enroll a subject nobody matches) and
        carrying an orientation field that covers its minutiae (:func:`view_problem`)."""
        per_record = carried.views
        views = [t for record_views in per_record for t in record_views]
        if len(views) > self.max_views:
            raise self.refused(
                request,
                Problem(
                    "too-many-views",
                    f"the request carries {len(views)} finger views; at most {self.max_views} are accepted",
                    f"send at most {self.max_views} views per request (a capture is one view)",
                ),
                "too many finger views",
                views=len(views),
            )
        for index, record_views in enumerate(per_record):
            for view, template in enumerate(record_views):
                refusal = view_problem(index, view, template)
                if refusal is not None:
                    raise self.refused(request, Problem("bad-template", refusal[0]), refusal[1])
        return views

    def charge(self, request: Request, comparisons: int) -> None:
        """Count the request's matching work against the device's allowance (429 when spent)."""
        assert request.device is not None
        device_id = request.device.device_id
        wait = self.device_work.spend(device_id, comparisons)
        if wait == 0:
            request.refunds.append(lambda: self.device_work.give_back(device_id, comparisons))
        if wait > 0:
            raise self.refused(
                request,
                Problem(
                    "device-work-limited",
                    f"device {device_id} used its matching allowance for this minute; wait {wait:.0f} s",
                    "send fewer views per request, or fewer requests; a kiosk never needs this much",
                    headers=((b"retry-after", str(int(wait) + 1).encode()),),
                ),
                "device matching work limit",
                comparisons=comparisons,
            )

    @staticmethod
    def give_back_charges(request: Request) -> None:
        """The request's matching was never done (refused busy, or its budget ran out in the queue): what its
        checks charged is given back (its matching allowance, the device's and the subject's rates), newest
        first, once."""
        refunds, request.refunds = request.refunds, []
        for refund in reversed(refunds):
            refund()

    # ---------------------------------------------------------------- matching (in pool threads)
    @staticmethod
    def _probes(views: list[FingerprintTemplate], budget: Budget) -> list[Cylinders]:
        """The request's views as matching cylinders (empty ones kept: the list lines up with ``views``)."""
        out = []
        for view in views:
            budget.check()
            out.append(cylinders_of(view))
        return out

    @staticmethod
    def _best_score(probes: list[Cylinders], gallery: mcc_match.Packed | None, budget: Budget) -> float:
        """Best score of any probe against a packed set of templates (all scored at once)."""
        best = 0.0
        if gallery is None:
            return best
        for probe in probes:
            budget.check()
            if len(probe):
                best = max(best, float(mcc_match.scores(probe, gallery).max()))
        return best

    def _new_generation(self, subject: str) -> bool:
        """On the loop: ``subject``'s templates changed or are gone; its pack dropped (True: there was one).

        The generation moves and the pack goes in one step under the lock, so a pool thread's write-back
        (:meth:`_keep_pack`) comes wholly before (its pack is dropped here) or wholly after (it sees the new
        generation and discards its pack).
        """
        with self._packs_lock:
            self._generation[subject] = self._generation.get(subject, 0) + 1
            return self._packs.pop(subject, None) is not None

    def _keep_pack(self, subject: str, pack: _SubjectPack) -> None:
        """In a pool thread: keep ``pack`` unless it was built for a generation the subject has left.

        Why: a job can finish after the subject was removed (`subject remove`, seen by :meth:`sync_removals`).
        Its pack then names an older generation, so it would never be used, but kept it stayed in the server's
        memory, templates of an erased person, until the next removal. Also kept only if newer than the pack held.
        """
        with self._packs_lock:
            if pack.generation < self._generation.get(subject, 0):
                return
            held = self._packs.get(subject)
            if held is None or held.generation < pack.generation:
                self._packs[subject] = pack

    def _subject_templates(self, subject: str) -> tuple[int, list[FingerprintTemplate] | None, int]:
        """On the loop: (generation, the templates if they must be built, how many there are).

        The subject gets a generation here if it had none, so a removal seen while its pack is being built
        moves it (:meth:`_forget_fingers`), and the pack is discarded when written back.
        """
        generation = self._generation.setdefault(subject, 0)
        cached = self._packs.get(subject)
        if cached is not None and cached.generation >= generation:
            return generation, None, cached.templates
        templates = self.enrollments.templates(subject)
        return generation, templates, len(templates)

    def _subject_pack(
        self, subject: str, generation: int, templates: list[FingerprintTemplate] | None, budget: Budget
    ) -> mcc_match.Packed | None:
        """In a pool thread: the subject's templates packed for scoring, built once per generation."""
        cached = self._packs.get(subject)
        if cached is not None and cached.generation >= generation:
            return cached.packed
        assert templates is not None  # _subject_templates loaded them: the cache had nothing this new
        cylinders = []
        for template in templates:
            budget.check()
            built = cylinders_of(template)
            if len(built):
                cylinders.append(built)
        packed = mcc_match.pack(cylinders) if cylinders else None
        self._keep_pack(subject, _SubjectPack(generation, packed, len(templates)))
        return packed

    def _load_gallery(self) -> None:
        """On the loop, once: every enrolled template into the gallery's queue (built in the pool)."""
        if not self._gallery_loaded:
            for subject, template in self.enrollments.all():
                self._gallery_queue.append((subject, template))
                self._gallery_size += 1
                self._templates_of[subject] += 1
            self._gallery_loaded = True

    def _into_gallery(self, subject: str, views: list[FingerprintTemplate]) -> None:
        """On the loop, once the enrollment is committed: its templates into the 1:N gallery's queue."""
        for view in views:
            self._gallery_queue.append((subject, view))
            self._gallery_size += 1
            self._templates_of[subject] += 1

    def _gallery_index(self, budget: Budget) -> GalleryIndex:
        """In a pool thread holding the gallery lock: the gallery with every queued change made (added templates,
        removed subjects: :meth:`sync_removals`)."""
        if self._gallery is None:
            self._gallery = GalleryIndex()
        while self._gallery_queue:
            budget.check()  # a cold start over a big gallery spreads over several requests
            subject, template = self._gallery_queue.popleft()
            if template is None:
                self._gallery.remove(subject)
            else:
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
        self.check_rate(request, self.challenge_rate, "challenges", "challenge rate limit")
        try:
            asked = ChallengeRequest.from_body(self._json_object(request))
        except WireError as exc:
            raise self.refused(request, Problem("bad-challenge", str(exc)), "malformed challenge request") from None
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
            group = self.enrollment_group(request, subject, asked.group)
            self.check_group(request, subject, group)
            if not self.is_enrolled(subject):
                self.check_id_free(request, subject)
            elif asked.first:  # a first enrollment of an enrolled id: refused after every capture otherwise
                raise self.refused(
                    request,
                    Problem(
                        "verification-required",
                        f"subject {subject!r} is already enrolled",
                        f"to add to this person's enrollment, they verify first (capture-agent enroll --subject "
                        f'{subject} --add; a kiosk app: "verify_first": true); to enroll someone else, use another id',
                    ),
                    "first enrollment of an enrolled subject",
                    subject=subject,
                )
            return
        self.check_visible(request, subject)  # another group's subject reads as an unknown one
        if not self.is_enrolled(subject):
            raise self.refused(request, _unknown_subject(subject), "unknown subject", subject=subject)
        locked = self.lockouts.locked_for(device_id, subject)
        if locked > 0:
            raise self.refused(request, locked_out(subject, locked), "locked out", subject=subject)
        # Said before the head-turn challenge; after the lockout, in verify()'s order, so that a locked-out
        # subject's factors are not told to whoever asks for a challenge.
        if asked.modality == FACE and not self.faces.enrolled(subject):
            raise self.refused(
                request,
                Problem("face-not-enrolled", f"subject {subject!r} has no face enrolled",
                        f"verify with a finger, or enroll a face first: capture-agent enroll --face --subject "
                        f"{subject} --add"),
                "no face enrolled", subject=subject,
            )

    def enrollment_group(self, request: Request, subject: str, requested: object) -> str:
        """The group an enrollment puts the subject in; 409 (audited) when it names another one.

        A subject in a group the device may not act on is refused first, with the
        verify path's 403: the 409 ("in another group than yours", and its fix
        "enroll without --group") is only for a device that may see the subject.
        """
        if requested is not None and (not isinstance(requested, str) or not endpoints.GROUP_NAME.fullmatch(requested)):
            raise self.refused(request, Problem("bad-group", f"{requested!r} is not a group name"), "malformed group")
        recorded = self.subjects.recorded(subject)
        if recorded is not None:
            self.check_group(request, subject, recorded)
        if recorded is not None and requested is not None and requested != recorded:
            raise self.refused(
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

    def enroll(self, request: Request) -> Deferred:
        assert request.device is not None
        device_id = request.device.device_id
        subject = request.subject
        body, carried = self._checked(request, "enroll")  # the gate first: a bad id spends the rate, audited
        seen = self.seen()
        if not SUBJECT_ID.fullmatch(subject):
            raise self.refused(request, Problem("bad-subject", "the path's subject is not a subject id",
                                                f"use {endpoints.ID_RULE}"),
                               "malformed subject")
        records = carried.records
        views = self._views(request, carried)
        recorded = self.subjects.recorded(subject)
        group = self.enrollment_group(request, subject, body.get("group"))
        self.check_group(request, subject, group)
        enrolled = self.enrollments.exists(subject)
        token = body.get("session_token")
        spent: SpentToken | None = None
        if self.is_enrolled(subject):  # a finger, a face or a sensor print: only the verified person adds more
            spent = self.spend_session_token(request, subject, token, FACE if carried.has_faces else FINGER)
        else:
            self.check_id_free(request, subject)
        # Its duplicate search tests the templates against every subject of every group, and its answer (a 409 or
        # a 201) says whether they matched someone: a 1:N search, within the identifications' rate (else a device
        # that may only enroll tested probes against the whole gallery at three times that rate).
        self.check_rate(
            request, self.identify_rate, "1:N searches (identifications and enrollments)", "identification rate limit",
            "wait; an enrollment desk enrolls one person at a time (a stuck loop? someone testing probes?)",
        )
        if carried.has_faces:
            return self.faces.enroll(request, body, carried, subject, group, recorded, spent, seen)
        generation, templates, count = self._subject_templates(subject) if enrolled else (0, None, 0)
        self.check_room(request, subject, FINGER, count, len(views))
        self._load_gallery()
        self.charge(request, len(views) * charged_templates(self._gallery_size + count))  # (a decade's figure)

        def work(budget: Budget) -> _EnrollChecks:
            started = time.perf_counter()
            probes = self._probes(views, budget)
            not_theirs = 0
            if enrolled:  # each added template must be the verified person's
                pack = self._subject_pack(subject, generation, templates, budget)
                not_theirs = sum(self._best_score([p], pack, budget) < self.threshold for p in probes)
            duplicate = False
            with self._gallery_lock:  # one person, one identity: no other subject may match
                gallery = self._gallery_index(budget)
                for probe in probes:
                    budget.check()
                    if len(probe) and any(
                        other != subject and score >= self.duplicate_threshold
                        for other, score in gallery.search(probe, top_k=2)
                    ):
                        duplicate = True
                        break
            return _EnrollChecks(not_theirs, duplicate, (time.perf_counter() - started) * 1000)

        def finish(checks: _EnrollChecks) -> Answer:
            if spent is None:
                self.check_still_first(request, subject)
            else:
                self.check_still_missing(request, subject, FINGER, spent, seen)
            if checks.not_theirs:
                raise self.refused(
                    request,
                    Problem(
                        "not-the-verified-person",
                        f"{checks.not_theirs} of the {len(views)} templates do not match subject {subject!r}",
                        "add captures of the verified person's enrolled fingers only; "
                        "a new finger needs a new enrollment by the operator",
                    ),
                    "added templates do not match the subject",
                    subject=subject,
                )
            if checks.duplicate:
                raise self.refused(
                    request,
                    Problem(
                        "duplicate-identity",
                        "a template of this enrollment matches a subject already enrolled under another id",
                        "verify the person under their existing id; ask the operator if the match is wrong",
                    ),
                    "template matches another subject",
                    subject=subject,
                )
            if recorded is None:
                self.subjects.assign(subject, group)
            self.enrollments.add(subject, device_id, records)
            self._new_generation(subject)
            self.after_commit(lambda: self._into_gallery(subject, views))
            log.info(
                "enrollment",
                audit=True,
                device_id=device_id,
                subject=subject,
                group=group,
                templates=len(records),
                with_session_token=enrolled,
                token_scope=spent.scope if spent is not None else None,
                match_ms=round(checks.match_ms, 3),  # the operator's: the answer has no Server-Timing (Route.timed)
            )
            answer = {"subject": subject, "group": group, "templates": len(records)}
            return json_answer(201, answer)

        def undo() -> None:  # the verifier could not decide: the nonce and the token are given back
            self.challenges.release(device_id, str(body["nonce"]))
            self.give_back_token(spent, seen)

        # One finger enrollment at a time from its search to its insert: the search saw every finger stored.
        return Deferred(device_id, work, finish, undo, serial=ENROLL_FINGERS)

    def check_room(self, request: Request, subject: str, modality: str, held: int, adding: int) -> None:
        """409 ``subject-full`` (audited) when ``adding`` more templates of ``modality`` would take the subject past
        ``max_templates_per_subject``.

        Why: a person adds to their own enrollment with a token from their own verification, which a device
        holding an enrolled subject gets at will; unbounded, the additions grew the database and the gallery that
        every identification and every enrollment's duplicate search goes through, whose thresholds tighten with
        its size (genuine people no longer found, new people refused as duplicates of the bloated subject).
        """
        if held + adding <= self.max_templates:
            return
        what = "finger views" if modality == FINGER else "faces"
        raise self.refused(
            request,
            Problem(
                "subject-full",
                f"subject {subject!r} holds {held} {what}; {adding} more would pass the {self.max_templates} the "
                "verifier keeps per person",
                "verify instead of adding: the person is enrolled; to start again, ask the operator "
                f"(capture-verifier subject remove {subject}, then a first enrollment), who may also raise "
                "max_templates_per_subject",
            ),
            "subject holds the most templates",
            subject=subject,
            modality=modality,
            held=held,
        )

    def give_back_token(self, spent: SpentToken | None, seen: Seen) -> None:
        """An undecided enrollment's token, back: unless its subject was removed since its handler's ``seen``.

        The removal deleted the subject's tokens; given back, one would let its
        holder add templates to whoever enrolls the id next. Another subject's removal
        keeps it: the device retries with it after the 503.
        """
        if spent is not None and self.still_held(spent.subject_id, seen):
            self.sessions.give_back(spent)

    def give_back_step_up(self, step_id: str, pending: Pending, seen: Seen) -> None:
        """An undecided verification's step-up, back: unless its subject was removed since its handler's ``seen``.

        Its first capture is the removed person's, matched on their templates: given back,
        it would complete a verification of whoever enrolled the id again meanwhile.
        """
        if self.still_held(pending.subject_id, seen):
            self.stepup.give_back(step_id, pending)

    def check_still_missing(self, request: Request, subject: str, factor: str, spent: SpentToken,
                            seen: Seen) -> None:
        """At an insert made with a token (on the loop): the subject is still enrolled, and an enrollment token's
        factor still missing.

        The operator may have removed the subject while this was matched (`subject remove`):
        adding would bring back part of an erased enrollment, or, the id enrolled again by
        someone else meanwhile, add the removed person's templates to theirs. Another request (another
        enrollment token of the same subject) may have added the factor while this one was
        matched; the templates of this one were never compared with those, so an enrollment
        token never adds to a factor already there.
        """
        if not self.still_held(subject, seen):
            raise self.refused(
                request,
                _removed_subject(subject, "this enrollment"),
                "subject removed while the enrollment was checked",
                subject=subject,
            )
        if spent.scope == SENSOR_SESSION:
            # A portable factor added meanwhile (the grant was for a subject with none), or the grant withdrawn
            # or used by another request: refused; otherwise the grant is spent with this insert.
            if self.has_portable(subject) or not self.sensor_prints.use_portable_grant(subject):
                self.check_portable_add(request, subject, factor)  # raises: no grant, or a portable factor
            return
        if spent.scope != SESSION and self.has_factor(subject, factor):
            raise self.refused(
                request,
                Problem(
                    "session-token-refused",
                    f"subject {subject!r} was given a {factor} by another request while this one was checked",
                    "verify the subject with every factor its rule needs, then add with that session token",
                ),
                "enrollment token for a factor added meanwhile",
                subject=subject,
                token_scope=spent.scope,
            )

    def check_id_free(self, request: Request, subject: str) -> None:
        """409 ``subject-id-taken`` (audited) when a first enrollment's id is another subject's but for letter case.

        Without it a device could enroll its holder as "Alice" beside the enrolled
        "alice": one id to the verifier, the same person to whoever reads its
        accepts. The answer names no other id.
        """
        if same_but_for_case(self.subjects.conn, subject):
            raise self.refused(
                request,
                Problem(
                    "subject-id-taken",
                    f"a subject is enrolled under an id that differs from {subject!r} only in letter case",
                    "enroll under another id, or under the enrolled one with the person's verification "
                    "(capture-agent enroll --subject ID --add): ids that differ only in case read as one person",
                ),
                "subject id taken but for letter case",
                subject=subject,
            )

    def check_still_first(self, request: Request, subject: str) -> None:
        """At an enrollment's insert (on the loop, in its transaction): a first enrollment is still the first.

        The handler found the subject unenrolled and asked for no session token;
        another device's first enrollment of the same id (a finger, a face or a
        sensor print) may have been stored while this one was matched. Storing
        this one too would add a second person's templates to that subject
        without their verification.
        """
        self.check_id_free(request, subject)  # a case variant stored meanwhile, by another modality's enrollment
        if self.is_enrolled(subject):
            raise self.refused(
                request,
                Problem(
                    "verification-required",
                    f"subject {subject!r} was enrolled by another request while this one was checked",
                    "verify the subject first on this device and send its session_token with the enrollment "
                    "(capture-agent enroll --add)",
                ),
                "first enrollment of a subject enrolled meanwhile",
                subject=subject,
            )

    def verify(self, request: Request) -> Deferred:
        assert request.device is not None
        device_id = request.device.device_id
        body, carried = self._checked(request, "verify")
        seen = self.seen()
        records = carried.records
        subject = body.get("subject")
        if not isinstance(subject, str) or not SUBJECT_ID.fullmatch(subject):
            raise self.refused(
                request, Problem("bad-subject", "the body needs a claimed subject", 'add "subject": "<id>"'),
                "malformed subject",
            )
        self.check_visible(request, subject)  # another group's subject reads as an unknown one
        if not self.is_enrolled(subject):
            raise self._unknown_subject(device_id, subject)
        self.check_subject_rate(device_id, subject, request)
        locked = self.lockouts.locked_for(device_id, subject)
        if locked > 0:
            raise self.attempt_refused(
                device_id, subject, "locked_out", locked_out(subject, locked), locked_for_s=round(locked, 1)
            )
        if carried.has_faces:
            return self.faces.verify(request, body, carried, subject, seen)
        views = self._views(request, carried)
        pending = None
        step_id = body.get("step_up")
        if step_id is not None:
            pending = self.stepup.take(str(step_id), device_id, subject)
            if pending is not None and FACE_REQUIRED in pending.reasons:  # asked for a face, sent a finger
                self.stepup.give_back(str(step_id), pending)
                pending = None
            if pending is None:
                raise self.attempt_refused(
                    device_id,
                    subject,
                    "step_up_unknown",
                    Problem(
                        "step-up-unknown",
                        "no pending step-up with this id for you",
                        "start the verification again",
                    ),
                )
        first_views = [t for record in pending.first_records for t in decode(record)] if pending else []
        generation, templates, count = self._subject_templates(subject)
        try:
            self.charge(request, len(views) * (count + len(first_views)))
        except Problem:  # a 429 is no answer to the step-up: it stays pending for a lighter retry
            if pending is not None:
                self.stepup.give_back(str(step_id), pending)
            raise

        def work(budget: Budget) -> _Scored:
            started = time.perf_counter()
            enrolled = self._subject_pack(subject, generation, templates, budget)
            probes = self._probes(views, budget)
            score = self._best_score(probes, enrolled, budget)
            same_finger = None
            if pending is not None:  # the step-up's finger must differ from the first one
                first = [c for c in self._probes(first_views, budget) if len(c)]
                same_finger = (
                    self._best_score(probes, mcc_match.pack(first) if first else None, budget) >= self.threshold
                )
            return _Scored(enrolled is not None, score, same_finger, (time.perf_counter() - started) * 1000)

        def finish(scored: _Scored) -> Answer:
            if not scored.enrolled or not self.still_held(subject, seen, (FINGER,)):
                raise self._unknown_subject(device_id, subject)  # (removed while matched: its templates are gone)
            if pending is not None:
                decision = "accept" if scored.score >= self.threshold and not scored.same_finger else "reject"
                reason = "step-up with the same finger" if scored.same_finger else ""
                if decision == "accept" and pending.acr != ACR_FINGER and FACE in self.faces.required(subject):
                    # Two fingers (or a sensor's and a template) are not a face: the rule still needs one.
                    # A step-up asking a finger (ACR_FINGER) was opened by a face: that face was matched.
                    if not self.faces.enrolled(subject):  # ... which she has none of: she may add one, no more
                        return self.grant_missing_factor(device_id, subject, FINGER, FACE, scored.score)
                    return self.faces.ask(device_id, subject, [], [FACE_REQUIRED], scored.score, ACR_FACE)
                return self._decided(device_id, subject, decision, scored, step_up=pending.reasons, reason=reason)
            face_required = FACE in self.faces.required(subject)
            if scored.score >= self.threshold and face_required and self.faces.enrolled(subject):
                return self.faces.ask(device_id, subject, records, [FACE_REQUIRED], scored.score, ACR_FACE)
            if scored.score >= self.threshold:
                # The finger path's own step-up first (a second finger), with or without a face to add after it.
                failures = self.lockouts.failures(subject)
                reasons = self.stepup.reasons(device_id, subject, scored.score, self.threshold, failures)
                if reasons:
                    return self._ask_step_up(device_id, subject, records, reasons, scored.score)
                if face_required:  # the rule's face is not enrolled: it cannot be asked, only added
                    return self.grant_missing_factor(device_id, subject, FINGER, FACE, scored.score)
            return self._decided(device_id, subject, "accept" if scored.score >= self.threshold else "reject", scored)

        def undo() -> None:
            self.challenges.release(device_id, str(body["nonce"]))
            if pending is not None:
                self.give_back_step_up(str(step_id), pending, seen)

        return Deferred(device_id, work, finish, undo)

    def decided(self, device_id: str, subject: str, accepted: bool, first_use_done: bool = True,
                scope: str = SESSION) -> dict[str, Any]:
        """What every 1:1 decision does, whatever decided it: a template, a face, a sensor's match, a step-up's answer.

        The lockout counts it (a reject is a failure, an accept resets); an accept
        issues the single-use session token, whose fields are returned for the
        answer, and is the device's first use done (no first-use step-up after it)
        unless ``first_use_done`` is False: a sensor's own word, never checked by
        the verifier, must not stand in for the second finger the first use asks.
        ``scope``: the token's (:data:`~verifier.sessions.SENSOR_SESSION` for a sensor's word alone, which adds
        no portable factor: :meth:`check_portable_add`).
        """
        self.lockouts.record(device_id, subject, accepted)
        if not accepted:
            return {}
        if first_use_done:
            self.stepup.completed(device_id)
        return self.sessions.issue(device_id, subject, scope)

    def grant_missing_factor(self, device_id: str, subject: str, matched: str, missing: str, score: float) -> Answer:
        """A factor rule needs ``missing``, which the subject has never enrolled: 403 ``factor-not-enrolled``
        carrying an enrollment token for that factor only (audited).

        Why: adding a factor to an enrolled subject needs a token, a token needs an
        accepted decision, and under the rule no decision is accepted without the
        missing factor; without this no new member of a group whose rule came first
        could ever enroll both factors without the operator. Called only where a
        full session token would have been issued but for the rule (``matched``
        matched, the step-up policy's own reasons answered), so it authorises no more
        than that token would: less. It is no decision: no accept is counted (the
        lockout count, the device's first use and the answer stay as they were), the
        answer is a refusal, and the token (scope ``enroll:<missing>``) is refused by
        every route but an enrollment of ``missing`` for this subject while it still
        has none (never a graft onto a factor it has, never a sensor print, never a
        session); the subject's next verification needs both factors.
        """
        scope = enroll_scope(missing)
        granted = self.sessions.issue(device_id, subject, scope)
        log.info(
            "verification_attempt",
            audit=True,
            device_id=device_id,
            subject=subject,
            outcome="factor_not_enrolled",
            modality=matched,
            missing_factor=missing,
            score=round(score, 4),
            enrollment_token_issued=scope,
        )
        adding = "--face " if missing == FACE else ""
        problem = Problem(
            "factor-not-enrolled",
            f"subject {subject!r} must verify with a {matched} and a {missing}, and has no {missing} enrolled; "
            f"the {matched} matched: enrollment_token adds a {missing}, and nothing else",
            f"enroll a {missing} with this enrollment_token: capture-agent enroll {adding}--subject {subject} --add",
            extra=(
                ("factor", missing),
                ("enrollment_token", granted["token"]),
                ("expires_at", granted["expires_at"]),
                ("expires_in", granted["expires_in"]),
            ),
        )
        return Answer(problem.status, PROBLEM_CONTENT_TYPE, problem.body(), problem.headers)

    def _unknown_subject(self, device_id: str, subject: str) -> Problem:
        return self.attempt_refused(device_id, subject, "unknown_subject", _unknown_subject(subject))

    @staticmethod
    def attempt_refused(device_id: str, subject: str, outcome: str, problem: Problem, **fields: Any) -> Problem:
        """A verification that ends before matching: audited with its outcome, then answered."""
        log.warning("verification_attempt", audit=True, device_id=device_id, subject=subject, outcome=outcome, **fields)
        return problem

    def _ask_step_up(
        self, device_id: str, subject: str, records: list[bytes], reasons: list[str], score: float
    ) -> Answer:
        """RFC 9470: 401 insufficient_user_authentication, naming the factor still needed."""
        step = self.stepup.open(device_id, subject, records, reasons, ACR_SECOND_FINGER)
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

    def _decided(
        self,
        device_id: str,
        subject: str,
        decision: str,
        scored: _Scored,
        step_up: list[str] | None = None,
        reason: str = "",
    ) -> Answer:
        score = scored.score
        log.info(
            "verification_attempt",
            audit=True,
            device_id=device_id,
            subject=subject,
            outcome=decision,
            modality=FINGER,
            score=round(score, 4),
            step_up=",".join(step_up or []),
            reason=reason or ("score above threshold" if decision == "accept" else "score below threshold"),
        )
        answer: dict[str, Any] = {
            "subject": subject,
            "decision": decision,
            "score": round(score, 4),
            "threshold": round(self.threshold, 4),
            "modality": FINGER,  # what decided: this request's finger, a step-up's too
        }
        answer.update(self.decided(device_id, subject, decision == "accept"))
        timing = f"match;dur={scored.match_ms:.3f}".encode()  # Server-Timing: what the device cannot see
        return json_answer(200, answer, ((b"server-timing", timing),))

    def check_rate(
        self, request: Request, limit: RateLimit, asked: str, reason: str, fix: str = ""
    ) -> None:
        """429 (audited, with Retry-After) when the device has asked too many ``asked`` this minute."""
        assert request.device is not None
        device_id = request.device.device_id
        wait = self.counted(request, limit, device_id)
        if wait > 0:
            raise self.flooded(
                request,
                Problem(
                    "device-rate-limited",
                    f"device {device_id} asked for too many {asked}; wait {wait:.0f} s",
                    fix,
                    headers=((b"retry-after", str(int(wait) + 1).encode()),),
                ),
                reason,
                wait_s=round(wait, 1),
            )

    def refuse_if_unreachable(self, request: Request, modality: str, threshold: float, *, views: int, searched: int,
                              capacity: int, groups: frozenset[str] | None, setting: str) -> None:
        """422 ``identification-unreachable`` (audited, and logged with its fix) when ``threshold`` is above any
        score: the search would name nobody, its own subject included (verifier/ranking.py says why a refusal).
        ``setting``: the key of the rate in force (identify_fpir or the modality's own), for the operator's log.

        Before the device's matching allowance is charged and before any matching: nothing is searched for it.
        """
        assert request.device is not None
        comparisons = views * searched
        if warn_if_unreachable(modality, threshold, comparisons, capacity, device_id=request.device.device_id,
                               views=views, templates=searched, setting=setting):
            raise self.refused(  # the counts in the log only: the answer must not tell the gallery's size
                request, unreachable_problem(modality, views=views),
                "identification past its capacity", modality=modality, comparisons=comparisons,
                templates=searched, largest_search=capacity, groups=searched_groups(groups),
            )

    def still_enrolled(self, best: dict[str, float], seen: Seen, kind: str) -> dict[str, float]:
        """On the loop, at a 1:N decision: ``best`` without subjects removed while it was matched.

        Its search ran on the gallery as it was when the job started; a subject the
        operator removed meanwhile must not be named, nor its id if someone else enrolled
        under it since (the score is the removed person's): only subjects still holding a
        ``kind`` template stored before the handler's ``seen`` are kept. Asked only when a
        removal happened since ``seen`` (no query otherwise).
        """
        if not self.removed_during(seen):
            return best
        conn = self.subjects.conn
        return {subject: score for subject, score in best.items() if held_since(conn, subject, seen, (kind,))}

    def unlocked(self, device_id: str, best: dict[str, float]) -> tuple[dict[str, float], int]:
        """On the loop, at the decision: ``best`` without the subjects this device is locked out of, and how many.

        A locked-out device must not learn from 1:N what 1:1 refuses to tell it:
        whether a probe matches that subject.
        """
        locked = self.lockouts.locked_subjects(device_id) & best.keys()
        return {s: score for s, score in best.items() if s not in locked}, len(locked)

    def identify(self, request: Request) -> Deferred:
        """1:N among the subjects of the groups this device may act on and is not locked out of, best first."""
        assert request.device is not None
        device_id = request.device.device_id
        body, carried = self._checked(request, "identify")
        seen = self.seen()
        self.check_rate(  # each identification tests every subject
            request, self.identify_rate, "1:N searches (identifications and enrollments)", "identification rate limit",
            "wait; a kiosk identifies one person at a time (a stuck loop? someone testing probes?)",
        )
        views = self._views(request, carried)
        allowed = self.rules.groups(device_id)
        if carried.has_faces:
            return self.faces.identify(request, body, carried, allowed, seen)
        among = None if allowed is None else self.subjects.members(self.enrollments.subject_ids(), allowed)
        self._load_gallery()
        searched = self._gallery_size if among is None else sum(self._templates_of[s] for s in among)
        threshold = identification_threshold(threshold_for_fmr, self.identify_fpir, len(views) * searched,
                                             self.threshold)
        self.refuse_if_unreachable(request, FINGER, threshold, views=len(views), searched=searched,
                                   capacity=self.identify_capacity, groups=allowed, setting=self.identify_setting)
        # The answer's threshold is the search's decade's, not the exact one: that would tell the gallery's size.
        told = reported_threshold(threshold_for_fmr, self.identify_fpir, views=len(views), templates=searched,
                                  verify_threshold=self.threshold)
        # The comparisons it makes: the templates of the groups it may search (the gallery's search is restricted
        # to them), not the whole gallery a lobby kiosk never touches (faces charge the same way).
        self.charge(request, len(views) * charged_templates(searched))  # a decade's figure: not the size

        def work(budget: Budget) -> tuple[dict[str, float], float]:
            started = time.perf_counter()
            best: dict[str, float] = {}
            probes = [p for p in self._probes(views, budget) if len(p)]
            with self._gallery_lock:
                gallery = self._gallery_index(budget)
                for probe in probes:
                    budget.check()
                    for subject, score in gallery.search(probe, top_k=IDENTIFY_TOP_K, among=among):
                        best[str(subject)] = max(best.get(str(subject), 0.0), float(score))
            return best, (time.perf_counter() - started) * 1000

        def finish(result: tuple[dict[str, float], float]) -> Answer:
            best, match_ms = result
            best = self.still_enrolled(best, seen, FINGER)
            best, locked = self.unlocked(device_id, best)
            candidates = ranked(best, threshold)
            log.info(
                "identification_attempt",
                audit=True,
                device_id=device_id,
                outcome="candidates" if candidates else "no_candidate",
                candidates=len(candidates),
                locked_out=locked,
                groups=searched_groups(allowed),
                match_ms=round(match_ms, 3),  # the operator's: the answer has no Server-Timing (Route.timed)
            )
            answer = {"candidates": candidates, "threshold": told}
            return json_answer(200, answer)

        return Deferred(device_id, work, finish, lambda: self.challenges.release(device_id, str(body["nonce"])))


@dataclass(frozen=True)
class _SubjectPack:
    generation: int
    packed: mcc_match.Packed | None
    templates: int


@dataclass(frozen=True)
class _Scored:
    enrolled: bool  # the subject has usable templates
    score: float
    same_finger: bool | None  # step-up only: the second finger matched the first
    match_ms: float


@dataclass(frozen=True)
class _EnrollChecks:
    not_theirs: int  # added templates that do not match the enrolled subject
    duplicate: bool  # a template matches another subject
    match_ms: float


def view_problem(index: int, view: int, template: FingerprintTemplate) -> tuple[str, str] | None:
    """Why one finger view is refused (the problem's detail, the audit reason), or None when it is acceptable.

    The protocol's minutiae bounds, then the orientation field the score needs:
    present, covering the view's own minutiae, and spreading its weight over its
    foreground as an extracted field does (protocol.templates names each fix).
    """
    checks = (
        (minutiae_problem(index, view, len(template.minutiae)), "minutiae out of bounds"),
        (field_problem(index, view, template.orientation is not None), "no orientation field"),
    )
    for detail, reason in checks:
        if detail is not None:
            return detail, reason
    coverage = orientation_field.minutiae_coverage(template)
    detail = coverage_problem(index, view, coverage, orientation_field.MIN_COVERAGE)
    if detail is not None:
        return detail, "orientation field does not cover"
    spread = orientation_field.weight_spread(template.orientation)
    detail = spread_problem(index, view, spread, orientation_field.MIN_WEIGHT_SPREAD)
    return None if detail is None else (detail, "orientation field weight concentrated")


def _unknown_subject(subject: str) -> Problem:
    return Problem(
        "unknown-subject",
        f"no enrollment for subject {subject!r}",
        f"enroll the subject first: capture-agent enroll --subject {subject}",
    )


def _removed_subject(subject: str, what: str) -> Problem:
    """An ``unknown-subject`` for a request whose subject the operator removed while it was matched."""
    return Problem(
        "unknown-subject",
        f"no enrollment for subject {subject!r}: the operator removed it while {what} was checked",
        f"enroll the subject again as a first enrollment: capture-agent enroll --subject {subject}",
    )


def locked_out(subject: str, seconds: float) -> Problem:
    """The 429 of a subject locked out on this device for ``seconds`` more (Retry-After), for every route."""
    return Problem(
        "subject-locked",
        f"too many failed attempts for {subject!r} on this device; locked for {seconds:.0f} s more",
        "wait, or verify another way; each further lockout doubles",
        headers=((b"retry-after", str(int(seconds) + 1).encode()),),
    )
