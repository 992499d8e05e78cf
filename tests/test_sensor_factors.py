"""Factor rules with match-on-sensor assertions, over real mTLS to a real verifier process.

A sensor's match is the finger factor of ``capture-verifier subject require S
--factors finger,face``: finger first, the verifier asks for the face; face
first, the sensor may answer the finger step-up. What must never happen: a
device whose policy refuses assertions satisfying a factor, a step-up id used
from another device, a face standing for a finger or a sensor for a face.

No sensor is needed for the verifier's side: the device signs the assertions an
agent would send (the agent's sessions on libfprint's virtual_device are in
test_sensor_sessions.py). Faces are the synthetic embeddings of
test_verifier_faces.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from agent.devstack import provision_device, verifier_cli
from agent.errors import (
    NotAllowedError,
    SessionTokenRefusedError,
    StepUpRequiredError,
    StepUpUnknownError,
    SubjectLockedError,
    VerificationRequiredError,
)
from agent.verifier_api import VerifierAPI
from biometrics.fingerprint.iso19794_2 import encode as encode_finger
from protocol import endpoints
from protocol.face_template import ACR_FACE, ACR_FINGER
from protocol.messages import Decision, StepUp
from protocol.sensor import ACR_AFTER_SENSOR, ReaderIdentity, SensorAssertion, SensorEnrollmentRequest, print_hash
from tests.test_biometric_api import Device
from tests.test_verifier_faces import capture, face_verify, steps_for

READER = ReaderIdentity("virtual_device", "usb0")
PRINT = print_hash("dave-print")


@pytest.fixture
def device(provisioned) -> Device:
    return Device(*provisioned)


def assertion(result: str = "match", step_up: str | None = None, subject: str = "dave") -> SensorAssertion:
    return SensorAssertion(subject, READER, PRINT, result, step_up)


async def asserted(api: VerifierAPI, sent: SensorAssertion) -> Decision | StepUp:
    """The verifier's answer to an assertion: a decision, or the step-up it asks for."""
    try:
        return Decision.from_json(await api.signed(sent, None, None))
    except StepUpRequiredError as exc:
        return StepUp.from_problem(exc.problem)


async def add_face(api: VerifierAPI, subject: str, seed: int, token: str | None) -> None:
    challenge = await api.challenge("enroll", subject)
    await api.enroll(subject, [], faces=[capture(seed, 0), capture(seed, 1)], session_token=token,
                     challenge=challenge, liveness=steps_for(challenge))


def grant_portable(verifier, subject: str) -> None:
    """The operator lets a subject enrolled only on sensors add a face or templates once after a sensor's accept
    (a sensor-earned token adds no portable factor otherwise: test_sensor_portable)."""
    verifier_cli("subject", "portable", "--pki", str(verifier.pki_dir), subject)


async def sensor_subject_with_face(api: VerifierAPI, verifier, subject: str = "dave", seed: int = 4) -> None:
    """A subject enrolled on the sensor, then given a face with the token of a sensor verification (the operator's
    grant first)."""
    await api.signed(SensorEnrollmentRequest(subject, READER, PRINT), None, None)
    await asyncio.to_thread(grant_portable, verifier, subject)
    verified = await asserted(api, assertion(subject=subject))
    assert isinstance(verified, Decision) and verified.accepted
    await add_face(api, subject, seed, verified.token)


def require_both(verifier, subject: str = "dave") -> None:
    verifier_cli("subject", "require", "--pki", str(verifier.pki_dir), subject, "--factors", "finger,face")


def audit(verifier, event: str = "verification_attempt") -> list[dict]:
    lines = verifier.log_path.read_text().splitlines()
    return [r for r in (json.loads(line) for line in lines if line.startswith("{")) if r.get("event") == event]


