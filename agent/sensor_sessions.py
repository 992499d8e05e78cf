"""Sessions on a match-on-sensor reader: enroll, verify, identify on the sensor; the verifier gets assertions.

No image and no template leaves such a reader. Enrolling keeps the serialized
print sealed under the state directory (:mod:`agent.devices.prints`) and tells
the verifier "subject S is enrolled on reader R" with a hash of the sealed
print's id (:class:`protocol.sensor.SensorEnrollmentRequest`). Verifying lets
the sensor compare the finger with that print and sends the device-signed
assertion of the result (:class:`protocol.sensor.SensorAssertion`); the
verifier's policy for this device decides: a decision, a step-up (RFC 9470),
or a refusal (a typed error naming the fix).

The policy's step-up (``acr_values="fingerprint_template"``) is satisfied by a
fingerprint template, so it needs an image reader: ``image_session`` (a
:class:`~agent.sessions.CaptureSession` on one) captures a finger and sends it
with the step-up id. A factor rule that needs a face too
(``acr_values="face"``) is satisfied by ``face_step_up``, the face session's
step-up on this device's camera. Without the device asked for, the session
ends with a typed error saying what to connect or ask for.

The other way round, a face verification whose rule needs a finger may be
completed on the sensor: :meth:`SensorSession.verify_step_up` sends the
sensor's assertion with the face's step-up id (the daemon uses it when the
device has a sensor and no image reader).

Retry codes of the sensor (swipe too short, finger not centred, remove and
retry) become prompts of the feedback vocabulary, as with image readers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.client import VerifierClient
from agent.devices.prints import PrintStoreError, SensorPrintStore
from agent.errors import StepUpRequiredError
from agent.sessions import MESSAGES, NoFingerError, SessionError, SessionToken, in_worker
from agent.verifier_api import VerifierAPI, parsed_answer
from drivers.errors import FingerTimeout, RetryCapture
from protocol.face_template import ACR_FACE
from protocol.messages import Decision, StepUp
from protocol.sensor import ReaderIdentity, SensorAssertion, SensorEnrollment, SensorEnrollmentRequest, print_hash

log = structlog.get_logger()


def _retry_feedback(exc: BaseException) -> str | None:
    """The feedback code of a reader's "try again" (:class:`drivers.errors.RetryCapture`), else None."""
    return exc.feedback if isinstance(exc, RetryCapture) else None


