"""The face part of `make demo`: a camera, a head-turn challenge from the verifier's nonce, a step-up by face.

The camera is the MJPEG simulator (``simulators.camera``) on 127.0.0.1, read by
OpenCV through the agent's camera device; the person is an ORL face
(``simulators.faces``) who turns the head when the session prompts, a few tenths
of a second later, as a person would. Ana, enrolled by finger, adds her face
after a finger verification (its session token), the operator then requires
finger and face for her, and her next finger verification is stepped up to her
face inside the same session. Last, a printed photo of her is held in front of
the camera: the liveness challenge refuses it and nothing is sent.

The faces come from ``../shared/data/att_faces`` beside the repository (or
``$CAPTURE_DEMO_FACES``); without them this part is skipped and says why.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import DeviceSection
from agent.devices.kinds import CameraDevice
from agent.devstack import verifier_cli
from agent.face_sessions import FaceSession
from agent.sessions import SessionError

FACES_ENV = "CAPTURE_DEMO_FACES"
REACTION_S = 0.3  # how late the demo's person follows a prompt
SIZE = (320, 240)
TRACKER = {"max_jump": 2.0}  # the simulated head turns in one frame, a real one over several


def faces_folder() -> Path | None:
    """The ORL faces (sN/*.pgm), or None when absent."""
    path = Path(os.environ.get(FACES_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data" / "att_faces")
    return path if (path / "s1" / "1.pgm").is_file() else None


class FacePerson:
    """Ana in front of the simulated camera: follows the prompts (or, as a photo, does not)."""

    def __init__(self, camera: Any, folder: Path, say: Callable[[str], None], frontal: str = "1",
                 follows: bool = True) -> None:
        from simulators.faces import poses

        self.camera, self.say, self.follows = camera, say, follows
        self.poses = poses(folder / "s1", frontal, "3", SIZE)
        camera.show(self.poses["look_at_camera"])

    def __call__(self, event: dict[str, Any]) -> None:
        if event["type"] == "challenge":
            self.say(f"  liveness challenge from the verifier's nonce: {', '.join(event['steps'])}")
        elif event["type"] == "prompt":
            self.say(f"  camera: {event['message']}")
            if self.follows and event["code"] in self.poses:
                asyncio.get_running_loop().call_later(REACTION_S, self.camera.show, self.poses[event["code"]])


async def face_story(
    client: Any,
    finger_session: Callable[..., Any],
    finger_person: Any,
    pki_dir: Path,
    step: Callable[[str], None],
    say: Callable[[str], None],
) -> None:
    """Ana's face: added after a finger verification, a step-up by face, and a photo refused."""
    folder = faces_folder()
    step("Faces: a simulated camera (MJPEG over HTTP, decoded by OpenCV), a head-turn challenge per nonce")
    if folder is None:
        say(f"skipped: the ORL faces are not at ../shared/data/att_faces (or ${FACES_ENV}); see README, Faces")
        return
    from simulators.camera import SimulatedCamera

    with SimulatedCamera(SIZE, fps=25) as camera:
        device = CameraDevice(DeviceSection(kind="camera", source=camera.url), "camera")
        details = await device.open()
        say(f"camera {details['width']}x{details['height']} at {camera.url}, opened by the camera device")
        try:
            def face(person: FacePerson) -> FaceSession:
                return FaceSession(device, client, emit=person, tracker_options=TRACKER)

            finger_person.will_use((0, 5), (10, 5), quiet=True)
            by_finger = finger_session()
            verified = await by_finger.verify("ana")
            say(f"Ana verifies by finger first ({verified['decision']}): its session token lets her add a face")
            adding = face(FacePerson(camera, folder, say))
            adding.session_token = by_finger.session_token
            enrolled = await adding.enroll("ana")
            say(f"Ana's face: enrolled, {enrolled['templates']} embeddings made on the device (frames never left it)")

            step("Ana verifies by face")
            session = face(FacePerson(camera, folder, say, frontal="2"))
            answer = await session.verify("ana")
            say(f"decision: {answer['decision']} (score {answer['score']}, threshold {answer['threshold']}), "
                f"{session.decision_s:.1f} s from her face appearing")

            step("The operator requires finger and face for Ana; her finger verification steps up to her face")
            out = verifier_cli("subject", "require", "--pki", str(pki_dir), "ana", "--factors", "finger,face")
            say(f"capture-verifier subject require: {out.stdout.strip()}")
            finger_person.will_use((0, 6), (10, 6))
            stepping = face(FacePerson(camera, folder, say, frontal="10"))
            answer = await finger_session(face_step_up=stepping.verify_face).verify("ana")
            say(f"decision: {answer['decision']} (score {answer['score']}): a finger and her face")

            step("A printed photo of Ana held in front of the camera: the liveness challenge refuses it")
            photo = face(FacePerson(camera, folder, say, frontal="2", follows=False))
            try:
                await photo.verify_face("ana")
                say("UNEXPECTED: the photo passed")
            except SessionError as exc:
                say(f"refused on the device, nothing sent: {exc.message}")
        finally:
            device.stop()

