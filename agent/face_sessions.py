"""Face sessions: from a face in front of the camera to the verifier's decision, through the liveness challenge.

A session takes the camera capability (``CameraFrames``: the newest frame, never
one already seen), asks the verifier for the operation's challenge, and turns
its nonce into the head-turn challenge (:func:`biometrics.face.challenge_for`),
which the verifier derives from the same nonce and audits. Then, frame by frame
in one worker thread (the face pipeline's OpenCV nets belong to it): detection
and quality, the liveness tracker, and a prompt for the person whenever it
changes (the quality codes of DESIGN.md until the challenge starts, then the
asked turn), with the frame's age when the prompt left, so feedback latency is
measured, not assumed. Embeddings are made only of the good frontal frames
inside the challenge, so the face that passed it is the face enrolled or
verified, taken from its frontal phases in turn (:func:`_spread`).

A still photo, a recording of another challenge, or a face that leaves fails
the challenge with its reason code as the last prompt, and nothing is sent.

Frames live only inside :meth:`FaceSession._run`: one at a time, dropped as
soon as it is analysed; never logged, written or sent. What leaves the device
is the embedding records (protocol/face_template.py) and the challenge's steps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import structlog

from agent.client import VerifierClient, answer_error
from agent.config import SessionsSection
from agent.errors import FactorNotEnrolledError, UnknownSubjectError, VerifierError
from agent.sessions import MESSAGES, SessionError, SessionToken, Timings, cancel_scope, in_worker, inherited_cancel
from agent.verifier_api import VerifierAPI
from protocol.endpoints import CHALLENGES
from protocol.face_template import ACR_FINGER, FACE, FINGER, encode
from protocol.messages import Challenge, Decision, StepUp

log = structlog.get_logger()


def message_for(code: str) -> str:
    return MESSAGES.get(code, code)


def _prompt(code: str, received: float) -> dict[str, Any]:
    """A prompt event, with the age (``feedback_ms``) of the frame it answers when it leaves.

    Why every prompt: a challenge's failure, its time up and its too few frontal frames went without it, while
    the README (and a kiosk app reading it) said each prompt carries it.
    """
    return {"type": "prompt", "code": code, "message": message_for(code),
            "feedback_ms": round((time.monotonic() - received) * 1000, 1)}


class NoFaceError(SessionError):
    """The camera saw no face during the whole session: it ended, and the person must start again.

    Why its own error: the session ended with the prompt "Too slow: start again and turn your head when
    asked" to an empty room (nobody had been asked to turn), and a kiosk app could not tell it from any
    other failure (``session_failed``); its event ``code`` is ``no_face``, as the finger path's ``no_finger``.
    A face too small, too dark or too far for the detector is no face to it: the fix names those too.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"no face was seen by the camera within {round(seconds, 1):g} s, so the session ended",
            fix="start again: stand in front of the camera at arm's length, facing it, in good light",
        )


class FaceNotReadyError(SessionError):
    """A face was seen, but never well enough (frontal, close, lit) for the head-turn challenge to start.

    Why: the person, told "Look straight at the camera" (or "Come a little closer"), then heard "Too slow:
    start again and turn your head when asked" when the session's time was up, about a turn never asked.
    The message names the last prompt, which is what was wrong; the event ``code`` is ``face_not_ready``.
    """

    def __init__(self, seconds: float, last_prompt: str) -> None:
        super().__init__(
            f"the camera never had a clear, frontal view of the face within {round(seconds, 1):g} s "
            f"(last prompt: {last_prompt}), so the session ended",
            fix="start again: do what the prompt says, and look straight at the camera until asked to turn your head",
        )


# What each liveness code means, said to a person: the error's message. Why: it showed the raw code ("the
# liveness challenge failed (liveness_still)") under a prompt that had said what happened in words.
LIVENESS_FAILURES = {
    "liveness_still": "no movement was seen (a photo is not accepted)",
    "liveness_wrong_sequence": "the head turned the other way than asked",
    "liveness_timeout": "the head did not turn as asked in time",
    "liveness_face_lost": "the face left the camera's view during the challenge",
}


