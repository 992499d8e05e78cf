"""Match-on-sensor readers end to end: libfprint's virtual_device under the agent, over real mTLS to the verifier.

The sensor enrolls and matches; the agent keeps the sealed print and sends the
verifier a device-signed assertion; the verifier's per-device policy (accept,
step-up, refuse) decides, and audits. A step-up is satisfied by a template from
libfprint's virtual_image reader, which the verifier matches itself.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from agent.client import VerifierClient
from agent.config import DeviceSection
from agent.devices.errors import DeviceUnplugged
from agent.devices.prints import SensorPrintStore
from agent.errors import NotAllowedError, VerificationRequiredError
from agent.sensor_sessions import SensorSession
from agent.sessions import SessionError
from tests.conftest import cancel_session_task, run_bounded, storage_reader
from tests.test_sensor_factors import grant_portable

KEK = "sensor-test-kek-" + "k" * 32


def _sensor_device(socket: Path):
    from agent.devices.kinds import FprintDevice

    section = DeviceSection(kind="fprint", selector="virtual_device", check_interval_s=0.1)
    return FprintDevice(section, "usb0", env={"FP_VIRTUAL_DEVICE": str(socket)})


class FingerAtSensor:
    """Scans the named finger each time the session asks for one (libfprint queues what comes early)."""

    def __init__(self, feeder, fingers: list[str], retries: int = 0) -> None:
        self.feeder, self.fingers, self.retries = feeder, list(fingers), retries
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)
        if event["type"] == "prompt" and event["code"] == "place_finger" and self.fingers:
            threading.Thread(target=self._scan, args=(self.fingers.pop(0),), daemon=True).start()

    def _scan(self, finger: str) -> None:
        time.sleep(0.1)
        from simulators.fprint import RETRY_TOO_SHORT

        if self.retries:
            self.retries -= 1
            self.feeder.retry(RETRY_TOO_SHORT)
            self.fingers.insert(0, finger)  # the session prompts again; the same finger comes back
            return
        self.feeder.scan(finger)

    def prompts(self) -> list[str]:
        return [e["code"] for e in self.events if e["type"] == "prompt"]


def _audit(verifier, event: str) -> list[dict]:
    out = []
    for line in verifier.log_path.read_text().splitlines():
        with_brace = line[line.find("{"):] if "{" in line else ""
        try:
            record = json.loads(with_brace)
        except ValueError:
            continue
        if record.get("event") == event:
            out.append(record)
    return out


def test_sensor_enroll_and_verify_under_each_policy(provisioned, verifier, fprint_socket_dir, tmp_path) -> None:
    from simulators.fprint import VirtualDeviceFeeder

    config, identity = provisioned
    socket = fprint_socket_dir / "device.sock"
    store = SensorPrintStore(tmp_path / "prints", KEK)

    async def scenario() -> dict:
        device = _sensor_device(socket)
        await device.open()
        feeder = VirtualDeviceFeeder(socket)
        out: dict = {}
        try:
            async with VerifierClient(config, identity) as client:

                def session(fingers: list[str], retries: int = 0) -> tuple[SensorSession, FingerAtSensor]:
                    person = FingerAtSensor(feeder, fingers, retries)
                    return SensorSession(device, client, store, emit=person), person

                stages = device.enroll_stages
                enrolling, person = session(["dave"] * stages, retries=1)
                out["enroll"] = await enrolling.enroll("dave")
                out["enroll_prompts"] = person.prompts()
                # Enrolling dave again without verifying first is refused; the print the verifier knows stays.
                with pytest.raises(VerificationRequiredError):
                    await session(["dave"] * stages)[0].enroll("dave")
                # Default policy: step-up; no image reader here, so a typed error naming the fix.
                verifying, person = session(["dave"])
                with pytest.raises(SessionError) as caught:
                    await verifying.verify("dave")
                out["step_up_error"] = caught.value
                out["step_up_events"] = [e for e in person.events if e["type"] == "step_up"]

                await asyncio.to_thread(verifier.allow, identity.device_id, sensor="accept")
                out["accept"] = await session(["dave"])[0].verify("dave")
                out["impostor"] = await session(["mallory"])[0].verify("dave")

                await asyncio.to_thread(verifier.allow, identity.device_id, sensor="refuse")
                with pytest.raises(NotAllowedError) as refused:
                    await session(["dave"])[0].verify("dave")
                out["refused"] = refused.value
        finally:
            device.stop()
        return out

    out = asyncio.run(scenario())
    assert out["enroll"]["subject"] == "dave" and out["enroll"]["assurance"] == "match-on-sensor"
    assert out["enroll"]["reader"] == {"driver": "virtual_device", "device": "usb0"}
    assert "too_fast" in out["enroll_prompts"], "the sensor's retry code became a prompt"
    (sealed,) = [p for p in (tmp_path / "prints").iterdir() if p.suffix == ".print"]
    assert b"dave" not in sealed.read_bytes()
    assert out["step_up_events"] and out["step_up_events"][0]["reasons"] == ["sensor_assertion"]
    assert "--sensor-assertions accept" in out["step_up_error"].fix
    assert out["accept"]["decision"] == "accept" and out["accept"]["has_token"]
    assert out["impostor"]["decision"] == "reject"
    assert "--sensor-assertions" in out["refused"].fix and "sensor-assertion-refused" in str(out["refused"].problem)

    attempts = [r for r in _audit(verifier, "verification_attempt") if r.get("assurance") == "match-on-sensor"]
    assert [(r["outcome"], r.get("policy")) for r in attempts] == [
        ("step_up", "step_up"), ("accept", "accept"), ("reject", "accept"), ("refused", "refuse"),
    ]
    assert all(r["reader"] == "virtual_device/usb0" and r["subject"] == "dave" for r in attempts)
    assert _audit(verifier, "sensor_enrollment")[0]["subject"] == "dave"
    # Never a print, only its hash's name (and the name of what a step-up asks for: a fingerprint template).
    assert "print" not in json.dumps(attempts).replace("print_hash", "").replace("fingerprint_template", "")


def test_step_up_after_a_sensor_match_is_satisfied_by_an_image_readers_template(
    provisioned, verifier, fprint_socket_dir, tmp_path
) -> None:
    """Policy step-up: the sensor matched erin, the verifier asks a template, the virtual_image reader gives it."""
    from biometrics.fingerprint import extract
    from biometrics.fingerprint.iso19794_2 import encode
    from drivers.fprint.reader import FprintReader
    from simulators.fingers import FingerGenerator
    from simulators.fprint import VirtualDeviceFeeder, VirtualImageFeeder

    config, identity = provisioned
    store = SensorPrintStore(tmp_path / "prints", KEK)
    fingers = FingerGenerator(11)
    image_socket = fprint_socket_dir / "image.sock"
    image_reader = FprintReader("virtual_image", env={"FP_VIRTUAL_IMAGE": str(image_socket)})
    image_reader.open()
    image_feeder = VirtualImageFeeder(image_socket)
    verifier.allow(identity.device_id, sensor="accept")

    def place_on_image_reader(event: dict) -> None:
        if event["type"] == "prompt" and event["code"] == "place_finger":
            def place() -> None:
                deadline = time.monotonic() + 10
                while not image_reader.finger_needed() and time.monotonic() < deadline:
                    time.sleep(0.02)
                image_feeder.image(fingers.image(0, 3, (256, 288)))

            threading.Thread(target=place, daemon=True).start()

    async def scenario() -> dict:
        from agent.sessions import CaptureSession

        device = _sensor_device(fprint_socket_dir / "device.sock")
        await device.open()
        feeder = VirtualDeviceFeeder(fprint_socket_dir / "device.sock")
        try:
            async with VerifierClient(config, identity) as client:
                person = FingerAtSensor(feeder, ["erin"] * device.enroll_stages + ["erin", "erin"])

                def image_session() -> CaptureSession:
                    def emit(event: dict) -> None:
                        person.events.append(event)
                        place_on_image_reader(event)

                    return CaptureSession(image_reader, client, emit=emit, resolution_dpi=image_reader.info.dpi)

                sensor = SensorSession(device, client, store, emit=person, image_session=image_session)
                await sensor.enroll("erin")
                # policy accept: a token to add templates with, for a subject enrolled only on the sensor once the
                # operator granted it (a sensor's word alone adds no portable factor: test_sensor_portable)
                await asyncio.to_thread(grant_portable, verifier, "erin")
                verified = await sensor.verify("erin")
                token = sensor.session_token.current()
                records = [encode(extract(fingers.image(0, i, (256, 288)), 500)) for i in range(3)]
                await sensor.api.enroll("erin", records, session_token=token)
                await asyncio.to_thread(verifier.allow, identity.device_id, sensor="step-up")
                stepped = await sensor.verify("erin")
                return {"verified": verified, "stepped": stepped, "events": person.events}
        finally:
            device.stop()

    try:
        out = asyncio.run(scenario())
    finally:
        image_feeder.close()
        image_reader.close()
    assert out["verified"]["decision"] == "accept"
    assert [e["reasons"] for e in out["events"] if e["type"] == "step_up"] == [["sensor_assertion"]]
    assert out["stepped"]["decision"] == "accept" and out["stepped"]["score"] < 1.0, "the verifier matched a template"
    decided = [r for r in _audit(verifier, "verification_attempt") if r.get("step_up") == "sensor_assertion"]
    assert decided and decided[-1]["outcome"] == "accept" and decided[-1]["reason"] == "score above threshold"


def test_unplug_during_a_sensor_verify_then_reopened(provisioned, verifier, fprint_socket_dir, tmp_path) -> None:
    """virtual_device under the supervisor: the session gets DeviceUnplugged, audits record it, the reader returns."""
    from agent.devices.capabilities import MATCH_ON_SENSOR
    from agent.devices.kinds import FprintDevice
    from agent.devices.supervisor import DeviceSupervisor
    from simulators.fprint import VirtualDeviceFeeder

    config, identity = provisioned
    socket = fprint_socket_dir / "device.sock"
    recorded: list[tuple[str, dict]] = []
    store = SensorPrintStore(tmp_path / "prints", KEK)
    section = DeviceSection(kind="fprint", selector="virtual_device", check_interval_s=0.1)

    async def until(check, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            assert time.monotonic() < deadline, f"timed out; events: {recorded}"
            await asyncio.sleep(0.05)

    async def scenario() -> dict:
        supervisor = DeviceSupervisor(
            [("usb0", section)], lambda k, d: recorded.append((k, d)),
            factory=lambda s, n: FprintDevice(s, n, env={"FP_VIRTUAL_DEVICE": str(socket)}),
        )
        await supervisor.open_all()
        supervisor.start()
        feeder = VirtualDeviceFeeder(socket)
        out: dict = {}
        try:
            device = supervisor.pick(MATCH_ON_SENSOR)
            async with VerifierClient(config, identity) as client:
                person = FingerAtSensor(feeder, ["fred"] * device.enroll_stages)
                await SensorSession(device, client, store, emit=person).enroll("fred")
                waiting = SensorSession(device, client, store)  # no finger comes: the reader waits
                task = asyncio.create_task(waiting.verify("fred"))
                await asyncio.sleep(0.5)
                feeder.unplug()
                with pytest.raises(DeviceUnplugged) as caught:
                    await asyncio.wait_for(task, 15)
                out["error"] = caught.value
                await until(lambda: [k for k, _ in recorded].count("device_plugged") == 2)
                await asyncio.to_thread(verifier.allow, identity.device_id, sensor="accept")
                out["after"] = await SensorSession(device, client, store, emit=FingerAtSensor(feeder, ["fred"])).verify(
                    "fred"
                )
        finally:
            await supervisor.close()
        return out

    out = asyncio.run(scenario())
    assert "plug it back in" in out["error"].fix
    assert [k for k, _ in recorded] == ["device_plugged", "device_unplugged", "device_plugged"]
    assert recorded[1][1]["device"] == "usb0" and recorded[1][1]["selector"] == "virtual_device"
    assert out["after"]["decision"] == "accept"



def test_forged_or_stale_sensor_requests_are_refused_and_the_cli_sets_the_policy(provisioned, verifier) -> None:
    """No sensor needed: what a compromised or confused agent could send, and the operator's commands."""
    from agent.devstack import verifier_cli
    from agent.errors import BadSignatureError, StepUpRequiredError, UnknownSubjectError
    from agent.verifier_api import VerifierAPI
    from protocol.sensor import ReaderIdentity, SensorAssertion, SensorEnrollmentRequest, print_hash
    from protocol.signing import sign_request

    config, identity = provisioned
    reader = ReaderIdentity("virtual_device", "usb0")
    verifier.allow(identity.device_id, sensor="accept")

    async def scenario() -> dict:
        out: dict = {}
        async with VerifierClient(config, identity) as client:
            api = VerifierAPI(client)
            await api.signed(SensorEnrollmentRequest("gina", reader, print_hash("p1")), None, None)
            for name, assertion in {
                "other_print": SensorAssertion("gina", reader, print_hash("p2"), "match"),
                "other_reader": SensorAssertion("gina", ReaderIdentity("synaptics", "usb0"), print_hash("p1"), "match"),
                "not_enrolled": SensorAssertion("hank", reader, print_hash("p1"), "match"),
            }.items():
                with pytest.raises(UnknownSubjectError) as caught:
                    await api.signed(assertion, None, None)
                out[name] = caught.value
            # Gina is enrolled now: another print only after she verifies (a session token).
            with pytest.raises(VerificationRequiredError):
                await api.signed(SensorEnrollmentRequest("gina", reader, print_hash("p3")), None, None)
            # A "no_match" signed, then turned into "match" on the way: the signature no longer holds.
            challenge = await api._challenge(SensorAssertion("gina", reader, print_hash("p1"), "no_match").challenge())
            assertion = SensorAssertion("gina", reader, print_hash("p1"), "no_match")
            body = sign_request(identity.private_key(), "POST", assertion.path,
                                {"nonce": challenge.nonce, **assertion.body()})
            with pytest.raises(BadSignatureError):
                await client.call("POST", assertion.path, json={**body, "result": "match"})
            out["genuine"] = await api.signed(SensorAssertion("gina", reader, print_hash("p1"), "match"), None, None)
            # Policy accept, but a subject marked high-risk still needs a template the verifier matches.
            await asyncio.to_thread(verifier.mark_high_risk, "gina")
            with pytest.raises(StepUpRequiredError) as stepped:
                await api.signed(SensorAssertion("gina", reader, print_hash("p1"), "match"), None, None)
            out["high_risk"] = stepped.value.problem
        return out

    out = asyncio.run(scenario())
    assert all("not enrolled with this print" in str(out[k]) for k in ("other_print", "other_reader", "not_enrolled"))
    assert out["genuine"]["decision"] == "accept"
    assert out["high_risk"]["reasons"] == ["high_risk_subject"]
    assert out["high_risk"]["acr_values"] == "fingerprint_template"
    listed = [json.loads(line) for line in verifier_cli("device", "list", "--pki", str(verifier.pki_dir)).stdout
              .splitlines()]
    assert [d["sensor_assertions"] for d in listed if d["device_id"] == identity.device_id] == ["accept"]
    bad = verifier_cli("device", "allow", "--pki", str(verifier.pki_dir), identity.device_id,
                       "--sensor-assertions", "maybe", check=False)
    assert bad.returncode != 0 and "accept" in bad.stderr


