"""Local API sessions end to end with real parts: the verifier, the camera simulator read by the camera driver, a serial
module simulator on a pty, the daemon's own session factories, and the API on its unix socket."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from agent.client import VerifierClient
from agent.config import DeviceSection
from agent.devices.capabilities import CAMERA, FINGERPRINT_IMAGE
from agent.devices.supervisor import DeviceSupervisor
from agent.face_sessions import FaceSession, face_session
from agent.localapi import LocalAPI
from tests.test_face_sessions import TRACKER, FacePerson, face_camera  # noqa: F401 (a fixture)

GEN_IMG = 0x01  # the serial module's "take an image" command: what a session waiting for a finger sends


async def cancelled_when(
    kiosk: httpx.AsyncClient, request: dict, when, after_s: float, meanwhile: list[httpx.Response] | None = None
) -> list[dict]:
    """Start a session, read its events, and cancel it ``after_s`` after the first event ``when`` accepts.

    Returns every event the stream carried, to its end (the API's "cancelled"). With ``meanwhile``, a second
    client's identify is tried just before the cancel, and the API's answer to it appended there.
    """
    created = (await kiosk.post("/sessions", json=request)).json()
    events: list[dict] = []
    async with kiosk.stream("GET", created["events"]) as stream:
        async for line in stream.aiter_lines():
            if not line.startswith("data: "):
                continue
            events.append(json.loads(line[6:]))
            if when(events[-1]):
                await asyncio.sleep(after_s)
                if meanwhile is not None:
                    meanwhile.append(await kiosk.post("/sessions", json={"operation": "identify"}))
                assert (await kiosk.delete(f"/sessions/{created['id']}")).status_code == 202
    return events


def test_cancelling_a_face_session_stops_its_finger_step_up_before_the_sensor_is_free(
    provisioned, face_camera, att_faces, zfm_sim, tmp_path  # noqa: F811
) -> None:
    """A face verification on a new device steps up to a finger (first use); the finger session it makes waits
    on the serial module. Cancelling the face session through the API must end that nested session's reader
    thread too, and the API must call the session finished (and the sensor free) only once it has ended. A second
    client meanwhile is told the session holds both the camera and the sensor."""
    config, identity = provisioned
    socket_path = tmp_path / "run" / "api.sock"

    second: list[httpx.Response] = []  # another client's session, tried while the finger is asked for

    async def go() -> tuple[list[dict], int, int, bool]:
        supervisor = DeviceSupervisor(
            [("camera", DeviceSection(kind="camera", source=face_camera.url)),
             ("reader", DeviceSection(kind="zfm", port=zfm_sim.port))],
            lambda kind, data: None,
        )
        await supervisor.open_all()
        try:
            async with VerifierClient(config, identity) as client, asyncio.timeout(150):
                person = FacePerson(face_camera, att_faces)
                await FaceSession(supervisor.pick(CAMERA), client, emit=person, tracker_options=TRACKER).enroll("gus")

                def make_face(emit):  # the daemon's factory, with the simulated head's one-frame turns allowed
                    session = face_session(supervisor, client, lambda event: (person(event), emit(event)))
                    session.tracker_options = TRACKER
                    return session

                api = LocalAPI(socket_path, lambda emit, **kw: None, make_face_session=make_face)
                await api.start()
                try:
                    transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
                    async with httpx.AsyncClient(transport=transport, base_url="http://kiosk", timeout=60) as kiosk:
                        events = await cancelled_when(  # the nested finger session waits for a finger
                            kiosk, {"operation": "verify", "subject": "gus", "modality": "face"},
                            lambda event: event.get("code") == "place_finger", after_s=0.5, meanwhile=second,
                        )
                        polls_at_end = zfm_sim.commands.count(GEN_IMG)
                        busy = (await kiosk.get("/health")).json()["busy"]
                        await asyncio.sleep(2.0)  # an orphaned reader thread would poll the module all along
                        after = zfm_sim.commands.count(GEN_IMG)
                finally:
                    await api.stop()
                return events, polls_at_end, after, busy
        finally:
            await supervisor.close()

    started = time.monotonic()
    events, polls_at_end, polls_later, busy = asyncio.run(go())
    kinds = [e["type"] for e in events]
    assert [e["acr_values"] for e in events if e["type"] == "step_up"] == ["finger"]
    assert kinds[-1] == "cancelled", kinds
    # It said "running on the sensor" of any session: a face session holds the camera, and here the sensor too.
    assert second[0].status_code == 409, second[0].text
    assert second[0].json()["error"].startswith("a session is running on the camera and the sensor ("), second[0].text
    assert polls_at_end > 0, "the nested finger session was waiting on the module"
    assert busy is False
    assert polls_later == polls_at_end, "the finger session's reader thread went on after the session ended"
    assert time.monotonic() - started < 150


@pytest.mark.verifier_settings("step_up_first_use = false")
def test_cancelling_a_finger_session_stops_its_face_step_up_before_the_camera_is_free(
    provisioned, verifier, face_camera, att_faces, zfm_sim, tmp_path  # noqa: F811
) -> None:
    """The audit's case: a subject whose factor rule needs a finger and a face; the finger session (the daemon's
    factory: an image reader, the face step-up on the camera) gets the verifier's step-up to the face and runs
    the face challenge. Cancelled through the API, no frame is read by it once the API calls it finished."""
    from agent.daemon import _session
    from agent.devstack import verifier_cli
    from agent.sessions import CaptureSession
    from tests.test_sessions import ScriptedFinger

    config, identity = provisioned
    socket_path = tmp_path / "run" / "api.sock"

    async def go() -> tuple[list[dict], int, int]:
        supervisor = DeviceSupervisor(
            [("camera", DeviceSection(kind="camera", source=face_camera.url)),
             ("reader", DeviceSection(kind="zfm", port=zfm_sim.port))],
            lambda kind, data: None,
        )
        await supervisor.open_all()
        camera = supervisor.pick(CAMERA)
        reads: list[float] = []
        real_wait_frame = camera.wait_frame

        def counted(*args, **kwargs):  # the real call, counted: who still reads the camera
            frame = real_wait_frame(*args, **kwargs)
            reads.append(time.monotonic())
            return frame

        try:
            async with VerifierClient(config, identity) as client, asyncio.timeout(150):
                person = FacePerson(face_camera, att_faces)
                face = FaceSession(camera, client, emit=person, tracker_options=TRACKER)
                await face.enroll("alice")
                await face.verify("alice")  # its session token lets the finger join the face
                module = supervisor.pick(FINGERPRINT_IMAGE)
                fingers = ScriptedFinger(zfm_sim, 0, [(0, 0), (0, 1)])
                await CaptureSession(module, client, emit=fingers, session_token=face.session_token,
                                     resolution_dpi=module.resolution_dpi).enroll("alice", 2, fingers=1)
                verifier_cli("subject", "require", "--pki", str(verifier.pki_dir), "alice", "--factors", "finger,face")
                camera.wait_frame = counted
                finger = ScriptedFinger(zfm_sim, 0, [(0, 2)])
                still = FacePerson(face_camera, att_faces, follows=False)  # looks at the camera, never turns

                def make(emit, reader=""):
                    return _session(supervisor, client, None, lambda e: (finger(e), still(e), emit(e)), reader)

                api = LocalAPI(socket_path, make)
                await api.start()
                try:
                    transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
                    async with httpx.AsyncClient(transport=transport, base_url="http://kiosk", timeout=60) as kiosk:
                        events = await cancelled_when(  # the face step-up reads the camera
                            kiosk, {"operation": "verify", "subject": "alice"},
                            lambda event: event["type"] == "challenge", after_s=1.0,
                        )
                        reads_at_end = len(reads)
                        await asyncio.sleep(2.0)
                        return events, reads_at_end, len(reads)
                finally:
                    await api.stop()
        finally:
            camera.wait_frame = real_wait_frame
            await supervisor.close()

    events, reads_at_end, reads_later = asyncio.run(go())
    assert [e["acr_values"] for e in events if e["type"] == "step_up"] == ["face"]
    assert events[-1]["type"] == "cancelled", events[-1]
    assert reads_at_end > 0, "the face step-up was reading the camera"
    assert reads_later == reads_at_end, "the face step-up's camera worker went on after the session ended"
