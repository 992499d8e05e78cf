"""Local API sessions end to end with real parts: the verifier, the camera simulator read by OpenCV, a serial
module simulator on a pty, the daemon's own session factories, and the API on its unix socket."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from agent.client import VerifierClient
from agent.config import DeviceSection
from agent.devices.capabilities import CAMERA
from agent.devices.supervisor import DeviceSupervisor
from agent.face_sessions import FaceSession, face_session
from agent.localapi import LocalAPI
from tests.test_face_sessions import TRACKER, FacePerson, face_camera  # noqa: F401 (a fixture)

GEN_IMG = 0x01  # the serial module's "take an image" command: what a session waiting for a finger sends


def test_cancelling_a_face_session_stops_its_finger_step_up_before_the_sensor_is_free(
    provisioned, face_camera, att_faces, zfm_sim, tmp_path  # noqa: F811
) -> None:
    """A face verification on a new device steps up to a finger (first use); the finger session it makes waits
    on the serial module. Cancelling the face session through the API must end that nested session's reader
    thread too, and the API must call the session finished (and the sensor free) only once it has ended."""
    config, identity = provisioned
    socket_path = tmp_path / "run" / "api.sock"

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
                        created = (await kiosk.post("/sessions", json={"operation": "verify", "subject": "gus",
                                                                       "modality": "face"})).json()
                        events: list[dict] = []
                        async with kiosk.stream("GET", created["events"]) as stream:
                            async for line in stream.aiter_lines():
                                if not line.startswith("data: "):
                                    continue
                                events.append(json.loads(line[6:]))
                                if events[-1].get("code") == "place_finger":  # the nested finger session waits
                                    await asyncio.sleep(0.5)
                                    assert (await kiosk.delete(f"/sessions/{created['id']}")).status_code == 202
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
    assert polls_at_end > 0, "the nested finger session was waiting on the module"
    assert busy is False
    assert polls_later == polls_at_end, "the finger session's reader thread went on after the session ended"
    assert time.monotonic() - started < 150