def test_local_api_sessions_on_a_sensor_chosen_by_capability(provisioned, verifier, fprint_socket_dir, tmp_path):
    """The daemon's session factory behind the local API: enroll, verify, identify on virtual_device_storage."""
    import httpx

    from agent.daemon import _session
    from agent.devices.kinds import FprintDevice
    from agent.devices.supervisor import DeviceSupervisor
    from agent.localapi import LocalAPI
    from simulators.fprint import VirtualDeviceFeeder

    config, identity = provisioned
    socket = fprint_socket_dir / "storage.sock"
    api_socket = tmp_path / "api.sock"
    recorded: list[tuple[str, dict]] = []
    section = DeviceSection(kind="fprint", selector="virtual_device_storage", check_interval_s=0.2)
    store = SensorPrintStore(tmp_path / "prints", KEK)
    verifier.allow(identity.device_id, sensor="accept")

    async def scenario() -> dict:
        supervisor = DeviceSupervisor(
            [("usb0", section)], lambda k, d: recorded.append((k, d)),
            factory=lambda s, n: FprintDevice(s, n, env={"FP_VIRTUAL_DEVICE_STORAGE": str(socket)}),
        )
        await supervisor.open_all()
        feeder = VirtualDeviceFeeder(socket)
        out: dict = {}
        async with VerifierClient(config, identity) as client:
            api = LocalAPI(api_socket, lambda emit, reader="": _session(supervisor, client, store, emit, reader),
                           record=lambda k, d: recorded.append((k, d)))
            await api.start()
            try:
                transport = httpx.AsyncHTTPTransport(uds=str(api_socket))
                async with httpx.AsyncClient(transport=transport, base_url="http://agent", timeout=60) as http:

                    async def run(request: dict, finger: str) -> list[dict]:
                        created = await http.post("/sessions", json=request)
                        assert created.status_code == 201, created.text
                        events = []
                        async with http.stream("GET", created.json()["events"]) as stream:
                            async for line in stream.aiter_lines():
                                if not line.startswith("data: "):
                                    continue
                                event = json.loads(line[6:])
                                events.append(event)
                                if event.get("type") == "prompt" and event.get("code") == "place_finger":
                                    await asyncio.to_thread(feeder.scan, finger)
                        return events

                    out["enroll"] = await run({"operation": "enroll", "subject": "ivy", "reader": "match-on-sensor"},
                                              "ivy")
                    out["verify"] = await run({"operation": "verify", "subject": "ivy"}, "ivy")
                    out["identify"] = await run({"operation": "identify", "reader": "usb0"}, "ivy")
                    out["no_image"] = await http.post(
                        "/sessions", json={"operation": "verify", "subject": "ivy", "reader": "fingerprint-image"}
                    )
            finally:
                await api.stop()
                await supervisor.close()
        return out

    out = asyncio.run(scenario())
    results = {name: out[name][-1] for name in ("enroll", "verify", "identify")}
    assert results["enroll"]["type"] == "result" and results["enroll"]["assurance"] == "match-on-sensor"
    assert any(e["type"] == "progress" for e in out["enroll"])
    assert results["verify"]["decision"] == "accept"
    assert results["identify"]["candidates"] == [{"subject": "ivy", "score": 1.0}]
    assert out["no_image"].status_code == 503 and "fingerprint-image" in out["no_image"].json()["error"]
    finished = [d for k, d in recorded if k == "session_finished"]
    assert [(d["operation"], d["outcome"]) for d in finished] == [
        ("enroll", "enrolled"), ("verify", "accept"), ("identify", "identified"),
    ]


