"""Whole sessions over real mTLS with the simulated serial module and a scripted finger."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest

from agent.client import VerifierClient
from agent.sessions import CaptureSession
from biometrics.fingerprint import extract_with_quality
from biometrics.fingerprint.iso19794_2 import encode
from drivers.zfm.codec import unpack_image
from drivers.zfm.driver import ZfmModule
from tests.conftest import cancel_session_task, run_bounded


class ScriptedFinger:
    """A person at the terminal: puts the next (finger, impression) down when prompted, lifts when asked."""

    def __init__(self, sim, finger: int, impressions: list[int | tuple[int, int]]) -> None:
        self.sim = sim
        self.placements = [i if isinstance(i, tuple) else (finger, i) for i in impressions]
        self.prompts: list[str] = []
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)
        if event["type"] != "prompt":
            return
        self.prompts.append(event["code"])
        if event["code"] == "place_finger":
            finger, impression = self.placements.pop(0)
            self.sim.place(finger=finger, impression=impression)
        elif event["code"] == "lift_finger":
            self.sim.lift()


def run_session(provisioned, sim, finger: int, impressions: list[int], operation: str, *args):
    config, identity = provisioned
    user = ScriptedFinger(sim, finger, impressions)

    async def go():
        async with VerifierClient(config, identity) as client:
            with ZfmModule(sim.port) as reader:
                session = CaptureSession(reader, client, emit=user)
                return await getattr(session, operation)(*args), session

    result, session = asyncio.run(go())
    return result, user, session


def test_enroll_verify_identify_from_the_sensor(provisioned, zfm_sim) -> None:
    two_fingers = [(0, 0), (0, 1), (0, 2), (4, 0), (4, 1), (4, 2)]
    result, user, _ = run_session(provisioned, zfm_sim, 0, two_fingers, "enroll", "alice", 3)
    assert result["templates"] == 6
    assert [e["step"] for e in user.events if e["type"] == "progress"] == [0, 1, 2, 3, 4, 5, 6]
    assert user.prompts.count("place_finger") == 6 and user.prompts.count("lift_finger") == 6
    assert any(e.get("message", "").startswith("Place another finger") for e in user.events)
    run_session(provisioned, zfm_sim, 1, [0, 1, 2], "enroll", "bob", 3, None, 1)

    # The device's first verification: a step-up asks for another finger, inside the same session.
    genuine, user, session = run_session(provisioned, zfm_sim, 0, [(0, 3), (4, 3)], "verify", "alice")
    assert genuine["decision"] == "accept" and genuine["has_token"]
    step_ups = [e for e in user.events if e["type"] == "step_up"]
    assert step_ups and step_ups[0]["acr_values"] == "second_finger"
    assert any(e.get("message", "").startswith("Place another finger") for e in user.events)
    assert session.session_token is not None and session.session_token.current()
    assert session.timings.extract_ms > 0 and session.timings.network_ms > session.timings.match_ms > 0
    impostor, _, _ = run_session(provisioned, zfm_sim, 1, [3], "verify", "alice")
    assert impostor["decision"] == "reject"
    found, _, _ = run_session(provisioned, zfm_sim, 1, [4], "identify")
    assert found["candidates"] and found["candidates"][0]["subject"] == "bob"


def test_a_blank_sensor_image_is_asked_again_not_sent(provisioned, zfm_sim) -> None:
    """A capture with no ridges (a smudge) fails the quality gate; the user is asked again."""

    class SmudgeFirst(ScriptedFinger):
        def __call__(self, event: dict) -> None:
            if event["type"] == "prompt" and event["code"] == "place_finger" and not self.prompts:
                self.prompts.append("place_finger")
                self.sim.place(np.full((288, 256), 200, np.uint8))
                return
            super().__call__(event)

    config, identity = provisioned
    user = SmudgeFirst(zfm_sim, 0, [0, 1, 2, 3])

    async def go():
        async with VerifierClient(config, identity) as client:
            with ZfmModule(zfm_sim.port) as reader:
                return await CaptureSession(reader, client, emit=user).enroll("dora", 1, fingers=1)

    result = asyncio.run(go())
    assert result["templates"] == 1
    assert user.prompts.count("place_finger") >= 2, "asked to place the finger again"


@pytest.mark.parametrize("zfm_sim", ["r503"], indirect=True)
def test_a_small_sensor_works_too(provisioned, zfm_sim) -> None:
    result, _, _ = run_session(provisioned, zfm_sim, 2, [0, 1], "enroll", "erin", 2, None, 1)
    assert result["templates"] == 2


def test_no_image_or_template_bytes_left_on_the_device(provisioned, zfm_sim, tmp_path, monkeypatch) -> None:
    """After a whole session: nothing of the image or the template in the state dir, the logs or temp folders."""
    import io
    import tempfile

    from agent.logs import configure_logging

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    logs = io.StringIO()
    configure_logging("debug", "json", stream=logs)
    run_session(provisioned, zfm_sim, 0, [0, 1, 2], "enroll", "frank", 3, None, 1)
    run_session(provisioned, zfm_sim, 0, [3, 3], "verify", "frank")  # step-up: the same finger again, refused
    image = zfm_sim.image.tobytes()
    packed = ((zfm_sim.image.reshape(-1)[0::2] & 0xF0) | (zfm_sim.image.reshape(-1)[1::2] >> 4)).tobytes()
    needles = [b"FMR\x00 20\x00"] + [image[i : i + 48] for i in range(0, len(image), 4096)]
    needles += [packed[i : i + 48] for i in range(0, len(packed), 4096)]
    # The template the session made from the last capture, as the agent saw it (4-bit image over the wire).
    seen = unpack_image(packed, zfm_sim.image.shape[1], zfm_sim.image.shape[0])
    template, _ = extract_with_quality(seen, 500)
    record = encode(template)
    needles += [record[i : i + 12] for i in range(28, len(record) - 12, 12)]  # the minutiae, 2 at a time
    needles += [base64.b64encode(record[i : i + 30]) for i in range(30, len(record) - 30, 30)]
    config, _ = provisioned
    files = [p for root in (config.agent.state_dir, temp) for p in root.rglob("*") if p.is_file()]
    haystacks = {str(p): p.read_bytes() for p in files}
    haystacks["logs"] = logs.getvalue().encode()
    assert "reader_opened" in logs.getvalue(), "the run's logs were captured"
    leaks = [(where, n) for where, data in haystacks.items() for n, needle in enumerate(needles) if needle in data]
    assert leaks == []


def test_a_cancelled_enrollment_leaves_nothing_behind(provisioned, zfm_sim, verifier) -> None:
    """Cancelled after one of three captures: nothing enrolled, nothing written, no task left, the sensor free."""
    import sqlite3

    from drivers.zfm.errors import CaptureCancelled

    config, identity = provisioned
    state_before = sorted((p.name, p.stat().st_size) for p in config.agent.state_dir.rglob("*") if p.is_file())

    class CancelOnSecondCapture(ScriptedFinger):
        session: CaptureSession

        def __call__(self, event: dict) -> None:
            if event["type"] == "prompt" and event["code"] == "place_finger" and self.prompts.count("place_finger"):
                self.prompts.append("place_finger")
                self.session.cancel()  # the kiosk app's cancel, while the reader waits for a finger
                return
            super().__call__(event)

    user = CancelOnSecondCapture(zfm_sim, 0, [0, 1, 2])

    async def go():
        async with VerifierClient(config, identity) as client:
            with ZfmModule(zfm_sim.port) as reader:
                user.session = CaptureSession(reader, client, emit=user, finger_timeout_s=10)
                with pytest.raises(CaptureCancelled):
                    await user.session.enroll("gina", 3)
                leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                # The same reader and connection serve the next session at once.
                retry = ScriptedFinger(zfm_sim, 2, [0])
                again = await CaptureSession(reader, client, emit=retry).enroll("hugo", 1, fingers=1)
                return leftover, again

    leftover, again = asyncio.run(go())
    assert leftover == [] and again["templates"] == 1
    assert [e["step"] for e in user.events if e["type"] == "progress"] == [0, 1]  # one capture made, then cancel
    with sqlite3.connect(verifier.pki_dir / "verifier.sqlite") as db:
        subjects = {row[0] for row in db.execute("SELECT DISTINCT subject_id FROM enrollments")}
    assert "gina" not in subjects and "hugo" in subjects
    assert zfm_sim.commands.count(0x06) == 0, "nothing stored on the module"
    state_after = sorted((p.name, p.stat().st_size) for p in config.agent.state_dir.rglob("*") if p.is_file())
    assert state_after == state_before


def test_enrollment_captures_must_agree_and_fingers_must_differ(provisioned, zfm_sim) -> None:
    """On-device consolidation: a capture of another finger is taken again; the same finger twice is refused."""
    placements = [(0, 0), (3, 0), (0, 1), (0, 2), (0, 3), (4, 0), (4, 1), (4, 2)]
    result, user, _ = run_session(provisioned, zfm_sim, 0, placements, "enroll", "jo", 3)
    messages = [e["message"] for e in user.events if e["type"] == "prompt" and e["code"] == "place_finger"]
    assert result["templates"] == 6 and user.placements == []
    assert "That does not look like the same finger: place the same finger again" in messages  # (3, 0)
    # (0, 3) as the second finger; "already enrolled" read, under --add, as a finger enrolled before the session
    assert "That is a finger this enrollment already took: place another finger" in messages


def test_adding_templates_needs_the_persons_verification(provisioned, zfm_sim) -> None:
    """An enrolled subject gets more templates only with a live session token from their verification here."""
    from agent.errors import VerifierError
    from agent.sessions import SessionToken

    run_session(provisioned, zfm_sim, 0, [(0, 0), (0, 1), (4, 0), (4, 1)], "enroll", "ivy", 2)
    with pytest.raises(VerifierError) as refused:
        run_session(provisioned, zfm_sim, 6, [0], "enroll", "ivy", 1, None, 1)
    assert refused.value.status == 401 and refused.value.problem["type"].endswith("verification-required")

    # verify_first: the person verifies (the device's first use: a step-up), then more captures of an
    # enrolled finger are added (each must match ivy: a token never adds someone else's finger).
    added, user, session = run_session(
        provisioned, zfm_sim, 0, [(0, 2), (4, 2), (0, 3), (0, 4)], "enroll", "ivy", 2, None, 1, True
    )
    assert added["templates"] == 2
    assert [e["operation"] for e in user.events if e["type"] == "result"] == ["verify", "enroll"]

    # A token past its lifetime is never sent: the verifier sees no token, not an expired one.
    config, identity = provisioned

    async def stale():
        async with VerifierClient(config, identity) as client:
            with ZfmModule(zfm_sim.port) as reader:
                late = CaptureSession(reader, client, emit=ScriptedFinger(zfm_sim, 7, [0]))
                late.session_token = SessionToken(session.session_token.value, expires_monotonic=0.0)
                await late.enroll("ivy", 1, fingers=1)

    with pytest.raises(VerifierError) as expired:
        asyncio.run(stale())
    assert expired.value.problem["type"].endswith("verification-required")


def test_an_unknown_subject_is_said_before_anyone_touches_the_sensor(provisioned, zfm_sim) -> None:
    """The challenge names the operation and the subject: the refusal comes before the first prompt."""
    from agent.errors import UnknownSubjectError

    with pytest.raises(UnknownSubjectError) as refused:
        run_session(provisioned, zfm_sim, 0, [0], "verify", "nobody")
    assert refused.value.fix == "enroll the subject first: capture-agent enroll --subject nobody"
    assert 0x01 not in zfm_sim.commands, "no image was asked of the sensor"


def test_a_finger_the_module_cannot_image_is_a_prompt_and_the_next_attempt(zfm_sim) -> None:
    """GenImg's 0x03 (a wet or smudged finger): "wipe the sensor", the finger off and on, the next attempt."""
    from simulators.zfm import Fault

    class WipingFinger(ScriptedFinger):
        def __call__(self, event: dict) -> None:
            super().__call__(event)
            if event.get("code") == "clean_sensor":
                self.sim.lift()  # lifts, wipes, and places again when asked

    user = WipingFinger(zfm_sim, 0, [0, 1])
    zfm_sim.inject(Fault.IMAGING_FAILED)

    async def go() -> bytes:
        with ZfmModule(zfm_sim.port, reply_timeout_s=0.5) as reader:
            # capture() reaches no verifier: no client needed
            return await CaptureSession(reader, None, emit=user, finger_timeout_s=5).capture()

    assert asyncio.run(go())
    assert user.prompts[:4] == ["place_finger", "clean_sensor", "place_finger", "lift_finger"]
    assert user.placements == [], "the second placement was the one imaged"


