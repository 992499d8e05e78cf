"""Two first enrollments at the same instant (issue 10's known hole): the duplicate search and the insert are one step.

Against the real verifier process over mTLS and HTTP/2: two devices, each with
its own connection, send their enrollments together (``asyncio.gather`` after
both bodies are signed), several rounds, so that two searches that ran before
either insert would show. One person under two ids: exactly one enrollment is
stored, the other is answered ``duplicate-identity``. Two people under one id
(both first enrollments, no session token): exactly one is stored, the other is
told the subject now needs a verification first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from agent.client import VerifierClient
from agent.devstack import LocalVerifier, provision_device
from biometrics.face import challenge_for
from biometrics.fingerprint.iso19794_2 import encode
from protocol.endpoints import CHALLENGES, enrollments_path
from protocol.messages import EnrollmentRequest
from protocol.signing import sign_request
from tests.test_biometric_api import Device
from tests.test_verifier_connections import settings_file
from tests.test_verifier_faces import capture
from verifier.settings import VerifierSettings

ROUNDS = 6

Body = Callable[[Device, VerifierClient, str, int], Awaitable[dict]]


@pytest.fixture
def two_kiosks(tmp_path):
    """A verifier and two enrolling devices; the limits are raised so that only the race decides."""
    extra = settings_file(
        tmp_path, device_requests_per_min=10000, device_challenges_per_min=10000, device_comparisons_per_min=10**7
    )
    with LocalVerifier.running(tmp_path / "pki", extra_args=extra) as verifier:
        first = Device(*asyncio.run(provision_device(verifier, tmp_path / "a", "kiosk-a")))
        second = Device(*asyncio.run(provision_device(verifier, tmp_path / "b", "kiosk-b")))
        yield first, second


@pytest.fixture(scope="module")
def race_fingers(finger_generator):
    """Two impressions (ISO records) of each of ``ROUNDS + 2`` synthetic fingers (not those of synthetic_templates).

    The race is under test here, not the matcher's miss rate at the duplicate
    search's strict threshold (FMR 1e-6), so only fingers whose two impressions
    match clearly above it are used (most do).
    """
    from biometrics.fingerprint import extract, match, threshold_for_fmr

    clear = 1.2 * threshold_for_fmr(VerifierSettings().duplicate_fmr)
    out = []
    for finger_id in range(20, 200):
        finger = finger_generator.finger(finger_id)
        a, b = (extract(imp.image, imp.dpi) for imp in (finger.impression(s) for s in range(2)))
        if match(a, b) >= clear:
            out.append([encode(a), encode(b)])
        if len(out) == ROUNDS + 2:
            return out
    raise AssertionError("too few synthetic fingers match their own second impression above the duplicate threshold")


async def signed_enrollment(
    device: Device, client: VerifierClient, subject: str, records: list[bytes], faces: list[bytes] = ()
) -> dict:
    """A first enrollment's body, signed over a fresh nonce (and, for faces, that nonce's head-turn challenge)."""
    nonce = (await client.call("POST", CHALLENGES, json={}))["nonce"]
    liveness = challenge_for(nonce.encode()).steps if faces else None
    body = EnrollmentRequest(subject, records, faces=list(faces), liveness=liveness).body()
    return sign_request(device.key, "POST", enrollments_path(subject), {"nonce": nonce, **body})


def race(first: Device, second: Device, rounds: list[tuple[tuple[str, Body], tuple[str, Body]]]) -> list[list[tuple]]:
    """Each round: both bodies signed, then both POSTs at once; the (status, problem type) pairs, sorted."""

    async def go() -> list[list[tuple]]:
        out = []
        async with (
            VerifierClient(first.config, first.identity) as a,
            VerifierClient(second.config, second.identity) as b,
        ):
            for index, ((subject_a, body_a), (subject_b, body_b)) in enumerate(rounds):
                bodies = [await body_a(first, a, subject_a, index), await body_b(second, b, subject_b, index)]
                responses = await asyncio.gather(
                    a.request("POST", enrollments_path(subject_a), json=bodies[0]),
                    b.request("POST", enrollments_path(subject_b), json=bodies[1]),
                )
                out.append(sorted((r.status_code, r.json().get("type", "").rsplit("/", 1)[-1]) for r in responses))
        return out

    return asyncio.run(go())


def finger(prints: list[list[bytes]], shot: int, offset: int = 0) -> Body:
    """Impression ``shot`` of the round's finger (round + ``offset``) of ``prints``."""

    async def body(device: Device, client: VerifierClient, subject: str, index: int) -> dict:
        return await signed_enrollment(device, client, subject, [prints[index + offset][shot]])

    return body


def face(person: int, shot: int) -> Body:
    """Two captures, from ``shot`` on, of person ``person`` + the round."""

    async def body(device: Device, client: VerifierClient, subject: str, index: int) -> dict:
        faces = [capture(person + index, shot), capture(person + index, shot + 1)]
        return await signed_enrollment(device, client, subject, [], faces)

    return body


def test_one_finger_enrolled_at_once_under_two_ids_is_stored_once(two_kiosks, race_fingers) -> None:
    rounds = [((f"ann-{i}", finger(race_fingers, 0)), (f"ben-{i}", finger(race_fingers, 1))) for i in range(ROUNDS)]
    answers = race(*two_kiosks, rounds)
    assert answers == [[(201, ""), (409, "duplicate-identity")]] * ROUNDS, answers


def test_one_face_enrolled_at_once_under_two_ids_is_stored_once(two_kiosks) -> None:
    rounds = [((f"ann-{i}", face(100, 0)), (f"ben-{i}", face(100, 2))) for i in range(ROUNDS)]
    answers = race(*two_kiosks, rounds)
    assert answers == [[(201, ""), (409, "duplicate-identity")]] * ROUNDS, answers


def test_two_people_enrolled_at_once_under_one_id_are_not_both_stored(two_kiosks, race_fingers) -> None:
    """Without this, a second device could attach its own finger or face to a subject being enrolled meanwhile."""
    # Fingers 0-1 against 6-7, fingers 2-3 against faces, faces against faces: each round its own people.
    rounds = [((f"cat-{i}", finger(race_fingers, 0)), (f"cat-{i}", finger(race_fingers, 0, 6))) for i in range(2)]
    rounds += [((f"dan-{i}", finger(race_fingers, 0)), (f"dan-{i}", face(200, 0))) for i in range(2)]
    rounds += [((f"eve-{i}", face(300, 0)), (f"eve-{i}", face(400, 0))) for i in range(2)]
    answers = race(*two_kiosks, rounds)
    assert answers == [[(201, ""), (401, "verification-required")]] * 6, answers