def test_a_sensor_session_and_the_face_a_factor_rule_asks_for(provisioned, verifier, fprint_socket_dir, tmp_path):
    """virtual_device under the agent's sensor session, a rule needing finger and face, both orders.

    The face is a synthetic embedding sent by the step-up hook the daemon fills with the camera's face session
    (that session itself runs on the camera simulator in test_face_sessions.py).
    """
    from agent.devstack import verifier_cli
    from agent.verifier_api import VerifierAPI
    from protocol.messages import StepUp
    from simulators.fprint import VirtualDeviceFeeder
    from tests.test_verifier_faces import capture, face_verify, steps_for

    config, identity = provisioned
    store = SensorPrintStore(tmp_path / "prints", KEK)
    verifier.allow(identity.device_id, sensor="accept")

    async def scenario() -> dict:
        device = _sensor_device(fprint_socket_dir / "device.sock")
        await device.open()
        feeder = VirtualDeviceFeeder(fprint_socket_dir / "device.sock")
        out: dict = {}
        try:
            async with VerifierClient(config, identity) as client:
                api = VerifierAPI(client)
                person = FingerAtSensor(feeder, ["kim"] * device.enroll_stages + ["kim"] * 4)
                faces_sent: list[str] = []

                async def face_step_up(subject: str, step_id: str):
                    faces_sent.append(step_id)
                    return await face_verify(api, subject, 7, step_up=step_id)

                sensor = SensorSession(device, client, store, emit=person, face_step_up=face_step_up)
                await sensor.enroll("kim")
                await asyncio.to_thread(grant_portable, verifier, "kim")  # the operator's grant: see erin's
                await sensor.verify("kim")  # no rule yet: the sensor's match decides; its token adds the face
                challenge = await api.challenge("enroll", "kim")
                await api.enroll("kim", [], faces=[capture(7, 0), capture(7, 1)],
                                 session_token=sensor.session_token.current(), challenge=challenge,
                                 liveness=steps_for(challenge))
                await asyncio.to_thread(verifier_cli, "subject", "require", "--pki", str(verifier.pki_dir), "kim",
                                        "--factors", "finger,face")
                out["finger_then_face"] = await sensor.verify("kim")
                out["faces_sent"] = list(faces_sent)
                face_first = await face_verify(api, "kim", 7)
                assert isinstance(face_first, StepUp), face_first
                out["face_then_finger"] = await sensor.verify_step_up("kim", face_first.step_up)
                no_camera = SensorSession(device, client, store, emit=person)
                with pytest.raises(SessionError) as caught:
                    await no_camera.verify("kim")
                out["no_camera"] = caught.value
                out["events"] = person.events
        finally:
            device.stop()
        return out

    out = asyncio.run(scenario())
    decided = out["finger_then_face"]
    assert decided["decision"] == "accept" and decided["has_token"] and decided["score"] < 1.0, "the face decided"
    assert len(out["faces_sent"]) == 1
    assert [e["acr_values"] for e in out["events"] if e["type"] == "step_up"] == ["face", "face"]
    assert out["face_then_finger"].accepted and out["face_then_finger"].token
    assert "camera" in out["no_camera"].fix
    answered = [r for r in _audit(verifier, "verification_attempt") if r.get("step_up") == "policy_requires_finger"]
    assert [r["outcome"] for r in answered] == ["accept"] and answered[0]["assurance"] == "match-on-sensor"


