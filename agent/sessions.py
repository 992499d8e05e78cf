"""Capture sessions: from a finger on the sensor to the verifier's decision.

A session drives the reader (in a worker thread: the driver is blocking),
extracts the template on the device, gates it on quality, and sends it through
the typed client (:class:`~agent.verifier_api.VerifierAPI`: nonce, signature,
mTLS). Before the first prompt it asks the verifier for the operation's
challenge, so what the verifier would refuse without a finger (an unknown
subject, an operation or group this device may not use, a lockout) is said
before anyone touches the sensor, on a round trip the session needs anyway. What a person at the
terminal needs to hear arrives as events (``prompt`` with a DESIGN.md feedback
code, ``progress``, ``result``) through the ``emit`` callback: a terminal, the
local API's server-sent events, or a test's scripted finger.

The raw image lives only inside :meth:`CaptureSession.capture`: it is dropped
as soon as the template is made, and never logged, written or sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from agent.client import VerifierClient
from agent.errors import AgentError, UnknownSubjectError
from agent.verifier_api import VerifierAPI
from drivers.errors import FingerTimeout, RetryCapture
from protocol.face_template import ACR_FACE
from protocol.messages import Challenge, Decision, StepUp
from protocol.templates import MAX_MINUTIAE_PER_VIEW, MIN_MINUTIAE_PER_VIEW

if TYPE_CHECKING:
    from biometrics.fingerprint import FingerprintTemplate

log = structlog.get_logger()
T = TypeVar("T")

SAME_FINGER_FMR = 1e-3  # on the device, only to catch a wrong finger during enrollment (the verifier decides)
MESSAGES = {
    "place_finger": "Place your finger on the sensor",
    "lift_finger": "Lift your finger",
    "press_harder": "Press a little harder",
    "finger_too_dry": "Your finger is too dry: breathe on it and try again",
    "move_left": "Move your finger to the left",
    "move_right": "Move your finger to the right",
    "move_up": "Move your finger up",
    "move_down": "Move your finger down",
    "too_fast": "Too fast: hold your finger still",
    "clean_sensor": "Please wipe the sensor",
    "hold_still": "Hold still",
    # faces (agent/face_sessions.py): quality codes, then the liveness challenge's prompts and failures
    "face_not_found": "Stand in front of the camera",
    "move_closer": "Come a little closer to the camera",
    "move_back": "Move back a little from the camera",
    "look_at_camera": "Look straight at the camera",
    "too_dark": "It is too dark here: face the light",
    "too_bright": "Too bright: move away from the light behind you",
    "turn_head_left": "Slowly turn your head to your left",
    "turn_head_right": "Slowly turn your head to your right",
    "liveness_still": "No movement seen: a photo is not accepted; turn your head when asked",
    "liveness_wrong_sequence": "That was the other way: start again and follow the prompts",
    "liveness_timeout": "Too slow: start again and turn your head when asked",
    # lost also when the face moved too far between frames: a head turned fast, not only one that left
    "liveness_face_lost": "Lost sight of your face: stay in front of the camera, turn slowly, and start again",
}


# The lift_finger prompt repeated to a finger still on the sensor (see CaptureSession._await_lift).
LIFT_AGAIN_MESSAGE = "Your finger is still on the sensor: lift it now"

# The place_finger prompt after a capture the quality gate refused (its hints, if any, come just before it).
RETAKE_MESSAGE = "That print could not be read well enough: place the same finger again, flat and still"


# The cancel event of the session whose step-up is running: a nested session (the face a finger session's
# verifier asks for, the finger a face session's asks for) made inside it shares it, so cancelling the outer
# session stops the inner one's reader or camera worker too. A context variable, because the nested session is
# made by a factory of the daemon's (agent/face_sessions.py) that knows nothing of the session it serves.
_CANCEL_SCOPE: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("cancel_scope", default=None)


def inherited_cancel() -> threading.Event:
    """The cancel event of the session this one is made inside (see :func:`cancel_scope`), else a new one."""
    return _CANCEL_SCOPE.get() or threading.Event()


@contextlib.contextmanager
def cancel_scope(cancelled: threading.Event) -> Iterator[None]:
    """Sessions made inside this block share ``cancelled``: one ``cancel()`` reaches every nested session."""
    token = _CANCEL_SCOPE.set(cancelled)
    try:
        yield
    finally:
        _CANCEL_SCOPE.reset(token)


async def in_worker(function: Callable[..., T], *args: Any, stop: threading.Event, **kwargs: Any) -> T:
    """``function`` in a worker thread; a cancelled caller still waits for the thread to end.

    A thread cannot be interrupted: it ends when the session's cancel event, which its
    waits watch, is set. Returning at once (as a bare ``asyncio.to_thread`` does) would
    let the local API count the session done and start another on the same reader or
    camera while the old worker still reads it. ``stop``, that event (required: every
    worker is a session's), is set when the caller is cancelled: a task cancelled alone
    (a caller's timeout, Ctrl-C) otherwise waited for a worker that went on to the
    session's end. The wait after a cancel is shielded too, each time: a second cancel (a
    kiosk app's DELETE sent again, the agent stopping after one) cancelled the wait itself,
    and the session ended with its worker still driving the device.
    """
    work = asyncio.ensure_future(asyncio.to_thread(function, *args, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        stop.set()
        await _until_ended(work)
        raise


async def _until_ended(work: asyncio.Future[Any]) -> None:
    """Wait for a cancelled session's worker to end, whatever cancels this wait meanwhile."""
    while not work.done():
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(work)
    if not work.cancelled():
        work.exception()  # its own error is moot (the session was cancelled): retrieved, so never logged as lost


@functools.cache
def same_finger_threshold() -> float:
    from biometrics.fingerprint import threshold_for_fmr

    return threshold_for_fmr(SAME_FINGER_FMR)


class Reader(Protocol):
    """What a session needs from a fingerprint reader (the ZFM driver is one)."""

    def wait_for_finger(self, timeout_s: float, *, cancel: threading.Event | None = None) -> None: ...
    def wait_for_lift(self, timeout_s: float, *, cancel: threading.Event | None = None) -> bool: ...
    def download_image(self): ...


@dataclass(frozen=True)
class SessionToken:
    """The verifier's short-lived token; never used past its lifetime (monotonic clock)."""

    value: str = field(repr=False)
    expires_monotonic: float

    def current(self) -> str | None:
        return self.value if time.monotonic() < self.expires_monotonic else None


class SessionError(AgentError):
    """A session could not complete (no usable capture, cancelled, refused)."""


class NoFingerError(SessionError):
    """Nobody put a finger on the sensor in time: the session ended, and the person must start again.

    Why not the driver's error as it is: it said "no finger on the sensor within 15 s (fix: place a
    finger on the sensor)", a fix that no longer works once the session is over (placing the finger
    then does nothing), and printed the fix twice on a terminal. A touch lifted before the sensor took
    it looks the same to the sensor: the fix says to hold the finger there.
    """

    def __init__(self, timeout: FingerTimeout) -> None:
        super().__init__(
            # Rounded: a driver may give the wait's remainder after its set-up (0.999898 s for 1 s).
            f"no finger was placed on the sensor within {round(timeout.seconds, 1):g} s, so the session ended",
            fix="start again: place a finger on the sensor when asked, and hold it there until asked to lift it",
        )


@dataclass
class Timings:
    """Where the time of one decision went, in milliseconds."""

    capture_ms: float = 0.0
    extract_ms: float = 0.0
    network_ms: float = 0.0  # round trips of the signed requests, the verifier's matching included
    match_ms: float = 0.0  # of which the verifier's matching (its Server-Timing)
    phases: dict[str, float] = field(default_factory=dict)


@dataclass
class CaptureSession:
    reader: Reader
    client: VerifierClient
    emit: Callable[[dict[str, Any]], None] = lambda event: None
    min_quality: int = 30
    max_attempts: int = 4
    finger_timeout_s: float = 15.0
    lift_reminder_s: float = 5.0  # a finger still on the sensor after this is reminded to lift (then finger_timeout_s)
    resolution_dpi: int = 500
    timings: Timings = field(default_factory=Timings)

    session_token: SessionToken | None = None
    # set by cancel(): stops reader waits; shared with the session this one is a step-up of (cancel_scope)
    cancelled: threading.Event = field(default_factory=inherited_cancel)
    # A step-up asking for a face (acr_values "face"): (subject, step_up id) -> the face's answer.
    face_step_up: Callable[[str, str], Awaitable[Decision | StepUp]] | None = None
    # enroll --add of a subject with no finger (face first): subject -> (the face verification's result, the
    # session token it earned: a session's, or under a finger,face rule an enrollment token for fingers only).
    face_verify: Callable[[str], Awaitable[tuple[dict[str, Any], SessionToken | None]]] | None = None

    def __post_init__(self) -> None:
        self.api = VerifierAPI(self.client)

    def cancel(self) -> None:
        self.cancelled.set()

    def _prompt(self, code: str, message: str = "") -> None:
        self.emit({"type": "prompt", "code": code, "message": message or MESSAGES.get(code, code)})

    async def _waiting(self, wait: Callable[..., T], timeout_s: float) -> T:
        """A reader's wait (finger, lift) in the worker: it watches the session's cancel event, which a cancelled
        caller sets (:func:`in_worker`)."""
        return await in_worker(wait, timeout_s, cancel=self.cancelled, stop=self.cancelled)

    async def capture(self, place_message: str = "") -> bytes:
        """One good-enough template as an ISO/IEC 19794-2 record, with prompts until there is one."""
        from biometrics.fingerprint.iso19794_2 import encode

        return encode(await self._capture_template(place_message))

    async def _take_image(self) -> Any:
        """Wait for a finger and fetch its image; None when the reader asks for another try.

        A reader's retry (libfprint's "swipe too short", a serial module that could
        not image a wet finger) is no failure of the session: its feedback code is
        prompted, as a match-on-sensor session does, and the attempt counts. The
        finger must come off before the next attempt (a serial module would image
        the same unwiped finger again at once; libfprint's readers are lifted already).
        """
        started = time.perf_counter()
        try:
            try:
                await self._waiting(self.reader.wait_for_finger, self.finger_timeout_s)
            except FingerTimeout as timeout:
                raise NoFingerError(timeout) from None
            # The sensor holds the image now: the finger may go while it crosses the line (seconds on serial).
            self._prompt("lift_finger")
            return await in_worker(self.reader.download_image, stop=self.cancelled)
        except RetryCapture as retry:
            log.info("capture_retry", feedback=retry.feedback)
            self._prompt(retry.feedback, str(retry.args[0]) if retry.args else "")
            await self._await_lift()
            return None
        finally:
            self.timings.capture_ms += (time.perf_counter() - started) * 1000

    async def _await_lift(self) -> None:
        """The finger off the sensor before anything else: reminded once, and the session ends if it stays.

        Why: a wait that timed out was ignored. A person who kept the finger on heard
        nothing for 15 s, then was asked to place it and the module imaged the same
        placement again, so an enrollment's "three captures" could be one.
        """
        if await self._waiting(self.reader.wait_for_lift, self.lift_reminder_s):
            return
        self._prompt("lift_finger", LIFT_AGAIN_MESSAGE)
        if not await self._waiting(self.reader.wait_for_lift, self.finger_timeout_s):
            raise SessionError(
                "the finger stayed on the sensor, so the session ended",
                fix="start again, and lift your finger each time you are asked",
            )

    async def _capture_template(self, place_message: str = "") -> FingerprintTemplate:
        from biometrics.fingerprint import FingerprintImageError, extract_with_quality

        retake = ""  # after a capture the gate refused: the next prompt says so (else it reads as the first)
        for attempt in range(1, self.max_attempts + 1):
            if getattr(self.reader, "connected", True) is False:
                # Before the prompt: a reader known to be unplugged asked the person to "Place your finger on
                # the sensor", then ended the session at once with device_not_connected. One the stopping agent
                # closed is said as the stop (agent_stopping: try again once it is back), not "plug it in"; one
                # pulled out before the stop is still not connected (Device.stopped_by_agent).
                from agent.devices.errors import DeviceStopped, DeviceUnavailable

                name = getattr(self.reader, "name", "reader")
                stopped = getattr(self.reader, "stopped_by_agent", False)
                raise DeviceStopped(name) if stopped else DeviceUnavailable(name)
            self._prompt("place_finger", retake or place_message)
            image = await self._take_image()
            if image is None:
                continue
            started = time.perf_counter()
            try:  # in a worker: 10 to 50 ms of numpy here (more on a Pi) stalled the loop's API, watches, deliveries
                dpi = self.resolution_dpi
                template, quality = await in_worker(extract_with_quality, image, dpi, stop=self.cancelled)
            except FingerprintImageError:
                template, quality = None, None
            finally:
                del image  # the raw image ends here
            self.timings.extract_ms += (time.perf_counter() - started) * 1000
            await self._await_lift()
            usable = template is not None and MIN_MINUTIAE_PER_VIEW <= len(template.minutiae) <= MAX_MINUTIAE_PER_VIEW
            if usable and quality is not None and quality.score >= self.min_quality:
                return template
            codes = quality.feedback if quality is not None else ("place_finger",)
            log.info("capture_rejected", attempt=attempt, quality=quality.score if quality else 0, feedback=list(codes))
            # The gate's hints (press harder, move left, too dry...); its bare "place_finger" (nothing readable
            # there) is no hint: prompted as it was, the person saw "Place your finger on the sensor" twice
            # and nothing saying the capture they had just given was refused.
            for code in [c for c in codes if c != "place_finger"][:2]:
                self._prompt(code)
            retake = RETAKE_MESSAGE
        raise SessionError(
            f"no capture good enough after {self.max_attempts} attempts",
            fix="clean the sensor and the finger, press flat and hold still",
        )

    async def _timed(self, call: Any) -> Any:
        """Await a signed call, adding its round trip and the verifier's matching to the timings."""
        started = time.perf_counter()
        timing: dict[str, float] = {}
        try:
            return await call(timing)
        finally:  # a step-up (401) is a round trip too
            self.timings.network_ms += (time.perf_counter() - started) * 1000
            self.timings.match_ms += timing.get("match", 0.0)

    async def enroll(
        self,
        subject: str,
        captures: int = 3,
        group: str | None = None,
        fingers: int = 2,
        verify_first: bool = False,
    ) -> dict[str, Any]:
        """``captures`` templates of each of ``fingers`` fingers, consolidated and sent as one enrollment.

        Two fingers by default: a step-up asks for "another finger", which must be
        enrolled to be recognised. Consolidation on the device: each capture must
        match an earlier capture of the same finger (else it is taken again), and
        a new finger must not match one already taken (the same finger twice would
        make the step-up meaningless). ``verify_first`` adds templates to an
        enrolled subject: the person verifies, and the verifier's session token
        (bound to this device, minutes long) authorises the enrollment.
        """
        challenge = None
        if verify_first:
            verified = await self._verify_to_add(subject)
            if verified.get("decision") not in ("accept", "factor_not_enrolled"):
                raise SessionError(
                    f"{subject} was not verified, so no templates are added",
                    fix="verify with a finger already enrolled for this subject, then enroll again",
                )
        else:
            # Refusals before the first capture; with no session token to come, an id already enrolled among them.
            live = self.session_token.current() if self.session_token is not None else None
            challenge = await self.api.challenge("enroll", subject, group, first=live is None)
        total = captures * fingers
        taken: list[list[FingerprintTemplate]] = []
        for finger in range(fingers):
            message = "" if finger == 0 else "Place another finger on the sensor"
            taken.append(await self._enroll_finger(captures, message, taken, total))
        self.emit({"type": "progress", "step": total, "total": total})
        from biometrics.fingerprint.iso19794_2 import encode

        records = [encode(t) for views in taken for t in views]
        # Never a token past its lifetime: the verifier would refuse it anyway.
        token = self.session_token.current() if self.session_token is not None else None
        answer = await self._timed(
            lambda timing: self.api.enroll(
                subject, records, group=group, session_token=token, challenge=challenge, timing=timing
            )
        )
        result = {"type": "result", "operation": "enroll", **answer.json()}
        self.emit(result)
        return result

    async def _verify_to_add(self, subject: str) -> dict[str, Any]:
        """The verification an ``--add`` needs: by finger, or by face for a subject who has no finger yet.

        A face-first subject (no finger enrolled: the verifier answers unknown-subject to a
        finger) verifies on this device's camera; its session token, or under a finger,face
        rule the enrollment token for fingers its face earned, authorises the fingers.
        """
        try:
            return await self.verify(subject)
        except UnknownSubjectError:
            if self.face_verify is None:
                raise
            with cancel_scope(self.cancelled):  # the face session made for it stops with this one
                verified, self.session_token = await self.face_verify(subject)
            return verified

    async def _enroll_finger(
        self, captures: int, message: str, earlier: list[list[FingerprintTemplate]], total: int
    ) -> list[FingerprintTemplate]:
        """The captures of one finger, each agreeing with the ones before and unlike the other fingers."""
        from biometrics.fingerprint import match

        views: list[FingerprintTemplate] = []
        done = sum(len(v) for v in earlier)
        retakes = 0
        while len(views) < captures:
            self.emit({"type": "progress", "step": done + len(views), "total": total})
            template = await self._capture_template(message)
            if any(match(template, other) >= same_finger_threshold() for finger in earlier for other in finger):
                message = "That is a finger this enrollment already took: place another finger"
            elif views and max(match(template, view) for view in views) < same_finger_threshold():
                message = "That does not look like the same finger: place the same finger again"
            else:
                views.append(template)
                message = ""
                continue
            retakes += 1
            log.info("enrollment_capture_retaken", reason=message, retakes=retakes)
            if retakes > self.max_attempts:
                raise SessionError(
                    "the enrollment captures do not agree",
                    fix="start again: one finger at a time, pressed flat, the same finger for each of its captures",
                )
        return views

    async def verify(self, subject: str) -> dict[str, Any]:
        """1:1 against a claimed subject; a step-up (RFC 9470) becomes a prompt for another finger."""
        challenge = await self.api.challenge("verify", subject)  # an unknown subject is said before the finger
        record = await self.capture()
        answer = await self._verify_call(subject, record, challenge)
        if isinstance(answer, StepUp):
            self.emit({"type": "step_up", "acr_values": answer.acr_values, "reasons": answer.reasons})
            if answer.acr_values == ACR_FACE:
                answer = await self._face_step_up(subject, answer)
        if isinstance(answer, StepUp):
            challenge = await self.api.challenge("verify", subject)
            second = await self.capture(place_message="Place another finger on the sensor")
            answer = await self._verify_call(subject, second, challenge, step_up=answer.step_up)
            if isinstance(answer, StepUp):
                raise SessionError(
                    "the verifier asked for yet another factor after the second finger",
                    fix="start the verification again; if it persists, see the verifier's step-up policy",
                )
        if answer.token is not None and answer.expires_in is not None:
            self.session_token = SessionToken(answer.token, time.monotonic() + answer.expires_in)
        result = {"type": "result", "operation": "verify", **answer.public()}
        self.emit(result)
        return result

    async def verify_step_up(self, subject: str, step_id: str) -> Decision | StepUp:
        """A finger the verifier asks for after a face (``acr_values="finger"``): one capture with the step-up id."""
        challenge = await self.api.challenge("verify", subject)
        record = await self.capture(place_message="Place a finger on the sensor")
        return await self._verify_call(subject, record, challenge, step_up=step_id)

    async def _face_step_up(self, subject: str, asked: StepUp) -> Decision | StepUp:
        """The verifier's policy needs a face too: run the face session's step-up, or say what is missing."""
        if self.face_step_up is None:
            raise SessionError("the verifier asks for a face and this device has no camera",
                               fix="configure a [devices.camera] section, or verify this subject at a kiosk with one")
        with cancel_scope(self.cancelled):  # the face session made for it stops with this one
            answer = await self.face_step_up(subject, asked.step_up)
        if isinstance(answer, StepUp):
            raise SessionError("the verifier asked for yet another factor after the face",
                               fix="start the verification again; if it persists, see the verifier's factor rules")
        return answer

    async def _verify_call(
        self, subject: str, record: bytes, challenge: Challenge, step_up: str | None = None
    ) -> Decision | StepUp:
        return await self._timed(
            lambda timing: self.api.verify(subject, [record], step_up=step_up, challenge=challenge, timing=timing)
        )

    async def identify(self) -> dict[str, Any]:
        challenge = await self.api.challenge("identify")
        record = await self.capture()
        answer = await self._timed(lambda timing: self.api.identify([record], challenge=challenge, timing=timing))
        result = {"type": "result", "operation": "identify", **answer.json()}
        self.emit(result)
        return result
