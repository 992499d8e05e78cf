"""A session token earned by a match-on-sensor assertion alone (``--sensor-assertions accept``: the device's word)
adds what stays on a sensor (another print), never a portable factor (finger templates, a face) that would
verify at every kiosk; but for a subject enrolled only on sensors, once, with the operator's grant
(``capture-verifier subject portable``). Real mTLS to a real verifier process; the device signs the assertions
an agent would send."""

from __future__ import annotations

import json

import pytest

from agent.devstack import verifier_cli
from agent.errors import SessionTokenRefusedError
from agent.verifier_api import VerifierAPI
from biometrics.fingerprint.iso19794_2 import encode
from protocol.messages import Decision
from protocol.sensor import ReaderIdentity, SensorAssertion, SensorEnrollmentRequest, print_hash
from tests.test_biometric_api import Device
from tests.test_sensor_factors import add_face, asserted

READER = ReaderIdentity("virtual_device", "usb0")
OTHER_READER = ReaderIdentity("virtual_device", "usb1")


@pytest.fixture
def device(provisioned) -> Device:
    return Device(*provisioned)


async def sensor_token(api: VerifierAPI, subject: str, reader: ReaderIdentity = READER) -> str:
    """The session token of an accepted assertion of ``subject``'s print on ``reader``."""
    decided = await asserted(api, SensorAssertion(subject, reader, print_hash(f"{subject}-print"), "match"))
    assert isinstance(decided, Decision) and decided.accepted and decided.token
    return decided.token


async def refused(call) -> SessionTokenRefusedError:
    with pytest.raises(SessionTokenRefusedError) as info:
        await call
    return info.value


def test_a_sensor_earned_token_adds_no_portable_factor(device, verifier, synthetic_templates) -> None:
    """Was: the token of the device's word added the thief's fingers or face to sam (enrolled only on the sensor)
    and a face beside alice's fingers, each then verifying at every kiosk."""
    t = synthetic_templates
    verifier.allow(device.identity.device_id, sensor="accept")

    async def steps(client):
        api = VerifierAPI(client)
        await api.signed(SensorEnrollmentRequest("sam", READER, print_hash("sam-print")), None, None)
        fingers = await refused(api.enroll("sam", [encode(x) for x in t[1][:2]],
                                           session_token=await sensor_token(api, "sam")))
        face = await refused(add_face(api, "sam", 4, await sensor_token(api, "sam")))
        # Another print on a sensor: what stays on the device is still added with it.
        more = await api.signed(SensorEnrollmentRequest("sam", OTHER_READER, print_hash("sam-print-2"),
                                                        session_token=await sensor_token(api, "sam")), None, None)
        # alice: fingers, and a print added with the token of a template verification (a full session).
        await api.enroll("alice", [encode(x) for x in t[0][:2] + t[2][:2]])
        first = await api.verify("alice", [encode(t[0][2])])  # the device's first use: a second finger asked
        verified = await api.verify("alice", [encode(t[2][2])], step_up=first.step_up)
        await api.signed(SensorEnrollmentRequest("alice", READER, print_hash("alice-print"),
                                                 session_token=verified.token), None, None)
        graft = await refused(add_face(api, "alice", 5, await sensor_token(api, "alice")))
        return fingers, face, more, graft

    fingers, face, more, graft = device.run(steps)
    for error in (fingers, face):
        assert error.status == 401 and "match-on-sensor assertion alone" in str(error.problem["detail"])
        assert "capture-verifier subject portable sam" in error.fix
    assert more["subject"] == "sam"
    assert graft.status == 401 and "verify alice with a fingerprint template or a face" in graft.fix
    subjects = {row["subject_id"]: row["enrolled"] for row in map(json.loads, verifier_cli(
        "subject", "list", "--pki", str(verifier.pki_dir)).stdout.splitlines())}
    assert subjects == {"sam": ["sensor"], "alice": ["finger", "sensor"]}, "nothing portable was added"
    refusals = [json.loads(line) for line in verifier.log_path.read_text().splitlines()
                if '"sensor-earned token for a portable factor"' in line]
    assert [(r["subject"], r["factor"]) for r in refusals] == [("sam", "finger"), ("sam", "face"), ("alice", "face")]


def test_the_operator_grants_a_sensor_only_subject_one_portable_enrollment(
    device, verifier, synthetic_templates
) -> None:
    """The README's remedy for a subject enrolled only on sensors (templates after a sensor's accept), kept behind
    the operator: one enrollment, then the subject verifies with what it added like anyone."""
    t = synthetic_templates
    verifier.allow(device.identity.device_id, sensor="accept")

    async def enrolled(client):
        await VerifierAPI(client).signed(SensorEnrollmentRequest("sam", READER, print_hash("sam-print")), None, None)

    device.run(enrolled)
    granted = verifier_cli("subject", "portable", "--pki", str(verifier.pki_dir), "sam")
    assert "one portable enrollment" in granted.stdout

    async def steps(client):
        api = VerifierAPI(client)
        added = await api.enroll("sam", [encode(x) for x in t[1][:2]], session_token=await sensor_token(api, "sam"))
        again = await refused(add_face(api, "sam", 4, await sensor_token(api, "sam")))  # the grant is spent
        return added, again

    added, again = device.run(steps)
    assert added.templates == 2
    assert "verify sam with a fingerprint template or a face" in again.fix
    not_sensor_only = verifier_cli("subject", "portable", "--pki", str(verifier.pki_dir), "sam", check=False)
    assert not_sensor_only.returncode != 0 and "sensors alone" in not_sensor_only.stderr