def test_nobody_at_a_match_on_sensor_reader_is_the_sessions_no_finger_error(
    provisioned, verifier, fprint_socket_dir, tmp_path
) -> None:
    """The driver's CaptureTimeout reached the person as is: "no finger on the sensor within 1 s (fix: place a
    finger on the sensor)", a fix that no longer works once the session has ended."""
    from agent.sessions import NoFingerError

    config, identity = provisioned
    socket = fprint_socket_dir / "device.sock"

    async def scenario() -> NoFingerError:
        device = _sensor_device(socket)
        await device.open()
        try:
            async with VerifierClient(config, identity) as client:
                session = SensorSession(device, client, SensorPrintStore(tmp_path / "prints", KEK),
                                        enroll_timeout_s=1.0)
                with pytest.raises(NoFingerError) as nobody:
                    await session.enroll("nina")  # nobody scans a finger
                return nobody.value
        finally:
            await device.close()

    error = asyncio.run(scenario())
    assert error.message == "no finger was placed on the sensor within 1 s, so the session ended"
    assert "hold it there until asked to lift it" in error.fix


@pytest.mark.parametrize("operation", ["enroll", "verify", "identify"])
def test_a_sensor_session_whose_task_is_cancelled_stops_its_sensor_wait_without_being_told_twice(
    operation: str, provisioned, verifier, fprint_socket_dir, tmp_path
) -> None:
    """As finger sessions' (47c5af1): only ``cancel()`` stopped the sensor's enroll or verify, so a session whose
    task alone was cancelled (a caller's timeout, Ctrl-C) waited for its worker to the timeout (an hour here)
    before the cancellation reached its caller. Identify shares verify's wait (`_on_sensor`); virtual_device_storage,
    since virtual_device has no identify (its error ended the worker at once, the wait never met)."""
    from agent.devices.kinds import FprintDevice
    from simulators.fprint import VirtualDeviceFeeder

    config, identity = provisioned
    socket = fprint_socket_dir / "storage.sock"
    section = DeviceSection(kind="fprint", selector="virtual_device_storage", check_interval_s=0.1)
    store = SensorPrintStore(tmp_path / "prints", KEK)
    outcome: list[object] = []

    async def go() -> None:
        device = FprintDevice(section, "usb0", env={"FP_VIRTUAL_DEVICE_STORAGE": str(socket)})
        await device.open()
        try:
            async with VerifierClient(config, identity) as client:
                if operation != "enroll":  # a print to verify against, enrolled by a finger that comes
                    person = FingerAtSensor(VirtualDeviceFeeder(socket), ["vic"] * device.enroll_stages)
                    await SensorSession(device, client, store, emit=person).enroll("vic")
                asked = asyncio.Event()

                def emit(event: dict) -> None:  # called on the loop (SensorSession._prompt)
                    if event["type"] == "prompt" and event["code"] == "place_finger":
                        asked.set()

                session = SensorSession(device, client, store, emit=emit, finger_timeout_s=3600,
                                        enroll_timeout_s=3600)
                task = asyncio.create_task(getattr(session, operation)(["vic"] if operation == "identify" else "vic"))
                await asked.wait()  # nobody scans a finger: the worker is about to wait on the sensor
                outcome.extend(await cancel_session_task(session, task))
        finally:
            await device.close()

    run_bounded(go, hang=f"the cancelled {operation} waited for its sensor worker to reach its timeout")
    assert outcome == ["cancelled", True]