def test_a_sensor_only_subject_gets_a_face_only_after_verifying(device, verifier) -> None:
    """Enrolled on a sensor is enrolled: a face (or a template) is added with the subject's session token only."""
    verifier.allow(device.identity.device_id, sensor="accept")

    async def steps(client):
        api = VerifierAPI(client)
        await api.signed(SensorEnrollmentRequest("dave", READER, PRINT), None, None)
        with pytest.raises(VerificationRequiredError) as no_token:
            await add_face(api, "dave", 4, None)
        # ... and the other way: a subject enrolled by face only gets a sensor print only after verifying.
        await add_face(api, "fay", 6, None)
        with pytest.raises(VerificationRequiredError) as no_token_for_print:
            await api.signed(SensorEnrollmentRequest("fay", READER, print_hash("fay-print")), None, None)
        return no_token.value, no_token_for_print.value

    face, sensor_print = device.run(steps)
    assert face.slug == sensor_print.slug == "verification-required"


def test_rejected_assertions_lock_the_device_out_and_a_locked_device_answers_no_step_up(device, verifier) -> None:
    """The sensor's no_match counts as a rejected verification; a lockout stops its step-up answers too."""
    verifier.allow(device.identity.device_id, sensor="accept")

    async def steps(client):
        api = VerifierAPI(client)
        await sensor_subject_with_face(api, verifier)
        await asyncio.to_thread(require_both, verifier)
        face_first = await face_verify(api, "dave", 4)
        rejected = [await asserted(api, assertion("no_match")) for _ in range(5)]
        with pytest.raises(SubjectLockedError) as locked:
            await asserted(api, assertion(step_up=face_first.step_up))
        return face_first, rejected, locked.value

    face_first, rejected, locked = device.run(steps)
    assert isinstance(face_first, StepUp) and face_first.acr_values == ACR_FINGER
    assert [r.decision for r in rejected] == ["reject"] * 5
    assert locked.slug == "subject-locked" and locked.retry_after_s > 0
    outcomes = [r["outcome"] for r in audit(verifier) if r.get("assurance") == "match-on-sensor"]
    assert outcomes[-6:] == ["reject"] * 5 + ["locked_out"]


def test_finger_on_the_sensor_then_the_face_the_rule_asks_for(device, verifier) -> None:
    """accept and step_up policies: the sensor's match is the finger; the face decides; neither stands for the other."""
    verifier.allow(device.identity.device_id, sensor="accept")

    async def steps(client):
        api = VerifierAPI(client)
        await sensor_subject_with_face(api, verifier)
        await asyncio.to_thread(require_both, verifier)
        out: dict = {"asked": await asserted(api, assertion())}
        # The sensor cannot answer the face's step-up; the step-up stays for the face.
        with pytest.raises(StepUpUnknownError):
            await asserted(api, assertion(step_up=out["asked"].step_up))
        out["face"] = await face_verify(api, "dave", 4, step_up=out["asked"].step_up)
        # Replaying the step-up id: it was used.
        with pytest.raises(StepUpUnknownError):
            await face_verify(api, "dave", 4, step_up=out["asked"].step_up)
        asked = await asserted(api, assertion())
        out["other_face"] = await face_verify(api, "dave", 9, step_up=asked.step_up)
        await asyncio.to_thread(verifier.allow, device.identity.device_id, sensor="step-up")
        out["asked_step_up_policy"] = await asserted(api, assertion())
        out["face_step_up_policy"] = await face_verify(api, "dave", 4, step_up=out["asked_step_up_policy"].step_up)
        out["no_match"] = await asserted(api, assertion("no_match"))
        return out

    out = device.run(steps)
    asked = out["asked"]
    assert isinstance(asked, StepUp) and asked.acr_values == ACR_FACE and asked.reasons == ["policy_requires_face"]
    assert isinstance(out["face"], Decision) and out["face"].accepted and out["face"].token
    assert isinstance(out["other_face"], Decision) and out["other_face"].decision == "reject"
    assert out["other_face"].token is None
    # Under step_up the face is the verifier-matched factor the policy wants: no template on top.
    stepped = out["asked_step_up_policy"]
    assert stepped.acr_values == ACR_FACE and stepped.reasons == ["policy_requires_face", "sensor_assertion"]
    assert out["face_step_up_policy"].accepted
    assert out["no_match"].decision == "reject" and out["no_match"].token is None

    sensor = [r for r in audit(verifier) if r.get("assurance") == "match-on-sensor"]
    asks = [r for r in sensor if r["outcome"] == "step_up"]
    assert [r["acr_values"] for r in asks] == [ACR_FACE] * 3
    assert any(r["outcome"] == "step_up_unknown" for r in sensor)
    faces = [r for r in audit(verifier) if r.get("modality") == "face" and "face" in r.get("step_up", "")]
    assert [r["outcome"] for r in faces] == ["accept", "reject", "accept"]