def test_a_finger_session_whose_task_is_cancelled_stops_its_reader_wait_without_being_told_twice(
    provisioned, zfm_sim
) -> None:
    """As a face session's (bb5c5f6): only ``cancel()`` stopped the reader's wait for a finger, so a session whose
    task alone was cancelled (a caller's timeout, Ctrl-C) waited for its worker to the finger timeout (an hour
    here) before the cancellation reached its caller."""

    config, identity = provisioned
    outcome: list[object] = []

    async def go() -> None:
        async with VerifierClient(config, identity) as client:
            with ZfmModule(zfm_sim.port) as reader:
                asked = asyncio.Event()

                def emit(event: dict) -> None:  # called on the loop (CaptureSession._prompt)
                    if event["type"] == "prompt" and event["code"] == "place_finger":
                        asked.set()

                session = CaptureSession(reader, client, emit=emit, finger_timeout_s=3600)
                task = asyncio.create_task(session.identify())
                await asked.wait()  # nobody places a finger: the worker is about to wait on the reader
                outcome.extend(await cancel_session_task(session, task))

    run_bounded(go, hang="the cancelled session waited for its reader worker to reach the finger timeout")
    assert outcome == ["cancelled", True]


def test_a_worker_cancelled_twice_is_still_waited_for_to_its_end() -> None:
    """``in_worker`` shields the worker from the first cancel and waits for it; but that wait was not shielded:
    a second cancel (a kiosk app's DELETE sent again, its stream dropped after a DELETE, the agent stopping after
    one) cancelled the wait, and the session ended, its reader free for the next session, while its worker
    still drove the device. The worker here is a driver call that does not poll the cancel (a serial image
    transfer): it ends when released, and the task must end only after it."""
    import threading

    from agent.sessions import in_worker

    stop, release, started = threading.Event(), threading.Event(), threading.Event()
    ended: list[str] = []

    def transfer() -> str:
        started.set()
        release.wait(60)  # a bound on the test, never reached: the test releases it
        ended.append("worker")
        return "image"

    async def go() -> list[str]:
        task = asyncio.create_task(in_worker(transfer, stop=stop))
        task.add_done_callback(lambda _: ended.append("task"))
        await asyncio.to_thread(started.wait, 60)
        task.cancel()
        await asyncio.sleep(0)  # the first cancel reaches in_worker: it sets stop and waits for the worker
        assert stop.is_set()
        task.cancel()  # the second
        await asyncio.wait({task}, timeout=2)  # on the old code the task ended here, the worker running
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return ended

    assert asyncio.run(go()) == ["worker", "task"], "the task ended while its worker still ran"