class LivenessFailedError(SessionError):
    """The head-turn challenge failed (a photo, the wrong way, too slow, the face lost): nothing was sent.

    Its ``reason`` is the liveness code (``liveness_still``...), also the last prompt's; a kiosk app tells
    this from other failures by the event's ``code``, ``liveness_failed``, and shows ``reason``'s screen.
    The message says the code in words (:data:`LIVENESS_FAILURES`); the code itself is ``reason`` only.
    """

    def __init__(self, reason: str) -> None:
        said = LIVENESS_FAILURES.get(reason, "the head did not move as asked")
        super().__init__(f"the liveness challenge failed: {said}",
                         fix="start again, look at the camera and turn your head as asked")
        self.reason = reason

DEFAULT_TIMING = SessionsSection()  # [sessions] as a file saying nothing gives it: a session made with no config
ENROLL_FRAMES = 3  # embeddings of one enrollment (each a good frontal frame inside the challenge)
VERIFY_FRAMES = 2  # ... of a verification or identification (the verifier takes the best)
_local = threading.local()


def _pipeline() -> Any:
    """This thread's face pipeline (models checked and loaded once per thread, as OpenCV nets need)."""
    pipeline = getattr(_local, "pipeline", None)
    if pipeline is None:
        from biometrics.face import FacePipeline

        pipeline = _local.pipeline = FacePipeline()
    return pipeline


def liveness_steps(challenge: Challenge) -> tuple[str, ...]:
    """The head turns a challenge's nonce stands for; a nonce none can come from is the verifier's wrong answer.

    Why: a nonce that is not ASCII, or outside the lengths a liveness challenge takes, raised the face package's
    LivenessError (or a UnicodeEncodeError): an untyped error, with no fix, from a verifier answering garbage.
    """
    from biometrics.face import LivenessError, challenge_for

    try:
        return challenge_for(challenge.nonce.encode("ascii")).steps
    except (UnicodeEncodeError, LivenessError):
        raise answer_error(CHALLENGES, f"its nonce ({len(challenge.nonce)} characters) is no nonce a liveness "
                                       "challenge is derived from (16 to 256 ASCII characters)") from None


@contextmanager
def _fixes_for_the_camera(subject: str) -> Iterator[None]:
    """A refusal before the camera whose fix names a command: the face's command (``--face``) is named.

    Why: the verifier's fixes name the finger's commands (``capture-agent enroll --subject ana``), which at a
    camera enrolls a finger (or fails on a kiosk with no reader): `verify --face` of an id nobody enrolled, and
    `enroll --face` of an id already enrolled (whose fix is ``--add``), said so.
    """
    try:
        yield
    except VerifierError as exc:
        if exc.slug == "unknown-subject":
            exc.fix = (f"enroll the subject first: capture-agent enroll --face --subject {subject} "
                       f"(or with a finger: capture-agent enroll --subject {subject})")
        elif exc.slug == "verification-required":
            exc.fix = (f"to add a face to this person's enrollment, they verify first (capture-agent enroll --face "
                       f'--subject {subject} --add; a kiosk app: "verify_first": true); to enroll someone else, use '
                       "another id")
        raise


def _spread(embedded: list[tuple[int, Any]]) -> list[Any]:
    """The embeddings of the challenge's frontal phases (before the first turn, between turns, at the end) taken
    in turn, one of each phase before a second of any: the views of a template are of different moments.

    Why: at most ``2 * want + 2`` frames are embedded (each costs about 20 ms), and they were the first frontal
    frames, all before the first turn; the three views of an enrollment were frames a tenth of a second apart
    (cosine 0.9998), though the person looked back at the camera after each turn.
    """
    phases: dict[int, list[Any]] = {}
    for phase, embedding in embedded:
        phases.setdefault(phase, []).append(embedding)
    rounds = max((len(views) for views in phases.values()), default=0)
    return [views[i] for i in range(rounds) for views in phases.values() if i < len(views)]


@dataclass
class FaceCapture:
    """What a challenge produced: the records, the steps asked, and when the face first appeared."""

    records: list[bytes] = field(repr=False)
    steps: tuple[str, ...]
    face_appeared: float  # time.monotonic() of the first frame with a face