def test_face_first_then_the_finger_on_the_sensor(device, verifier, tmp_path, synthetic_templates) -> None:
    """A face's finger step-up answered by the sensor: once, by this device, never by a face, never under refuse."""
    device_id = device.identity.device_id
    verifier.allow(device_id, sensor="accept")
    other = Device(*asyncio.run(provision_device(verifier, tmp_path / "device2", "kiosk-2")))
    verifier.allow(other.identity.device_id, sensor="accept")
    t = synthetic_templates

    async def kiosk_2_enrolls_dave(client):  # its own print of dave, after dave's face verified there
        api = VerifierAPI(client)
        # Its first use first (two fingers of someone else): a face alone does not end a device's first use.
        await api.enroll("kim", [encode_finger(x) for x in t[0][:2] + t[1][:2]])
        first = await api.verify("kim", [encode_finger(t[0][2])])
        await api.verify("kim", [encode_finger(t[1][2])], step_up=first.step_up)
        token = (await face_verify(api, "dave", 4)).token
        await api.signed(SensorEnrollmentRequest("dave", READER, PRINT, session_token=token), None, None)

    async def first(client):
        await sensor_subject_with_face(VerifierAPI(client), verifier)

    async def steps(client):
        api = VerifierAPI(client)
        out: dict = {}
        face_first = await face_verify(api, "dave", 4)
        out["face_first"] = face_first
        # A face is not the finger asked for.
        with pytest.raises(StepUpUnknownError):
            await face_verify(api, "dave", 4, step_up=face_first.step_up)
        # Another device, allowed assertions and enrolled on its own sensor, cannot use this device's step-up.
        async with other_client() as client_2:
            with pytest.raises(StepUpUnknownError):
                await asserted(VerifierAPI(client_2), assertion(step_up=face_first.step_up))
        # A device whose policy refuses assertions: its sensor satisfies nothing.
        await asyncio.to_thread(verifier.allow, device_id, sensor="refuse")
        with pytest.raises(NotAllowedError) as refused:
            await asserted(api, assertion(step_up=face_first.step_up))
        out["refused"] = refused.value
        with pytest.raises(NotAllowedError):
            await asserted(api, assertion())
        await asyncio.to_thread(verifier.allow, device_id, sensor="accept")
        out["finger"] = await asserted(api, assertion(step_up=face_first.step_up))
        with pytest.raises(StepUpUnknownError):  # single use
            await asserted(api, assertion(step_up=face_first.step_up))
        # The token of the decision adds one enrollment, never two.
        await add_face(api, "dave", 4, out["finger"].token)
        with pytest.raises(SessionTokenRefusedError):
            await add_face(api, "dave", 4, out["finger"].token)
        # Under step_up too the face was the verifier's own match: the sensor's finger completes it.
        await asyncio.to_thread(verifier.allow, device_id, sensor="step-up")
        face_first = await face_verify(api, "dave", 4)
        out["finger_step_up_policy"] = await asserted(api, assertion(step_up=face_first.step_up))
        face_first = await face_verify(api, "dave", 4)
        out["no_match"] = await asserted(api, assertion("no_match", step_up=face_first.step_up))
        return out

    def other_client():
        from agent.client import VerifierClient

        return VerifierClient(other.config, other.identity)

    device.run(first)
    other.run(kiosk_2_enrolls_dave)
    require_both(verifier)
    out = device.run(steps)
    assert isinstance(out["face_first"], StepUp) and out["face_first"].acr_values == ACR_FINGER
    assert "--sensor-assertions" in out["refused"].fix
    finger = out["finger"]
    assert isinstance(finger, Decision) and finger.accepted and finger.token
    assert finger.modality == "finger"  # a face session finished by the sensor's finger: the finger decided
    assert out["finger_step_up_policy"].accepted
    assert out["no_match"].decision == "reject" and out["no_match"].token is None

    sensor = [r for r in audit(verifier) if r.get("assurance") == "match-on-sensor" and r["device_id"] == "kiosk-1"]
    answered = [(r["outcome"], r.get("step_up")) for r in sensor if r.get("step_up")]
    # The first also asked for kiosk-1's first use (its sensor's direct accepts did not end it).
    assert answered == [("accept", "policy_requires_finger,first_use_of_device"), ("accept", "policy_requires_finger"),
                        ("reject", "policy_requires_finger")]
    assert [r["step_up_answered"] for r in sensor if r["outcome"] == "refused"] == [True, False]
    assert [r["outcome"] for r in audit(verifier) if r["device_id"] == "kiosk-2"][-1] == "step_up_unknown"