@dataclass
class SensorSession:
    """One session on a match-on-sensor device (an :class:`~agent.devices.kinds.FprintDevice`)."""

    device: Any  # enroll / verify / identify on the sensor, through the device's owner
    client: VerifierClient
    prints: SensorPrintStore
    emit: Callable[[dict[str, Any]], None] = lambda event: None
    image_session: Callable[[], Any] | None = None  # a CaptureSession on an image reader, for a step-up
    # A step-up asking for a face (acr_values "face"): (subject, step_up id) -> the face's answer.
    face_step_up: Callable[[str, str], Awaitable[Decision | StepUp]] | None = None
    max_attempts: int = 4
    finger_timeout_s: float = 15.0
    enroll_timeout_s: float = 60.0
    session_token: SessionToken | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.api = VerifierAPI(self.client)

    @property
    def reader(self) -> ReaderIdentity:
        return ReaderIdentity(self.device.driver, self.device.name)

    def cancel(self) -> None:
        self.cancelled.set()

    def _prompt(self, code: str, message: str = "") -> None:
        self.emit({"type": "prompt", "code": code, "message": message or MESSAGES.get(code, code)})

    # ---------------------------------------------------------------- enroll
    async def enroll(
        self,
        subject: str,
        captures: int = 3,
        group: str | None = None,
        fingers: int = 1,
        verify_first: bool = False,
    ) -> dict[str, Any]:
        """Enroll one finger on the sensor (its own number of stages), keep the print sealed, register it.

        ``captures`` and ``fingers`` are the image readers' knobs: the sensor decides
        its stages, and one print per (device, subject) is kept.
        """
        token = None
        if verify_first:
            verified = await self.verify(subject)
            if verified.get("decision") != "accept":
                raise SessionError(f"{subject} was not verified, so no print is added",
                                   fix="verify with the finger already enrolled for this subject, then enroll again")
            token = self.session_token.current() if self.session_token is not None else None
        # Refusals that need no finger (operation, group) come before the sensor lights up.
        challenge = await self.api.challenge("enroll", subject, group, first=token is None)
        loop = asyncio.get_running_loop()

        def progress(stage: int, retry: Any) -> None:  # libfprint's thread: hand over to the loop
            loop.call_soon_threadsafe(self._enroll_progress, stage, retry)

        self._prompt("place_finger")
        try:
            serialized = await in_worker(
                self.device.enroll, self.enroll_timeout_s, cancel=self.cancelled, progress=progress,
                stop=self.cancelled,
            )
        except FingerTimeout as timeout:
            raise NoFingerError(timeout) from None
        previous = self.prints.snapshot(self.device.name, subject)
        print_id = self.prints.save(self.device.name, subject, serialized)
        del serialized
        request = SensorEnrollmentRequest(subject, self.reader, print_hash(print_id), group, token)
        try:
            data = await self.api.signed(request, challenge, None)
        except BaseException:
            # The verifier does not know this print: keep the one it knows (or none), never this one.
            self.prints.restore(self.device.name, subject, previous)
            raise
        answer = parsed_answer(request.path, SensorEnrollment.from_json, data)
        if previous is not None and getattr(self.device, "stores_prints", False):
            # The print replaced (another finger of the subject) stays in the sensor's storage: kept track of for
            # `capture-agent forget`, which would otherwise never find it (the agent keeps one print per subject).
            self.prints.keep_replaced(self.device.name, subject, previous)
        result = {"type": "result", "operation": "enroll", **answer.json()}
        self.emit(result)
        return result

    def _enroll_progress(self, stage: int, retry: Any) -> None:
        feedback = _retry_feedback(retry) if retry is not None else None
        if feedback is not None:  # this touch did not count: say why, then ask again
            self._prompt(feedback, str(retry.args[0]) if retry.args else "")
            self._prompt("place_finger", "Place the same finger again")
            return
        total = getattr(self.device, "enroll_stages", 0) or stage
        self.emit({"type": "progress", "step": stage, "total": total})
        self._prompt("lift_finger")
        if stage < total:
            self._prompt("place_finger", "Place the same finger again")

    # ---------------------------------------------------------------- verify
    async def _on_sensor(self, call: Callable[[], Any]) -> Any:
        """One sensor operation with prompts; a retry code becomes its prompt and another try.

        ``call`` must watch :attr:`cancelled` (verify's and identify's do): a task cancelled alone sets it here,
        or it waited for the sensor's worker to reach its finger timeout (as finger sessions did, 47c5af1).
        """
        for _attempt in range(self.max_attempts):
            self._prompt("place_finger")
            try:
                return await in_worker(call, stop=self.cancelled)
            except FingerTimeout as timeout:
                raise NoFingerError(timeout) from None
            except Exception as exc:
                feedback = _retry_feedback(exc)
                if feedback is None:
                    raise
                log.info("sensor_retry", feedback=feedback)
                self._prompt(feedback, str(exc.args[0]) if exc.args else "")
        raise SessionError(f"the sensor asked to try again {self.max_attempts} times",
                           fix="clean the sensor and the finger, place it flat and centred, hold still")

    async def _sensor_assertion(self, subject: str, step_up: str | None = None) -> SensorAssertion:
        """The finger on the sensor against the subject's print: the assertion to sign (not yet sent)."""
        try:
            print_id, serialized = self.prints.load_with_id(self.device.name, subject)
        except PrintStoreError as exc:
            raise SessionError(exc.message, fix=exc.fix) from None
        matched = await self._on_sensor(
            lambda: self.device.verify(serialized, self.finger_timeout_s, cancel=self.cancelled)
        )
        self._prompt("lift_finger")
        result = "match" if matched else "no_match"
        return SensorAssertion(subject, self.reader, print_hash(print_id), result, step_up)

    async def verify_step_up(self, subject: str, step_id: str) -> Decision | StepUp:
        """A finger the verifier asks for after a face (``acr_values="finger"``), matched on this sensor."""
        return await self._assert(await self._sensor_assertion(subject, step_id))

    async def verify(self, subject: str) -> dict[str, Any]:
        """The sensor compares the finger with the subject's print; the verifier decides on the assertion."""
        answer = await self._assert(await self._sensor_assertion(subject))
        if isinstance(answer, StepUp):
            answer = await self._step_up(subject, answer)
        if answer.token is not None and answer.expires_in is not None:
            self.session_token = SessionToken(answer.token, time.monotonic() + answer.expires_in)
        result = {"type": "result", "operation": "verify", "assurance": "match-on-sensor", **answer.public()}
        self.emit(result)
        return result

    async def _assert(self, assertion: SensorAssertion) -> Decision | StepUp:
        try:
            data = await self.api.signed(assertion, None, None)
        except StepUpRequiredError as exc:
            return parsed_answer(assertion.path, StepUp.from_problem, exc.problem)
        return parsed_answer(assertion.path, Decision.from_json, data)

    async def _step_up(self, subject: str, step: StepUp) -> Decision:
        """The verifier wants a factor it matches itself: a face (the rule's), or a finger on an image reader."""
        self.emit({"type": "step_up", "acr_values": step.acr_values, "reasons": step.reasons})
        if step.acr_values == ACR_FACE:
            if self.face_step_up is None:
                raise SessionError("the verifier asks for a face after the sensor's match; this device has no camera",
                                   fix="configure a camera ([[device]] kind camera), or verify this subject at a "
                                   "kiosk with one")
            answer = await self.face_step_up(subject, step.step_up)
            if isinstance(answer, StepUp):
                raise SessionError("the verifier asked for yet another factor after the face",
                                   fix="start the verification again; if it persists, see the verifier's factor rules")
            return answer
        if self.image_session is None:
            raise SessionError(
                "the verifier asks for a second factor after the sensor's match, and no image reader is connected",
                fix="connect a fingerprint image reader ([[device]] kind zfm or an fprint image reader), "
                "or ask the operator: capture-verifier device allow DEVICE --sensor-assertions accept",
            )
        session = self.image_session()
        challenge = await session.api.challenge("verify", subject)
        record = await session.capture(place_message="Place your finger on the other reader")
        answer = await session.api.verify(subject, [record], step_up=step.step_up, challenge=challenge)
        if isinstance(answer, StepUp):
            raise SessionError("the verifier asked for yet another factor after the template",
                               fix="start the verification again; if it persists, see the verifier's policy")
        return answer

    # ---------------------------------------------------------------- identify
    async def identify(self, subjects: list[str] | None = None) -> dict[str, Any]:
        """1:N on the sensor among the prints kept for this device; the found subject is asserted like a verify."""
        names = subjects if subjects is not None else self.prints.subjects(self.device.name)
        if not names:
            raise SessionError("no print is enrolled on this sensor", fix="enroll a subject on this reader first")
        names, kept, warnings = await self._usable_prints(names)
        index = await self._on_sensor(
            lambda: self.device.identify([blob for _, blob in kept], self.finger_timeout_s, cancel=self.cancelled)
        )
        self._prompt("lift_finger")
        if index is None:
            result = {"type": "result", "operation": "identify", "candidates": [], "assurance": "match-on-sensor"}
            return self._identified(result, warnings)
        subject = names[index]
        assertion = SensorAssertion(subject, self.reader, print_hash(kept[index][0]), "match")
        answer = await self._assert(assertion)
        if isinstance(answer, StepUp):
            answer = await self._step_up(subject, answer)
        candidates = [{"subject": subject, "score": answer.score}] if answer.accepted else []
        result = {"type": "result", "operation": "identify", "candidates": candidates, "assurance": "match-on-sensor"}
        return self._identified(result, warnings)

    def _identified(self, result: dict[str, Any], warnings: list[dict[str, str]]) -> dict[str, Any]:
        """The identification's result, with the prints left out named (a "no candidate" may be one of theirs)."""
        if warnings:
            result["warnings"] = warnings
        self.emit(result)
        return result

    async def _usable_prints(self, names: list[str]) -> tuple[list[str], list[tuple[str, bytes]], list[dict[str, str]]]:
        """The subjects whose prints the sensor can use, their (print id, print), and a warning per one left out.

        Why not fail: one subject's unusable print (altered, of a libfprint that wrote another layout) failed
        every identification on the reader, naming nobody. Everyone else is still identified; the person at the
        terminal and the installer's log learn whose print to enroll again. Checked before the sensor lights up:
        no finger is asked for a list the sensor would refuse. All of them unusable is the session's error.
        """
        kept: dict[str, tuple[str, bytes]] = {}
        problems: dict[str, tuple[str, str]] = {}  # subject -> (why, fix)
        for name in names:
            try:
                kept[name] = self.prints.load_with_id(self.device.name, name)
            except PrintStoreError as exc:
                problems[name] = (exc.message, exc.fix)
        order = list(kept)
        unreadable = await asyncio.to_thread(self.device.unreadable_prints, [kept[name][1] for name in order])
        for index, exc in unreadable.items():
            name = order[index]
            problems[name] = (f"libfprint cannot read it ({getattr(exc, 'why', exc)})",
                              f"enroll {name}'s finger on the reader {self.device.name} again: the print kept for "
                              f"it is unusable (the verifier refuses a second first enrollment and an added one "
                              f"verifies with this print, so its operator first runs: capture-verifier subject "
                              f"remove {name}; then: capture-agent enroll --subject {name})")
        warnings = [self._left_out(name, *problems[name]) for name in names if name in problems]
        usable = [name for name in names if name not in problems]
        if not usable:
            raise SessionError(
                f"no print on the reader {self.device.name} can be used: "
                + "; ".join(f"{name}'s: {problems[name][0]}" for name in names),
                fix="; ".join(problems[name][1] for name in names),
            )
        return usable, [kept[name] for name in usable], warnings

    def _left_out(self, subject: str, why: str, fix: str) -> dict[str, str]:
        """A print left out of an identification: logged (subject and why, never the print) and reported."""
        log.warning("sensor_print_left_out", device=self.device.name, subject=subject, reason=why, fix=fix)
        return {"subject": subject, "message": f"the print of {subject} was left out: {why}", "fix": fix}