@dataclass
class FaceSession:
    camera: Any  # agent.devices.capabilities.CameraFrames
    client: VerifierClient
    emit: Callable[[dict[str, Any]], None] = lambda event: None
    timeout_s: float = DEFAULT_TIMING.face_timeout_s  # first frame to the challenge's end ([sessions] face_timeout_s)
    frame_timeout_s: float = 5.0
    tracker_options: dict[str, float] = field(default_factory=dict)  # LivenessTracker's thresholds
    timings: Timings = field(default_factory=Timings)
    session_token: SessionToken | None = None
    # set by cancel(): ends the camera worker; shared with the session this one is a step-up of (cancel_scope)
    cancelled: threading.Event = field(default_factory=inherited_cancel)
    decision_s: float | None = None  # from the face appearing to the verifier's answer, of the last call
    # enroll --add for a subject with no face yet: verify by finger instead (subject -> the finger session's
    # result and its session token); the daemon sets it when it has a fingerprint reader.
    finger_verify: Callable[[str], Awaitable[tuple[dict[str, Any], SessionToken | None]]] | None = None
    # A step-up asking for a finger (the factor rule needs both): (subject, step_up id) -> the finger's answer,
    # from an image reader's template or a match-on-sensor reader's assertion (the daemon picks by capability).
    finger_step_up: Callable[[str, str], Awaitable[Decision | StepUp]] | None = None
    # What both of those run: a new finger session, waiting for the person as [sessions] says (None: no reader).
    finger_session: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        self.api = VerifierAPI(self.client)

    def cancel(self) -> None:
        self.cancelled.set()

    # ---------------------------------------------------------------- the challenge (worker thread)
    def _run(self, steps: tuple[str, ...], want: int, post: Callable[[dict[str, Any]], None]) -> FaceCapture:
        from biometrics.face import Challenge as LivenessChallenge
        from biometrics.face import LivenessTracker, pose_of
        from biometrics.face.align import align
        from biometrics.face.image import as_bgr

        pipeline = _pipeline()
        tracker = LivenessTracker(LivenessChallenge(steps), **self.tracker_options)
        embeddings: dict[int, tuple[int, Any]] = {}  # frame index -> (the challenge's step then, its embedding)
        seq, index, last_code, previous, last_t, appeared = 0, -1, None, None, None, None
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.cancelled.is_set():
                raise SessionError("the face session was cancelled", fix="start it again")
            frame = self._next_frame(seq, deadline)
            if frame is None:
                self._out_of_time(tracker.state.status, appeared, last_code, last_t, post)
            seq, t = frame.seq, frame.received
            started = time.perf_counter()
            interval = (t - last_t) if last_t is not None and t > last_t else None
            bgr = as_bgr(frame.pixels)
            del frame  # the frame ends here: only its analysis goes on
            analysis = pipeline.analyse(bgr, previous=previous, interval=interval or 1 / 30, embed=False)
            face = analysis.face
            # The challenge starts on a good frame only: a face too small, dark or blurred for the template was
            # asked to turn at once, never told "Come a little closer", and failed "Too slow" at the end.
            starts = tracker.state.status != "waiting" or analysis.quality.ok
            state = tracker.observe(t, face if starts else None)
            index += 1
            previous, last_t = face, t
            if face is not None and appeared is None:
                appeared = t
            if (
                face is not None
                and state.status in ("running", "passed")
                and index in state.template_frames
                and analysis.quality.ok
                and abs(pose_of(face.landmarks).yaw) <= tracker.center_yaw
                and len(embeddings) < 2 * want + 2
                and sum(1 for phase, _ in embeddings.values() if phase == state.step) < want
            ):
                embeddings[index] = (state.step, pipeline.embedder.embed(align(bgr, face)))
            del bgr
            self.timings.extract_ms += (time.perf_counter() - started) * 1000
            if state.status == "failed":
                code = str(state.reason)
                post(_prompt(code, t))
                log.warning("face_liveness_failed", audit=True, reason=code, steps=",".join(steps))
                raise LivenessFailedError(code)
            if state.status == "passed":
                break
            code = state.prompt if state.status == "running" else (analysis.code or state.prompt)
            if code != last_code:
                last_code = code
                post(_prompt(str(code), t))
        chosen = _spread([embeddings[i] for i in state.template_frames if i in embeddings])
        if len(chosen) < want:
            post(_prompt("look_at_camera", t))
            raise SessionError(f"{len(chosen)} good frontal frames inside the challenge, {want} needed",
                               fix="look straight at the camera, in good light, before and after each turn")
        log.info("face_challenge_passed", steps=",".join(steps), frames=index + 1, frontal_embedded=len(chosen),
                 seconds=round(t - appeared, 2) if appeared is not None else None)
        model = pipeline.embedder.model_name
        records = [encode(model, e.astype(float).tolist()) for e in chosen[:want]]
        assert appeared is not None
        return FaceCapture(records, steps, appeared)

    def _next_frame(self, after: int, deadline: float) -> Any:
        """The camera's next frame, waited for no longer than the session's time left: None once that is up.

        Why bounded by it: the deadline was checked only before the wait, so a session could end up to one frame
        wait (``frame_timeout_s``, a slow camera's interval) past ``face_timeout_s``. A wait that the session's
        time cut short is that time running out; one that ran its whole ``frame_timeout_s`` is still the camera's
        error (no frame from it).
        """
        from drivers.camera.errors import CameraUnavailable

        left = deadline - time.monotonic()
        if left <= 0:
            return None
        wait_s = min(self.frame_timeout_s, left)
        try:
            return self.camera.wait_frame(after, wait_s, self.cancelled)
        except CameraUnavailable:
            if wait_s < self.frame_timeout_s and time.monotonic() >= deadline:
                return None  # the session's time, not the camera, ended the wait
            raise

    def _out_of_time(self, status: str, appeared: float | None, last_code: str | None, last_t: float | None,
                     post: Callable[[dict[str, Any]], None]) -> NoReturn:
        """The session's time is up: said as what was wrong then (nobody there, a face never usable, or a
        challenge not followed), each its own error; the ``liveness_timeout`` prompt only for the last."""
        if appeared is None:
            raise NoFaceError(self.timeout_s)
        if status == "waiting":
            raise FaceNotReadyError(self.timeout_s, message_for(str(last_code or "look_at_camera")))
        assert last_t is not None  # a face appeared: there were frames
        post(_prompt("liveness_timeout", last_t))
        raise LivenessFailedError("liveness_timeout")

    async def capture(self, challenge: Challenge, want: int) -> FaceCapture:
        """Run the challenge of ``challenge``'s nonce on the camera; prompts arrive through ``emit``."""
        steps = liveness_steps(challenge)
        loop = asyncio.get_running_loop()
        self.emit({"type": "challenge", "steps": list(steps)})

        def post(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(self.emit, event)

        started = time.perf_counter()
        try:
            # cancelled: the worker is told (self.cancelled), and this returns once it stopped
            return await in_worker(self._run, steps, want, post, stop=self.cancelled)
        finally:
            self.timings.capture_ms += (time.perf_counter() - started) * 1000

    async def _timed(self, call: Any, captured: FaceCapture) -> Any:
        started = time.perf_counter()
        timing: dict[str, float] = {}
        try:
            return await call(timing)
        finally:
            self.timings.network_ms += (time.perf_counter() - started) * 1000
            self.timings.match_ms += timing.get("match", 0.0)
            self.decision_s = time.monotonic() - captured.face_appeared

    # ---------------------------------------------------------------- operations
    async def enroll(self, subject: str, captures: int = ENROLL_FRAMES, group: str | None = None,
                     fingers: int | None = None, verify_first: bool = False) -> dict[str, Any]:
        """Enroll ``captures`` embeddings of one challenge; ``verify_first`` adds a face to an enrolled subject.

        ``fingers`` is ignored (the local API passes the same arguments to every session kind).
        """
        if verify_first:
            try:
                verified = await self.verify(subject)
            except UnknownSubjectError as exc:  # no face yet: the person verifies by finger to add one
                if exc.slug != "face-not-enrolled" or self.finger_verify is None:
                    raise
                verified = await self._finger_verify_to_add_a_face(subject, self.finger_verify)
            if verified.get("decision") not in ("accept", "factor_not_enrolled"):
                raise SessionError(f"{subject} was not verified, so no face is added",
                                   fix="verify with a face (or a finger session) of this subject first")
        token = self.session_token.current() if self.session_token is not None else None
        # With no token to send, an id already enrolled is refused before the camera (a first enrollment).
        with _fixes_for_the_camera(subject):
            challenge = await self.api.challenge("enroll", subject, group, first=token is None)
        captured = await self.capture(challenge, max(1, min(captures, 5)))
        answer = await self._timed(
            lambda timing: self.api.enroll(subject, [], group=group, session_token=token, challenge=challenge,
                                           timing=timing, faces=captured.records, liveness=captured.steps),
            captured,
        )
        result = {"type": "result", "operation": "enroll", "modality": FACE, **answer.json()}
        self.emit(result)
        return result

    async def _finger_verify_to_add_a_face(
        self, subject: str, finger_verify: Callable[[str], Awaitable[tuple[dict[str, Any], SessionToken | None]]]
    ) -> dict[str, Any]:
        """A finger verification whose session token lets this session add the subject's first face.

        Under a finger,face rule the finger's match earns no session (the rule wants the face
        too) but an enrollment token for the face alone (403 factor-not-enrolled): that token
        is what the enrollment then sends. A grant for another factor is not this session's.
        """
        try:
            with cancel_scope(self.cancelled):  # the finger session made for it stops with this one
                verified, self.session_token = await finger_verify(subject)
        except FactorNotEnrolledError as missing:
            grant = missing.grant()
            if grant.factor != FACE:
                raise
            self.session_token = SessionToken(grant.token, time.monotonic() + grant.expires_in)
            log.info("face_enrollment_granted", subject=subject)
            return {"decision": "factor_not_enrolled"}
        return verified

    async def verify_face(self, subject: str, step_up: str | None = None) -> Decision | StepUp:
        """One face verification (a step-up's when ``step_up`` names it): the verifier's answer as it is."""
        # "face": a subject with no face is refused before the head-turn challenge, not after it.
        with _fixes_for_the_camera(subject):
            challenge = await self.api.challenge("verify", subject, modality=FACE)
        captured = await self.capture(challenge, VERIFY_FRAMES)
        return await self._timed(
            lambda timing: self.api.verify(subject, [], step_up=step_up, challenge=challenge, timing=timing,
                                           faces=captured.records, liveness=captured.steps),
            captured,
        )

    async def verify(self, subject: str) -> dict[str, Any]:
        """1:1 by face. A step-up asking for a finger is completed on ``finger_step_up`` (a fingerprint reader of
        this device), else reported (the person verifies with a finger where there is a reader)."""
        answer = await self.verify_face(subject)
        if isinstance(answer, StepUp):
            event = {"type": "step_up", "acr_values": answer.acr_values, "reasons": answer.reasons}
            self.emit(event)
            if answer.acr_values == ACR_FINGER and self.finger_step_up is not None:
                with cancel_scope(self.cancelled):  # the finger session made for it stops with this one
                    fingered = await self.finger_step_up(subject, answer.step_up)
                if isinstance(fingered, StepUp):
                    raise SessionError("the verifier asked for yet another factor after the finger",
                                       fix="start the verification again; if it persists, see the verifier's "
                                       "factor rules")
                return self._verified(fingered, decided_by=FINGER)
            result = {"type": "result", "operation": "verify", "modality": FACE, "subject": subject,
                      "decision": "step_up", "acr_values": answer.acr_values}
            self.emit(result)
            return result
        return self._verified(answer)

    def _verified(self, answer: Decision, decided_by: str = FACE) -> dict[str, Any]:
        """The session's result; ``modality`` is the factor that decided (the verifier's word, else the factor of
        the request it answered: a finger step-up's decision is the finger's, its score the finger's score)."""
        if answer.token is not None and answer.expires_in is not None:
            self.session_token = SessionToken(answer.token, time.monotonic() + answer.expires_in)
        result = {"type": "result", "operation": "verify", **answer.public(), "modality": answer.modality or decided_by}
        self.emit(result)
        return result

    async def identify(self) -> dict[str, Any]:
        challenge = await self.api.challenge("identify")
        captured = await self.capture(challenge, VERIFY_FRAMES)
        answer = await self._timed(
            lambda timing: self.api.identify([], challenge=challenge, timing=timing, faces=captured.records,
                                             liveness=captured.steps),
            captured,
        )
        result = {"type": "result", "operation": "identify", "modality": FACE, **answer.json()}
        self.emit(result)
        return result


def face_session(devices: Any, client: VerifierClient, emit: Callable[[dict[str, Any]], None],
                 prints: Any = None, *, timing: SessionsSection = DEFAULT_TIMING) -> FaceSession:
    """A face session on a device that gives camera frames (picked by capability, a connected one first), waiting
    for the person as ``timing`` (``[sessions]``) says: its challenge's time, and its finger's waits. Why the
    finger's too: the finger asked for after a face waited 15 s whatever ``[sessions] finger_timeout_s`` said.

    Its finger, when one is needed (a face added to a subject with no face yet, or a factor rule that needs a
    finger too), comes from an image reader when the device has one, else from a match-on-sensor reader
    (``prints``: the daemon's :class:`~agent.devices.prints.SensorPrintStore`).
    """
    from agent.devices.capabilities import CAMERA, FINGERPRINT_IMAGE, MATCH_ON_SENSOR
    from agent.sensor_sessions import SensorSession
    from agent.sessions import CaptureSession

    session = FaceSession(devices.pick(CAMERA), client, emit=emit, timeout_s=timing.face_timeout_s)
    finger: Callable[[], Any] | None = None
    if any(FINGERPRINT_IMAGE in d.capabilities for d in devices.devices):

        def finger() -> Any:
            reader = devices.pick(FINGERPRINT_IMAGE)
            return CaptureSession(reader, client, emit=emit, resolution_dpi=reader.resolution_dpi,
                                  finger_timeout_s=timing.finger_timeout_s, lift_reminder_s=timing.lift_reminder_s)

    elif prints is not None and any(MATCH_ON_SENSOR in d.capabilities for d in devices.devices):

        def finger() -> Any:
            return SensorSession(devices.pick(MATCH_ON_SENSOR), client, prints, emit=emit,
                                 finger_timeout_s=timing.finger_timeout_s)

    if finger is not None:
        new_finger = finger

        def make_finger() -> Any:
            """The finger session, sharing the cancel event of the session it serves (a match-on-sensor session
            does not take it from the cancel scope by itself)."""
            nested = new_finger()
            nested.cancelled = inherited_cancel()
            return nested

        async def finger_verify(subject: str) -> tuple[dict[str, Any], SessionToken | None]:
            verifying = make_finger()
            return await verifying.verify(subject), verifying.session_token

        async def finger_step_up(subject: str, step_id: str) -> Decision | StepUp:
            return await make_finger().verify_step_up(subject, step_id)

        session.finger_verify = finger_verify
        session.finger_step_up = finger_step_up
        session.finger_session = make_finger
    return session


def face_verification(
    devices: Any, client: VerifierClient, emit: Callable[[dict[str, Any]], None],
    tracker_options: dict[str, float] | None = None, *, timing: SessionsSection = DEFAULT_TIMING,
) -> Callable[[str], Awaitable[tuple[dict[str, Any], SessionToken | None]]] | None:
    """For a finger session's ``enroll --add``: a face verification on this device's camera, or None without one.

    A face-first subject has no finger to verify with. Under a finger,face rule the
    face's match earns no session but an enrollment token for fingers only (403
    factor-not-enrolled): it comes back as the session token, which the fingers'
    enrollment sends. A grant for another factor is not for this. ``tracker_options``:
    the liveness tracker's thresholds, when not the defaults.
    """
    from agent.devices.capabilities import CAMERA

    if not any(CAMERA in d.capabilities for d in devices.devices):
        return None

    async def verify(subject: str) -> tuple[dict[str, Any], SessionToken | None]:
        # A rule needing a finger too steps this face up to one: it waits as [sessions] says (see face_session).
        session = face_session(devices, client, emit, timing=timing)
        session.tracker_options = dict(tracker_options or {})
        try:
            verified = await session.verify(subject)
        except FactorNotEnrolledError as missing:
            grant = missing.grant()
            if grant.factor != FINGER:
                raise
            log.info("finger_enrollment_granted", subject=subject)
            return {"decision": "factor_not_enrolled"}, SessionToken(grant.token, time.monotonic() + grant.expires_in)
        return verified, session.session_token

    return verify


def face_step_up(
    devices: Any, client: VerifierClient, emit: Callable[[dict[str, Any]], None], *,
    timing: SessionsSection = DEFAULT_TIMING,
) -> Callable[[str, str], Any] | None:
    """For a finger session: the face step-up on this device's camera, or None when it has no camera."""
    from agent.devices.capabilities import CAMERA

    if not any(CAMERA in d.capabilities for d in devices.devices):
        return None

    async def step_up(subject: str, step_id: str) -> Decision | StepUp:
        # Made inside the finger session's cancel scope: cancelling that session ends this one's camera worker.
        return await face_session(devices, client, emit, timing=timing).verify_face(subject, step_id)

    return step_up