def test_a_template_after_the_sensors_step_up_still_needs_the_face_the_rule_asks_for(
    device, verifier, synthetic_templates
) -> None:
    """Sensor, then a template (two fingers): a rule set meanwhile that needs the face is still asked."""
    t = synthetic_templates

    async def steps(client):
        api = VerifierAPI(client)
        await api.enroll("erin", [encode_finger(x) for x in t[0][:2] + t[1][:2]])
        first = await api.verify("erin", [encode_finger(t[0][2])])  # first use of the device: a second finger
        token = (await api.verify("erin", [encode_finger(t[1][2])], step_up=first.step_up)).token
        await api.signed(SensorEnrollmentRequest("erin", READER, PRINT, session_token=token), None, None)
        sensor = await asserted(api, assertion(subject="erin"))  # default policy step_up: a template decides
        token = (await api.verify("erin", [encode_finger(t[0][1])], step_up=sensor.step_up)).token
        challenge = await api.challenge("enroll", "erin")
        await api.enroll("erin", [], faces=[capture(5, 0), capture(5, 1)], session_token=token,
                         challenge=challenge, liveness=steps_for(challenge))
        sensor = await asserted(api, assertion(subject="erin"))  # default policy step_up: a template
        await asyncio.to_thread(require_both, verifier, "erin")
        template = await api.verify("erin", [encode_finger(t[0][1])], step_up=sensor.step_up)
        face = await face_verify(api, "erin", 5, step_up=template.step_up)
        return sensor, template, face

    sensor, template, face = device.run(steps)
    assert isinstance(sensor, StepUp) and sensor.acr_values == ACR_AFTER_SENSOR
    assert isinstance(template, StepUp) and template.acr_values == ACR_FACE
    assert isinstance(face, Decision) and face.accepted and face.token


