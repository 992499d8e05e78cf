"""Faces on the verifier: enrollment at rest, 1:1 and 1:N matching, the factor policy, the liveness audit.

A face travels as protocol/face_template.py records in a ``faces`` list in
place of the fingerprint ``templates`` (one modality per request), inside the
same signed request behind the same gate
(:meth:`verifier.biometric.BiometricRoutes.signed_content`), parsed by
:func:`verifier.content.carried_of` like fingers. The routes in
:mod:`verifier.biometric` hand a request with faces to :class:`FaceRoutes`.

- At rest: each embedding record is one row of ``face_enrollments``, AES-GCM
  under the same enrollment key as fingerprints, with ``b"face\\0" + subject`` as
  associated data (a row moved to another subject, or into the finger table,
  does not decrypt).
- One person: the faces of a request are views of one person, every pair scoring at the threshold
  or above; a request mixing people is refused (422 ``bad-template``, naming the face).
- Matching: the score is the cosine of two unit embeddings; 1:1 takes the best
  over the probe's and the subject's embeddings, 1:N is one matrix product over
  every embedding of the allowed groups' subjects. Both run in the matching pool.
  The threshold is :func:`biometrics.face.threshold_for_fmr` of the verifier's
  ``target_fmr`` (the same false match rate as fingers, each modality calibrated
  on its own impostor scores).
- Liveness: the device runs the head-turn challenge ``challenge_for(nonce)`` of
  the nonce it signs; the verifier derives the same challenge from the nonce it
  issued, refuses a request that claims another one, and audits the steps asked.
  The verifier cannot see the turns themselves: it trusts the device (its key,
  its access rule) for having run them, and records what was asked.
- Factors: a rule per subject or per group (``capture-verifier subject require``
  / ``group require``) names the factors a verification needs, e.g. finger and
  face. A match of one factor when the rule needs the other is answered with an
  RFC 9470 step-up whose ``acr_values`` names the missing factor. When the
  subject has never enrolled that factor, no step-up could be answered: a match
  that would otherwise have decided is answered 403 ``factor-not-enrolled`` with
  a token that enrolls the missing factor only
  (:meth:`verifier.biometric.BiometricRoutes.grant_missing_factor`).
- Step-up policy: a matched face meets the same reasons as a matched finger
  (:class:`verifier.stepup.StepUpPolicy`: weak margin, recent failures, a
  high-risk subject, the device's first use) and is answered with a step-up
  asking a finger (``acr_values="finger"``); the face alone neither decides nor
  ends the device's first use then.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from biometrics.face import challenge_for, threshold_for_fmr
from protocol.face_template import ACR_FACE, ACR_FINGER, FACE, FACTORS, FINGER, decode
from verifier.http import Answer, Deferred, Request, json_answer
from verifier.matching import Budget
from verifier.problems import CONTENT_TYPE as PROBLEM_CONTENT_TYPE
from verifier.problems import Problem
from verifier.ranking import (
    charged_templates,
    identification_capacity,
    identification_threshold,
    ranked,
    reported_threshold,
    searched_groups,
)

if TYPE_CHECKING:
    from verifier.biometric import BiometricRoutes
    from verifier.content import Carried
    from verifier.sessions import SpentToken
    from verifier.subjects import Seen

log = structlog.get_logger()

FACE_REQUIRED = "policy_requires_face"  # step-up reason: the factor rule needs a face
FINGER_REQUIRED = "policy_requires_finger"  # ... a finger
# The faces of one request must be of one person (:meth:`FaceRoutes._one_person`) at this false match rate, far
# looser than a verification's: the check refuses a mix of people, it does not authenticate anyone. At the 1:1
# threshold (1e-4: 0.535) 70 of 1,800 same-person pairs of ORL faces (3.9 %) fell under it, so an enrollment's
# three views refused about one genuine person in nine; at 1e-2 (0.332) 0.3 % of those pairs do, and a stranger's
# face still passes as the same person only once in a hundred, before it must match the enrolled ones as well.
ONE_PERSON_FMR = 1e-2
ENROLL_FACES = "enroll-faces"  # the serial key of face enrollments (verifier.matching: search to insert)

SCHEMA = """
CREATE TABLE IF NOT EXISTS face_enrollments (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    created_at REAL NOT NULL,
    nonce      BLOB NOT NULL,
    ciphertext BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS face_enrollments_subject ON face_enrollments (subject_id);
CREATE INDEX IF NOT EXISTS face_enrollments_nocase ON face_enrollments (subject_id COLLATE NOCASE);
CREATE TABLE IF NOT EXISTS required_factors (
    scope   TEXT NOT NULL,   -- 'subject' or 'group'
    name    TEXT NOT NULL,
    factors TEXT NOT NULL,   -- comma list of protocol.face_template.FACTORS
    PRIMARY KEY (scope, name)
);
"""


def associated_data(subject_id: str) -> bytes:
    """What a face row is sealed with besides its plaintext: its subject (a row moved to another does not open)."""
    return b"face\x00" + subject_id.encode()


class FaceEnrollments:
    """Face embedding records, encrypted at rest under the enrollment key (one row each)."""

    def __init__(self, conn: sqlite3.Connection, key: bytes) -> None:
        self.conn = conn
        self.conn.executescript(SCHEMA)
        self._aead = AESGCM(key)

    def add(self, subject_id: str, device_id: str, records: list[bytes]) -> None:
        for record in records:
            nonce = secrets.token_bytes(12)
            sealed = self._aead.encrypt(nonce, record, associated_data(subject_id))
            self.conn.execute(
                "INSERT INTO face_enrollments (subject_id, device_id, created_at, nonce, ciphertext) "
                "VALUES (?, ?, ?, ?, ?)",
                (subject_id, device_id, time.time(), nonce, sealed),
            )

    def exists(self, subject_id: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM face_enrollments WHERE subject_id = ? LIMIT 1", (subject_id,))
        return row.fetchone() is not None

    def subject_ids(self) -> set[str]:
        return {str(r[0]) for r in self.conn.execute("SELECT DISTINCT subject_id FROM face_enrollments")}

    def embeddings(self, subject_id: str) -> np.ndarray:
        """The subject's embeddings as an (n, dim) float32 array (n may be 0)."""
        rows = self.conn.execute(
            "SELECT nonce, ciphertext FROM face_enrollments WHERE subject_id = ? ORDER BY id", (subject_id,)
        ).fetchall()
        return _matrix([self._aead.decrypt(n, c, associated_data(subject_id)) for n, c in rows])

    def gallery(self) -> tuple[list[str], np.ndarray]:
        """Every enrolled embedding: the subject of each row, and the (N, dim) matrix."""
        subjects, records = [], []
        for subject_id, nonce, sealed in self.conn.execute(
            "SELECT subject_id, nonce, ciphertext FROM face_enrollments ORDER BY id"
        ):
            subjects.append(subject_id)
            records.append(self._aead.decrypt(nonce, sealed, associated_data(subject_id)))
        return subjects, _matrix(records)


def _matrix(records: list[bytes]) -> np.ndarray:
    if not records:
        return np.zeros((0, 128), np.float32)
    return np.array([decode(r).values for r in records], np.float32)


class FactorRules:
    """Which factors a verification of a subject needs: the union of its own rule and its group's."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.conn.executescript(SCHEMA)

    def set(self, scope: str, name: str, factors: list[str]) -> None:
        if scope not in ("subject", "group"):
            raise ValueError(f"a factor rule is for a subject or a group, not {scope!r}")
        unknown = sorted(set(factors) - set(FACTORS))
        if unknown or not factors:
            raise ValueError(f"factors are a comma list of {', '.join(FACTORS)}; got {', '.join(factors) or 'none'}")
        self.conn.execute(
            "INSERT INTO required_factors (scope, name, factors) VALUES (?, ?, ?) "
            "ON CONFLICT(scope, name) DO UPDATE SET factors = excluded.factors",
            (scope, name, ",".join(f for f in FACTORS if f in factors)),
        )

    def required(self, subject_id: str, group: str) -> set[str]:
        rows = self.conn.execute(
            "SELECT factors FROM required_factors "
            "WHERE (scope = 'subject' AND name = ?) OR (scope = 'group' AND name = ?)",
            (subject_id, group),
        ).fetchall()
        return {f for (factors,) in rows for f in factors.split(",") if f}


@dataclass(frozen=True)
class _FaceScored:
    score: float
    match_ms: float


class FaceRoutes:
    """The face side of enroll, verify and identify; the gate and the subject checks stay in BiometricRoutes."""

    def __init__(self, bio: BiometricRoutes, conn: sqlite3.Connection, key: bytes, target_fmr: float,
                 duplicate_fmr: float, identify_fpir: tuple[str, float]) -> None:
        """``identify_fpir``: the key and the rate of face identifications (face_identify_fpir, or identify_fpir
        when that is not set; VerifierSettings.identify_fpir_of), the key for the start refusal's fix."""
        self.bio = bio
        self.store = FaceEnrollments(conn, key)
        self.rules = FactorRules(conn)
        self.threshold = threshold_for_fmr(target_fmr)
        self.duplicate_threshold = threshold_for_fmr(duplicate_fmr)
        self.one_person_threshold = threshold_for_fmr(ONE_PERSON_FMR)
        # 1:N's threshold grows with the search (verifier/ranking.py)
        self.identify_setting, self.identify_fpir = identify_fpir
        # Faces reach their highest score (a cosine of 1) first: at the default identify_fpir, past some 376,000
        # comparisons. SettingsError when even one cannot (verifier/ranking.py: refuse a setting, warn a gallery).
        self.identify_capacity = identification_capacity(FACE, threshold_for_fmr, fpir=self.identify_fpir,
                                                         verify_threshold=self.threshold,
                                                         setting=self.identify_setting)
        # Every enrolled embedding: loaded once on the loop, then each enrollment's appended (a new tuple, so a
        # pool thread holding the previous one reads it unchanged).
        self._gallery: tuple[list[str], np.ndarray] | None = None

    # ---------------------------------------------------------------- checks
    def records(self, request: Request, body: dict[str, Any], carried: Carried, operation: str,
                subject: str | None) -> list[bytes]:
        """The request's face records (parsed by the gate), after the liveness claim is checked against the nonce.

        Each modality is decided on its own request (the second through a step-up):
        :func:`verifier.content.carried_of` refuses one carrying fingers and faces.
        """
        assert request.device is not None
        records, claimed = carried.faces, carried.liveness
        asked = challenge_for(str(body["nonce"]).encode("ascii")).steps
        if claimed != asked:
            raise self.bio.refused(
                request,
                Problem(
                    "liveness-mismatch",
                    "the liveness challenge the request claims is not the one its nonce asks for",
                    "run the head-turn challenge derived from this request's nonce (biometrics.face.challenge_for)",
                ),
                "liveness challenge not the nonce's",
                subject=subject,
                operation=operation,
                liveness_asked=",".join(asked),
                liveness_claimed=",".join(claimed),
            )
        log.info("face_liveness", audit=True, device_id=request.device.device_id, subject=subject,
                 operation=operation, liveness_asked=",".join(asked), result="passed")
        self._one_person(request, records, operation, subject)
        return records

    def _one_person(self, request: Request, records: list[bytes], operation: str, subject: str | None) -> None:
        """Refuse a request whose faces are not all of one person (each pair at :data:`ONE_PERSON_FMR`'s threshold).

        Why: the faces of a request are views from one challenge, of the person who ran it; but a first face
        enrollment was compared with nothing (only a face added to a subject's was matched against theirs), so
        faces of two people under one id let either of them verify as it, and a verification's or an
        identification's faces of several people were that many tries at one nonce. A few views: a few dot
        products, on the loop.
        """
        if len(records) < 2:
            return
        views = _matrix(records)
        scores = views @ views.T
        pairs = np.argwhere(np.triu(scores < self.one_person_threshold, 1))  # (earlier, later) views that do not match
        if not len(pairs):
            return
        first, other = (int(v) for v in min(pairs.tolist(), key=lambda pair: (pair[1], pair[0])))
        low = float(scores[first, other])
        item = f"faces[{other}]"  # the first view that is not of the person of a view before it
        raise self.bio.refused(
            request,
            Problem(
                "bad-template",
                f"{item} is not of the person of faces[{first}] (score {low:.3f}, under the threshold "
                f"{self.one_person_threshold:.3f}): the faces of one request are views of one person",
                "send the embeddings of one person's capture, all made in one challenge; capture again",
            ),
            "faces of more than one person",
            subject=subject,
            operation=operation,
            modality=FACE,
            item=item,
        )

    def enrolled(self, subject_id: str) -> bool:
        return self.store.exists(subject_id)

    def required(self, subject_id: str) -> set[str]:
        return self.rules.required(subject_id, self.bio.subjects.group_of(subject_id))

    # ---------------------------------------------------------------- enroll
    def enroll(self, request: Request, body: dict[str, Any], carried: Carried, subject: str, group: str,
               recorded: str | None, spent: SpentToken | None, seen: Seen) -> Deferred:
        """Add faces to a subject: no other subject may match them, and an enrolled face must match them.

        ``spent`` is the token BiometricRoutes took (spent by this attempt whatever it gives) for a subject
        already enrolled: a session token, or an enrollment token for a face (the subject has none); it is
        given back only when the verifier could not decide (and no subject was removed since ``seen``, what
        its handler read: :meth:`BiometricRoutes.give_back_token`).
        """
        has_token = spent is not None
        assert request.device is not None
        device_id = request.device.device_id
        records = self.records(request, body, carried, "enroll", subject)
        probes = _matrix(records)
        own = self.store.embeddings(subject)
        self.bio.check_room(request, subject, FACE, len(own), len(records))
        self.bio.charge(request, len(records) * charged_templates(len(self._gallery_now()[0]) + len(own)))

        def work(budget: Budget) -> tuple[int, bool, float]:
            started = time.perf_counter()
            budget.check()
            # Read now, in this enrollment's turn (ENROLL_FACES): every face stored before it is in it. Loaded
            # by the handler above, so this thread never reads the database.
            assert self._gallery is not None
            subjects, gallery = self._gallery
            not_theirs = int(((probes @ own.T).max(axis=1) < self.threshold).sum()) if len(own) else 0
            others = np.array([s != subject for s in subjects], bool)
            duplicate = bool(len(subjects) and ((probes @ gallery[others].T) >= self.duplicate_threshold).any())
            return not_theirs, duplicate, (time.perf_counter() - started) * 1000

        def finish(result: tuple[int, bool, float]) -> Answer:
            not_theirs, duplicate, match_ms = result
            if spent is None:
                self.bio.check_still_first(request, subject)
            else:
                self.bio.check_still_missing(request, subject, FACE, spent, seen)
            if not_theirs:
                raise self.bio.refused(
                    request,
                    Problem("not-the-verified-person",
                            f"{not_theirs} of the {len(records)} faces do not match subject {subject!r}",
                            "enroll faces of the verified person only"),
                    "added faces do not match the subject", subject=subject, modality=FACE)
            if duplicate:
                raise self.bio.refused(
                    request,
                    Problem("duplicate-identity",
                            "a face of this enrollment matches a subject enrolled under another id",
                            "verify the person under their existing id; ask the operator if the match is wrong"),
                    "face matches another subject", subject=subject, modality=FACE)
            if recorded is None:
                self.bio.subjects.assign(subject, group)
            self.store.add(subject, device_id, records)
            self.bio.after_commit(lambda: self._into_gallery(subject, probes))  # not before it is stored
            log.info("enrollment", audit=True, device_id=device_id, subject=subject, group=group, modality=FACE,
                     templates=len(records), with_session_token=has_token,
                     token_scope=spent.scope if spent is not None else None,
                     match_ms=round(match_ms, 3))  # the operator's: no Server-Timing on this route (Route.timed)
            answer = {"subject": subject, "group": group, "templates": len(records)}
            return json_answer(201, answer)

        def undo() -> None:  # the verifier could not decide: the nonce and the token are given back
            self.bio.challenges.release(device_id, str(body["nonce"]))
            self.bio.give_back_token(spent, seen)

        # One face enrollment at a time from its search to its insert: the search saw every face stored.
        return Deferred(device_id, work, finish, undo, serial=ENROLL_FACES)

    # ---------------------------------------------------------------- verify
    def verify(self, request: Request, body: dict[str, Any], carried: Carried, subject: str, seen: Seen) -> Deferred:
        """1:1: the best cosine of the request's faces against the subject's; a step-up when a finger is needed.

        ``seen``: what the handler read; a subject removed while matched is unknown at the decision (also when
        its id was enrolled again meanwhile: the match was the removed person's).
        """
        assert request.device is not None
        device_id = request.device.device_id
        records = self.records(request, body, carried, "verify", subject)
        pending = None
        step_id = body.get("step_up")
        if step_id is not None:
            pending = self.bio.stepup.take(str(step_id), device_id, subject)
            if pending is None or pending.acr != ACR_FACE:  # only a step-up that asked a face
                if pending is not None:
                    self.bio.stepup.give_back(str(step_id), pending)
                raise self.bio.attempt_refused(
                    device_id, subject, "step_up_unknown",
                    Problem("step-up-unknown", "no pending step-up asking this device for a face",
                            "start the verification again"), modality=FACE)
        probes = _matrix(records)
        enrolled = self.store.embeddings(subject)
        if not len(enrolled):
            if pending is not None:
                self.bio.stepup.give_back(str(step_id), pending)
            raise self.bio.attempt_refused(
                device_id, subject, "no_face_enrolled",
                Problem("face-not-enrolled", f"subject {subject!r} has no face enrolled",
                        f"enroll a face first: capture-agent enroll --face --subject {subject} --add"),
                modality=FACE)
        try:
            self.bio.charge(request, len(records) * len(enrolled))
        except Problem:  # a 429 is no answer to the step-up: it stays pending for a lighter retry
            if pending is not None:
                self.bio.stepup.give_back(str(step_id), pending)
            raise

        def work(budget: Budget) -> _FaceScored:
            started = time.perf_counter()
            budget.check()
            return _FaceScored(float((probes @ enrolled.T).max()), (time.perf_counter() - started) * 1000)

        def finish(scored: _FaceScored) -> Answer:
            if not self.bio.still_held(subject, seen, (FACE,)):  # its faces are gone
                raise self.bio.attempt_refused(device_id, subject, "unknown_subject", Problem(
                    "unknown-subject", f"no enrollment for subject {subject!r}",
                    f"enroll the subject first: capture-agent enroll --subject {subject}"), modality=FACE)
            accepted = scored.score >= self.threshold
            if pending is not None:
                return self._decided(device_id, subject, accepted, scored, step_up=pending.reasons)
            reasons = self.still_needed(device_id, subject, scored.score) if accepted else []
            if reasons == [FINGER_REQUIRED] and not self.bio.has_factor(subject, FINGER):
                # The rule's finger is all that is missing, and the subject has none to ask: it may be added.
                return self.bio.grant_missing_factor(device_id, subject, FACE, FINGER, scored.score)
            if reasons:
                return self.ask(device_id, subject, [], reasons, scored.score, ACR_FINGER)
            return self._decided(device_id, subject, accepted, scored)

        def undo() -> None:
            self.bio.challenges.release(device_id, str(body["nonce"]))
            if pending is not None:
                self.bio.give_back_step_up(str(step_id), pending, seen)

        return Deferred(device_id, work, finish, undo)

    def still_needed(self, device_id: str, subject: str, score: float) -> list[str]:
        """Why a matched face alone does not decide: the factor rule's finger, then the finger path's step-up policy.

        The same reasons as a matched finger (weak margin, recent failures, a high-risk
        subject, the device's first use), so a claim made with a face is no way around
        them. The factor asked is a finger the verifier matches (or, after this face, a
        sensor's): a second face would be the device's word again, not a second factor.
        """
        rule = [FINGER_REQUIRED] if FINGER in self.required(subject) else []
        failures = self.bio.lockouts.failures(subject)
        return rule + self.bio.stepup.reasons(device_id, subject, score, self.threshold, failures)

    def ask(self, device_id: str, subject: str, records: list[bytes], reasons: list[str], score: float,
            acr: str) -> Answer:
        """RFC 9470: 401 insufficient_user_authentication whose acr_values names the factor still needed."""
        step = self.bio.stepup.open(device_id, subject, records, reasons, acr)
        log.info("verification_attempt", audit=True, device_id=device_id, subject=subject, outcome="step_up",
                 modality=FACE if acr == ACR_FINGER else FINGER,  # what matched: a finger's step-up asks a face
                 reasons=",".join(reasons), acr_values=acr, score=round(score, 4))
        what = "a face" if acr == ACR_FACE else "a finger"
        problem = Problem(
            "insufficient-user-authentication",
            f"{what} is needed ({', '.join(reasons)})",
            f"capture {what} of the same person and send it with this step_up id",
            extra=(("step_up", step), ("acr_values", acr), ("reasons", reasons)),
        )
        challenge = (f'Bearer error="insufficient_user_authentication", '
                     f'error_description="{", ".join(reasons)}", acr_values="{acr}"')
        return Answer(401, PROBLEM_CONTENT_TYPE, problem.body(), ((b"www-authenticate", challenge.encode()),))

    def _decided(self, device_id: str, subject: str, accepted: bool, scored: _FaceScored,
                 step_up: list[str] | None = None) -> Answer:
        decision = "accept" if accepted else "reject"
        log.info("verification_attempt", audit=True, device_id=device_id, subject=subject, outcome=decision,
                 modality=FACE, score=round(scored.score, 4), step_up=",".join(step_up or []),
                 reason="score above threshold" if accepted else "score below threshold")
        answer: dict[str, Any] = {"subject": subject, "decision": decision, "score": round(scored.score, 4),
                                  "threshold": round(self.threshold, 4), "modality": FACE}
        answer.update(self.bio.decided(device_id, subject, accepted))
        return json_answer(200, answer, ((b"server-timing", f"match;dur={scored.match_ms:.3f}".encode()),))

    # ---------------------------------------------------------------- identify
    def _into_gallery(self, subject: str, probes: np.ndarray) -> None:
        """Once the enrollment is committed: its embeddings into the 1:N gallery (a new tuple: a pool thread
        holding the previous one reads it unchanged)."""
        subjects, gallery = self._gallery_now()
        self._gallery = ([*subjects, *[subject] * len(probes)], np.vstack([gallery, probes]))

    def forget_removed(self) -> int:
        """On the loop, after a removal (:meth:`BiometricRoutes.sync_removals`): the gallery without the
        embeddings of subjects with no face left in the database (a new tuple, as :meth:`_into_gallery` makes);
        how many subjects were dropped."""
        if self._gallery is None:
            return 0
        subjects, gallery = self._gallery
        present = self.store.subject_ids()
        gone = set(subjects) - present
        if gone:
            keep = np.array([s in present for s in subjects], bool)
            self._gallery = ([s for s in subjects if s in present], gallery[keep])
        return len(gone)

    def _gallery_now(self) -> tuple[list[str], np.ndarray]:
        """On the loop: every enrolled embedding, read from the database once (then grown by each enrollment)."""
        if self._gallery is None:
            self._gallery = self.store.gallery()
        return self._gallery

    def identify(self, request: Request, body: dict[str, Any], carried: Carried,
                 allowed: frozenset[str] | None, seen: Seen) -> Deferred:
        """1:N: one matrix product of the probes against every embedding of the allowed subjects."""
        assert request.device is not None
        device_id = request.device.device_id
        probes = _matrix(self.records(request, body, carried, "identify", None))
        subjects, gallery = self._gallery_now()
        among = None if allowed is None else self.bio.subjects.members(set(subjects), allowed)
        keep = np.array([among is None or s in among for s in subjects], bool)
        names = [s for s, k in zip(subjects, keep, strict=True) if k]
        rows = gallery[keep] if len(subjects) else gallery
        threshold = identification_threshold(threshold_for_fmr, self.identify_fpir, len(probes) * len(rows),
                                             self.threshold)
        self.bio.refuse_if_unreachable(request, FACE, threshold, views=len(probes), searched=len(rows),
                                       capacity=self.identify_capacity, groups=allowed,
                                       setting=self.identify_setting)
        # The answer's threshold is the search's decade's, not the exact one: that would tell the gallery's size.
        told = reported_threshold(threshold_for_fmr, self.identify_fpir, views=len(probes), templates=len(rows),
                                  verify_threshold=self.threshold)
        self.bio.charge(request, len(probes) * charged_templates(len(names)))  # a decade's figure: not the size

        def work(budget: Budget) -> tuple[dict[str, float], float]:
            started = time.perf_counter()
            budget.check()
            best: dict[str, float] = {}
            if len(names):
                per_row = (probes @ rows.T).max(axis=0)
                for name, score in zip(names, per_row.tolist(), strict=True):
                    best[name] = max(best.get(name, -1.0), score)
            return best, (time.perf_counter() - started) * 1000

        def finish(result: tuple[dict[str, float], float]) -> Answer:
            best, match_ms = result
            best = self.bio.still_enrolled(best, seen, FACE)  # none removed while it was matched
            best, locked = self.bio.unlocked(device_id, best)  # a lockout is no oracle through 1:N
            candidates = ranked(best, threshold)
            log.info("identification_attempt", audit=True, device_id=device_id, modality=FACE,
                     outcome="candidates" if candidates else "no_candidate", candidates=len(candidates),
                     locked_out=locked, groups=searched_groups(allowed),
                     match_ms=round(match_ms, 3))  # the operator's: no Server-Timing on this route (Route.timed)
            answer = {"candidates": candidates, "threshold": told}
            return json_answer(200, answer)

        return Deferred(device_id, work, finish, lambda: self.bio.challenges.release(device_id, str(body["nonce"])))