def test_a_captures_extraction_leaves_the_event_loop_free(zfm_sim, monkeypatch) -> None:
    """Extraction (10 to 50 ms of numpy per image, more on a Pi) ran on the daemon's event loop: meanwhile the
    local API, the device watches and the event deliveries all waited. Here the loop must answer while an
    extraction is under way: the extraction waits for the loop to say so before it goes on."""
    import threading

    import biometrics.fingerprint as fingerprint

    real = fingerprint.extract_with_quality
    extracting, loop_answered = threading.Event(), threading.Event()
    answered_in_time: list[bool] = []

    def extraction_that_waits_for_the_loop(image, dpi):
        extracting.set()
        answered_in_time.append(loop_answered.wait(10))  # at once, unless this call holds the loop itself
        return real(image, dpi)

    monkeypatch.setattr(fingerprint, "extract_with_quality", extraction_that_waits_for_the_loop)
    user = ScriptedFinger(zfm_sim, 0, [0])

    async def go() -> bytes:
        async def answer_once_extraction_starts() -> None:
            await asyncio.to_thread(extracting.wait, 60)
            loop_answered.set()

        answering = asyncio.create_task(answer_once_extraction_starts())
        with ZfmModule(zfm_sim.port) as reader:
            template = await CaptureSession(reader, None, emit=user).capture()
        await answering
        return template

    assert asyncio.run(go())
    assert answered_in_time == [True], "the loop could not run while a capture's template was extracted"