def test_a_kiosk_with_a_camera_and_only_a_sensor_completes_both_factors(
    provisioned, verifier, camera_sim, att_faces, fprint_socket_dir, tmp_path
) -> None:
    """The daemon's face session (agent.face_sessions.face_session) on a camera and a match-on-sensor reader.

    The face is added to a subject enrolled only on the sensor after the sensor verified them, and a face
    verification whose rule needs a finger too is completed on the sensor, in the same session.
    """
    from agent.client import VerifierClient
    from agent.config import DeviceSection
    from agent.devices.kinds import CameraDevice, FprintDevice
    from agent.devices.prints import SensorPrintStore
    from agent.devices.supervisor import DeviceSupervisor
    from agent.face_sessions import face_session
    from agent.sensor_sessions import SensorSession
    from simulators.fprint import VirtualDeviceFeeder
    from tests.test_face_sessions import TRACKER, FacePerson
    from tests.test_sensor_sessions import KEK, FingerAtSensor

    config, identity = provisioned
    socket = fprint_socket_dir / "device.sock"
    verifier.allow(identity.device_id, sensor="accept")
    sections = [("camera", DeviceSection(kind="camera", source=camera_sim.url)),
                ("usb0", DeviceSection(kind="fprint", selector="virtual_device", check_interval_s=0.2))]

    def make(section: DeviceSection, name: str):
        if section.kind == "fprint":
            return FprintDevice(section, name, env={"FP_VIRTUAL_DEVICE": str(socket)})
        return CameraDevice(section, name)

    async def scenario() -> dict:
        supervisor = DeviceSupervisor(sections, lambda kind, data: None, factory=make)
        await supervisor.open_all()
        prints = SensorPrintStore(tmp_path / "prints", KEK)
        out: dict = {}
        try:
            async with VerifierClient(config, identity) as client, asyncio.timeout(120):
                fingers = FingerAtSensor(VirtualDeviceFeeder(socket), ["lee"] * 10)
                await SensorSession(supervisor.pick("match-on-sensor"), client, prints, emit=fingers).enroll("lee")
                face = FacePerson(camera_sim, att_faces)

                def both(event: dict) -> None:
                    fingers(event)
                    face(event)

                def session():
                    made = face_session(supervisor, client, both, prints)
                    made.tracker_options = TRACKER
                    return made

                await asyncio.to_thread(grant_portable, verifier, "lee")  # lee is enrolled only on the sensor
                out["added"] = await session().enroll("lee", verify_first=True)
                await asyncio.to_thread(require_both, verifier, "lee")
                out["verified"] = await session().verify("lee")
                out["events"] = fingers.events
        finally:
            await supervisor.close()
        return out

    out = asyncio.run(scenario())
    assert out["added"]["templates"] == 3 and out["added"]["modality"] == "face"
    verified = out["verified"]
    assert verified["decision"] == "accept" and verified["has_token"], verified
    assert verified["modality"] == "finger", verified  # the face session's decision was the sensor's finger's
    assert [e["acr_values"] for e in out["events"] if e["type"] == "step_up"] == ["finger"]
    sensor = [r for r in audit(verifier) if r.get("assurance") == "match-on-sensor"]
    decided = [(r["outcome"], r.get("step_up", "")) for r in sensor]
    # The face asked the finger for the rule and for the device's first use (the sensor's direct accept did not
    # end it); the sensor's finger answered both, after the face the verifier matched itself.
    assert decided == [("accept", ""), ("accept", "policy_requires_finger,first_use_of_device")]


def test_a_malformed_sensor_message_is_a_400_and_is_audited(device, verifier) -> None:
    """A signed body that is no assertion (a step-up id of the wrong type) is refused, and the refusal is audited."""
    verifier.allow(device.identity.device_id, sensor="accept")

    async def steps(client):
        good = assertion().body()
        body = await device.signed(client, endpoints.SENSOR_VERIFICATIONS, **{**good, "step_up": 12})
        return await client.request("POST", endpoints.SENSOR_VERIFICATIONS, json=body)

    response = device.run(steps)
    assert response.status_code == 400 and response.json()["type"].endswith("/bad-json"), response.json()
    refused = audit(verifier, "biometric_request_refused")
    assert (endpoints.SENSOR_VERIFICATIONS, "malformed sensor message") in {(r["path"], r["reason"]) for r in refused}


def test_a_sensor_accept_does_not_stand_for_the_devices_first_use(device, verifier, synthetic_templates) -> None:
    """A sensor's direct accept decides for its subject, but is not the device's first use done.

    The first use asks for a second finger the verifier matches itself. Were the
    sensor's own word to count, a device could enroll a throwaway print, assert one
    "match" and skip that check for everyone after (the verifier did so for a while).
    """
    t = synthetic_templates
    verifier.allow(device.identity.device_id, sensor="accept")

    async def steps(client):
        api = VerifierAPI(client)
        await api.enroll("alice", [encode_finger(x) for x in t[0][:2]])
        await api.signed(SensorEnrollmentRequest("dave", READER, PRINT), None, None)
        sensed = await asserted(api, assertion())
        template = await api.verify("alice", [encode_finger(t[0][2])])
        return sensed, template

    sensed, template = device.run(steps)
    assert isinstance(sensed, Decision) and sensed.accepted and sensed.modality == "finger"
    assert isinstance(template, StepUp) and template.reasons == ["first_use_of_device"], template
    decided = [(r["subject"], r["outcome"]) for r in audit(verifier) if r["outcome"] in ("accept", "step_up")]
    assert decided == [("dave", "accept"), ("alice", "step_up")]
