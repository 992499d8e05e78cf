"""Whole sessions from a USB reader (libfprint's virtual_image) to the verifier's decision, over real mTLS."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from agent.client import VerifierClient
from agent.sessions import CaptureSession
from simulators.fingers import FingerGenerator

SIZE = (256, 288)


class PersonAtUsbReader:
    """Puts the next finger down once the reader waits for one (as a person does when the sensor lights up)."""

    def __init__(self, reader, feeder, placements: list[tuple[int, int]]) -> None:
        self.reader, self.feeder = reader, feeder
        self.placements = list(placements)
        self.fingers = FingerGenerator(11)
        self.sent: list[np.ndarray] = []
        self.prompts: list[str] = []
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)
        if event["type"] != "prompt":
            return
        self.prompts.append(event["code"])
        if event["code"] == "place_finger":
            finger, impression = self.placements.pop(0)
            image = self.fingers.image(finger, impression, SIZE)
            self.sent.append(image)
            threading.Thread(target=self._place, args=(image,), daemon=True).start()

    def _place(self, image: np.ndarray) -> None:
        deadline = time.monotonic() + 10
        while not self.reader.finger_needed() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.feeder.image(image)


class RecordingReader:
    """The libfprint reader as the session sees it, keeping a copy of what it handed over (test only)."""

    def __init__(self, reader) -> None:
        self.reader = reader
        self.handed: list[np.ndarray] = []

    def wait_for_finger(self, timeout_s, *, cancel=None):
        return self.reader.wait_for_finger(timeout_s, cancel=cancel)

    def wait_for_lift(self, timeout_s, *, cancel=None):
        return self.reader.wait_for_lift(timeout_s, cancel=cancel)

    def download_image(self):
        image = self.reader.download_image()
        self.handed.append(image.copy())
        return image


def _session(provisioned, reader, person, operation: str, *args):
    config, identity = provisioned
    recording = RecordingReader(reader)

    async def go():
        async with VerifierClient(config, identity) as client:
            session = CaptureSession(recording, client, emit=person, resolution_dpi=reader.info.dpi)
            return await getattr(session, operation)(*args)

    return asyncio.run(go()), recording


def test_enroll_and_verify_with_a_usb_image_reader(provisioned, virtual_image_reader) -> None:
    reader, feeder = virtual_image_reader
    enrolment = PersonAtUsbReader(reader, feeder, [(0, 0), (0, 1), (0, 2), (4, 0), (4, 1), (4, 2)])
    result, recording = _session(provisioned, reader, enrolment, "enroll", "carol", 3)
    assert result["templates"] == 6
    assert len(recording.handed) == len(enrolment.sent) == 6
    for sent, handed in zip(enrolment.sent, recording.handed, strict=True):
        assert handed.tobytes() == sent.tobytes(), "libfprint handed over other pixels than the reader sent"

    genuine = PersonAtUsbReader(reader, feeder, [(0, 3), (4, 3)])  # a step-up may ask for the second finger
    answer, _ = _session(provisioned, reader, genuine, "verify", "carol")
    assert answer["decision"] == "accept"
    impostor = PersonAtUsbReader(reader, feeder, [(7, 0), (8, 0)])
    answer, _ = _session(provisioned, reader, impostor, "verify", "carol")
    assert answer["decision"] == "reject"


class RetryingPerson(PersonAtUsbReader):
    """A person whose first swipes are too short: the reader answers those with libfprint's retry."""

    def __init__(self, reader, feeder, retries: int, placements: list[tuple[int, int]]) -> None:
        super().__init__(reader, feeder, placements)
        self.retries = retries

    def __call__(self, event: dict) -> None:
        if self.retries and event.get("code") == "place_finger":
            self.retries -= 1
            self.events.append(event)
            self.prompts.append(event["code"])
            threading.Thread(target=self._swipe_too_short, daemon=True).start()
            return
        super().__call__(event)

    def _swipe_too_short(self) -> None:
        from simulators.fprint import RETRY_TOO_SHORT

        deadline = time.monotonic() + 10
        while not self.reader.finger_needed() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.feeder.retry(RETRY_TOO_SHORT)


def _capture(reader, person, max_attempts: int = 4) -> bytes:
    """One capture only: it reaches no verifier, so the session needs no client."""
    session = CaptureSession(reader, None, emit=person, resolution_dpi=reader.info.dpi, max_attempts=max_attempts,
                             finger_timeout_s=10)
    return asyncio.run(session.capture())


def test_a_retry_of_a_usb_image_reader_is_a_prompt_and_the_next_attempt(virtual_image_reader) -> None:
    reader, feeder = virtual_image_reader
    person = RetryingPerson(reader, feeder, 1, [(0, 0)])
    record = _capture(reader, person)
    assert record and len(person.sent) == 1
    assert person.prompts[:4] == ["place_finger", "too_fast", "place_finger", "lift_finger"]
    said = next(e for e in person.events if e.get("code") == "too_fast")
    assert said["message"].startswith("The swipe was too short")


def test_retries_count_as_attempts(virtual_image_reader) -> None:
    from agent.sessions import SessionError

    reader, feeder = virtual_image_reader
    person = RetryingPerson(reader, feeder, 2, [])
    with pytest.raises(SessionError, match="after 2 attempts"):
        _capture(reader, person, max_attempts=2)
    assert person.prompts == ["place_finger", "too_fast", "place_finger", "too_fast"]