def test_one_subjects_unreadable_print_is_left_out_of_an_identification_and_named(
    provisioned, verifier, fprint_socket_dir, tmp_path, capsys
) -> None:
    """One print libfprint cannot read (here of a print type it does not know) failed every identification on the
    reader with an UnreadablePrint naming nobody: nobody was identified, and the installer could not tell whose
    print to enroll again. It is left out now, before the sensor lights up: the others are still identified, the
    result and the log name the subject and the fix, never the print. Only when no print is usable does the
    session fail, naming each subject (one with no print kept too), without asking for a finger. `capture-agent
    identify` shows the warning."""
    from structlog.testing import capture_logs

    from agent.commands.sessions import _show
    from tests.test_fprint import retyped

    config, identity = provisioned
    store = SensorPrintStore(tmp_path / "prints", KEK)
    verifier.allow(identity.device_id, sensor="accept")

    async def scenario() -> dict:
        out: dict = {}
        async with storage_reader(fprint_socket_dir) as (device, feeder), VerifierClient(config, identity) as client:
            for subject in ("uma", "val"):
                person = FingerAtSensor(feeder, [subject] * device.enroll_stages)
                await SensorSession(device, client, store, emit=person).enroll(subject)
            damaged = retyped(store.load("usb0", "val"), 7)
            store.save("usb0", "val", damaged)
            out["damaged"] = damaged
            person = FingerAtSensor(feeder, ["uma"])
            with capture_logs() as logs:
                out["identified"] = await SensorSession(device, client, store, emit=person).identify()
            out["logs"] = logs
            nobody = FingerAtSensor(feeder, ["val"])
            with pytest.raises(SessionError) as caught:
                await SensorSession(device, client, store, emit=nobody).identify(["val", "wes"])
            out["none_usable"], out["none_usable_prompts"] = caught.value, nobody.prompts()
        return out

    out = asyncio.run(scenario())
    identified = out["identified"]
    assert identified["candidates"] == [{"subject": "uma", "score": 1.0}], identified
    (warning,) = identified["warnings"]
    assert warning["subject"] == "val" and "print type 7" in warning["message"], warning
    assert warning["fix"].startswith("enroll val's finger on the reader usb0 again"), warning
    assert "capture-verifier subject remove val" in warning["fix"], warning  # the only way back for val
    (logged,) = [e for e in out["logs"] if e["event"] == "sensor_print_left_out"]
    assert (logged["subject"], logged["device"], logged["log_level"]) == ("val", "usb0", "warning"), logged
    assert "print type 7" in logged["reason"] and out["damaged"].hex() not in repr(logged), logged
    assert "val" in str(out["none_usable"]) and "print type 7" in str(out["none_usable"]), out["none_usable"]
    assert "enroll val's finger on the reader usb0 again" in out["none_usable"].fix
    assert str(out["none_usable"]).startswith("no print on the reader usb0 can be used: val's: libfprint cannot read"
                                              " it (print type 7"), out["none_usable"]
    assert "; wes's: no print of wes enrolled on usb0" in str(out["none_usable"]), out["none_usable"]
    assert "enroll wes on the reader usb0 first" in out["none_usable"].fix  # no print kept: the store's own fix
    assert out["none_usable_prompts"] == [], "a finger was asked for with no usable print"
    capsys.readouterr()
    assert _show(identified, 2) == 0
    shown = capsys.readouterr()
    assert "identified uma" in shown.out, shown
    assert f"warning: {warning['message']}\nfix: {warning['fix']}" in shown.err, shown
