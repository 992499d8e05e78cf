"""What people at a kiosk and kiosk apps run into, walked with a real daemon, real simulators and the local API.

Each test starts `capture-agent run` against the local verifier with a simulated
serial module (`capture-simulator zfm`, its own process, scripted on stdin), and
talks to the daemon's unix socket as a kiosk app does, or runs `capture-agent
enroll|verify|identify` as a person at a terminal does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.cli import main as agent_main
from agent.commands import sessions as sessions_command
from agent.config import parse_config
from agent.devstack import verifier_cli, write_config_file
from tests.conftest import DIAGNOSABLE, UnixStandIn, finger_capacity, finger_fpir_for, lines_said, start_agent_daemon
from tests.exec_prepared import prepared
from tests.test_daemon_devices import Simulator, audit_until


class Daemon:
    """A running daemon with one simulated serial module, and a kiosk app's view of its local API."""

    def __init__(
        self, config, tmp_path: Path, check_interval_s: float = 1.0, camera: bool = False, sessions: str = ""
    ) -> None:
        self.zfm = Simulator("zfm", "--link", str(tmp_path / "ttyZFM0"))
        self.camera = Simulator("camera", "--size", "320x240", "--fps", "15") if camera else None
        self.socket = tmp_path / "run" / "api.sock"
        camera_section = (f'[[device]]\nkind = "camera"\nname = "camera"\nsource = "{self.camera.hello["url"]}"\n'
                          f"check_interval_s = {check_interval_s}\n" if self.camera is not None else "")
        self.config_file = write_config_file(
            tmp_path / "agent.toml", config,
            f'[api]\nsocket = "{self.socket}"\n[logging]\nlevel = "error"\n'
            f'[[device]]\nkind = "zfm"\nname = "reader"\nport = "{tmp_path / "ttyZFM0"}"\n'
            f"check_interval_s = {check_interval_s}\n{camera_section}"
            f"[sessions]\n{sessions}\n",
        )
        self.process = start_agent_daemon(self.config_file)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            assert self.process.poll() is None, "the daemon exited"
            assert time.monotonic() < deadline, "the daemon's local API never came up"
            time.sleep(0.1)
        self.placements: list[tuple[int, int]] = []
        self.on_event = None  # the test's hand on the simulator mid-session

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(self.socket)), base_url="http://kiosk",
                                 timeout=60)

    def person(self, event: dict) -> None:
        if event["type"] == "prompt" and event["code"] == "place_finger" and self.placements:
            self.zfm.send("place {} {}".format(*self.placements.pop(0)))
        elif event["type"] == "prompt" and event["code"] == "lift_finger":
            self.zfm.send("lift")
        if self.on_event is not None:
            self.on_event(event)

    async def session(self, client: httpx.AsyncClient, **body) -> list[dict]:
        created = await client.post("/sessions", json=body)
        assert created.status_code == 201, created.text
        events = []
        async with client.stream("GET", created.json()["events"]) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    self.person(events[-1])
        return events

    async def reader_connected(self, client: httpx.AsyncClient, expected: bool, timeout_s: float) -> None:
        await self.devices_connected(client, {"reader": expected}, timeout_s)

    async def devices_connected(self, client: httpx.AsyncClient, expected: dict[str, bool], timeout_s: float) -> dict:
        """Wait until /health's devices are connected as ``expected`` (by name); that /health."""
        deadline = time.monotonic() + timeout_s
        while True:
            health = (await client.get("/health")).json()
            seen = {d["name"]: d["connected"] for d in health["devices"]}
            if seen == expected:
                return health
            assert time.monotonic() < deadline, f"the devices stay {seen} in /health, expected {expected}"
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # it flushes its outbox to the verifier before it exits
            self.process.wait(20)
        self.zfm.stop()
        if self.camera is not None:
            self.camera.stop()


@pytest.fixture
def daemon_with_module(provisioned, tmp_path) -> Iterator:
    """Make a daemon (check interval as the test asks) on the provisioned device; stopped after."""
    started: list[Daemon] = []

    def start(check_interval_s: float = 1.0, camera: bool = False, sessions: str = "") -> Daemon:
        # A later daemon of the same test gets a directory of its own: an earlier one's socket file, left behind,
        # would read as this one's local API being up before it listens.
        where = tmp_path / f"d{len(started)}" if started else tmp_path
        where.mkdir(exist_ok=True)
        started.append(Daemon(provisioned[0], where, check_interval_s, camera, sessions))
        return started[-1]

    yield start
    for daemon in started:
        daemon.stop()


def test_a_module_pulled_out_and_plugged_back_within_a_check_interval_is_reopened(
    daemon_with_module, verifier
) -> None:
    """Pulled out during a capture and plugged straight back, before the supervisor's next look: the port's path
    was there again when it looked, so the daemon kept the dead descriptor and every later session failed "went
    away (plug it back in)" on a module that was plugged in, until a restart."""
    daemon = daemon_with_module(check_interval_s=3.0)

    async def story() -> None:
        async with daemon.client() as kiosk:
            daemon.placements = [(0, 0), (0, 1), (4, 0), (4, 1)]
            enrolled = await daemon.session(kiosk, operation="enroll", subject="ana", captures=2, fingers=2)
            assert enrolled[-1]["type"] == "result", enrolled[-1]

            def unplug_then_replug(event: dict) -> None:
                if event["type"] == "prompt" and event["code"] == "place_finger":
                    daemon.zfm.send("unplug")
                elif event["type"] == "error":
                    daemon.zfm.send("replug")  # at once: the daemon's next look finds the port there

            daemon.on_event = unplug_then_replug
            pulled = await daemon.session(kiosk, operation="verify", subject="ana")
            daemon.on_event = None
            assert pulled[-1]["type"] == "error", pulled[-1]
            assert pulled[-1]["message"] == "device reader went away during the capture (unplugged?)", pulled[-1]
            assert pulled[-1]["fix"] == "plug it back in: the agent reopens it, then try again", pulled[-1]
            assert pulled[-1]["code"] == "device_unplugged", pulled[-1]
            await daemon.reader_connected(kiosk, False, 10)  # the session's loss is the supervisor's
            await daemon.reader_connected(kiosk, True, 30)  # ... which reopens it
            daemon.placements = [(0, 2), (4, 2)]  # the device's first verification steps up to the second finger
            again = await daemon.session(kiosk, operation="verify", subject="ana")
            assert again[-1].get("decision") == "accept", again

    asyncio.run(story())
    daemon.stop()
    events = audit_until(verifier, "agent_stopping")
    reader = [e["type"] for e in events if e["type"].startswith("device_") and e["data"]["device"] == "reader"]
    assert reader == ["device_plugged", "device_unplugged", "device_plugged"], reader


def cli(daemon: Daemon, *args: str, **popen) -> subprocess.Popen[str]:
    """`capture-agent ARGS` at a terminal (its output unbuffered, as a person reads it)."""
    return subprocess.Popen(
        [*prepared("sigint-default"), sys.executable, "-m", "agent.cli", "--config", str(daemon.config_file), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **DIAGNOSABLE},
        **popen,
    )


def enroll_ana(daemon: Daemon) -> None:
    async def enroll() -> None:
        async with daemon.client() as kiosk:
            daemon.placements = [(0, 0), (0, 1), (4, 0), (4, 1)]
            enrolled = await daemon.session(kiosk, operation="enroll", subject="ana", captures=2, fingers=2)
            assert enrolled[-1]["type"] == "result", enrolled[-1]

    asyncio.run(enroll())


# A finger wait no enrollment of a test runs into, even on a loaded machine (a CI runner's 2 cores at a load of 7).
ENROLLING_FINGER_TIMEOUT_S = 120


def ana_enrolled_then(daemon_with_module, sessions: str) -> Daemon:
    """Ana enrolled through a daemon whose finger waits are generous, then stopped; the daemon the test is about
    (its ``[sessions]`` short waits) started after, on the same device.

    Why: with a 5 s finger_timeout_s the enrollment before the part under test ran out of time on a loaded
    machine (each placement goes from the daemon's prompt through the test to the simulator): the test failed
    before the wait it is about had begun. Here the short wait starts only with the part under test.
    """
    enroller = daemon_with_module(sessions=f"finger_timeout_s = {ENROLLING_FINGER_TIMEOUT_S}")
    enroll_ana(enroller)
    enroller.stop()
    return daemon_with_module(sessions=sessions)


def test_nobody_placing_a_finger_is_told_the_session_ended_and_to_start_again(daemon_with_module) -> None:
    """The wait for a finger ended with the driver's "no finger on the sensor within 15 s (fix: place a finger on
    the sensor)", its fix printed twice, and a fix that no longer works: the session is over by then. The wait is
    [sessions] finger_timeout_s (5 s here; 15 by default), in force only after ana's enrollment."""
    daemon = ana_enrolled_then(daemon_with_module, sessions="finger_timeout_s = 5")
    person = cli(daemon, "verify", "--subject", "ana")  # ... who walks away without touching the sensor
    out, _ = person.communicate(timeout=60)
    assert person.returncode == 2, out
    lines = out.splitlines()
    assert lines[-2:] == [
        "error: no finger was placed on the sensor within 5 s, so the session ended",
        "fix: start again: place a finger on the sensor when asked, and hold it there until asked to lift it",
    ], out


def ana_asked_for_her_finger(daemon: Daemon, enrolled: bool = False) -> tuple[subprocess.Popen, list[str]]:
    """Ana enrolled (unless ``enrolled`` already), then `verify --subject ana` running until it asks for her finger:
    the command, what it said."""
    if not enrolled:
        enroll_ana(daemon)
    person = cli(daemon, "verify", "--subject", "ana")
    said: list[str] = []
    for line in lines_said(person):
        said.append(line.rstrip())
        if "Place" in line:
            break
    return person, said


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_in_enroll_cancels_the_session_and_frees_the_sensor_before_it_exits(
    daemon_with_module, verifier, stop
) -> None:
    """Ctrl-C used to just drop the connection: exit 130 and nothing said, the daemon holding the sensor for its
    5 s grace, so the next person (or kiosk app) was refused "a session is running on the sensor". SIGTERM (a
    kiosk wrapper or a unit stopping the command) ended it at once, with the same 5 s held."""
    daemon = daemon_with_module()
    person = cli(daemon, "enroll", "--subject", "carl")
    lines = []
    for line in lines_said(person):
        lines.append(line)
        if "Place" in line:
            daemon.zfm.send("place 2 0")
        elif "Lift" in line:
            daemon.zfm.send("lift")
        elif "1/6" in line:  # one capture taken: the person gives up
            person.send_signal(stop)
    assert person.wait(30) == 130, "".join(lines)
    said = "".join(lines)
    assert "cancelling the session" in said and "cancelled; the sensor is free for the next person" in said, said

    async def next_person() -> int:
        async with daemon.client() as kiosk:
            created = await kiosk.post("/sessions", json={"operation": "identify"})
            if created.status_code == 201:
                await kiosk.delete(f"/sessions/{created.json()['id']}")
            return created.status_code

    assert asyncio.run(next_person()) == 201, "the sensor is free as soon as the cancelled command has exited"
    subjects = verifier_cli("subject", "list", "--pki", str(verifier.pki_dir)).stdout
    assert "carl" not in subjects, "nothing half-enrolled on the verifier"


def test_enrolling_an_id_already_enrolled_is_refused_before_the_first_capture(daemon_with_module) -> None:
    """The person gave all six captures and only then heard "401 Subject already enrolled": the enrollment's
    challenge did not say it was a first enrollment, so the verifier could not refuse it before the sensor."""
    daemon = daemon_with_module()
    enroll_ana(daemon)
    person = cli(daemon, "enroll", "--subject", "ana")
    out, _ = person.communicate(timeout=60)  # nobody is at the sensor: a prompt would wait 15 s, then fail
    assert person.returncode == 2, out
    assert "Place" not in out, f"refused before anyone touches the sensor: {out}"
    assert "subject 'ana' is already enrolled" in out, out
    assert "fix: to add to this person's enrollment, they verify first (capture-agent enroll --subject ana --add" in out


def test_a_challenge_request_says_first_only_for_an_enrollment() -> None:
    from protocol.messages import ChallengeRequest
    from protocol.wire import WireError

    asked = ChallengeRequest("enroll", "ana", None, True)
    assert ChallengeRequest.from_body(asked.body()) == asked
    assert "first" not in ChallengeRequest("enroll", "ana").body(), "an --add sends no first: no early refusal"
    for body in ({"operation": "verify", "subject": "ana", "first": True},
                 {"operation": "enroll", "subject": "ana", "first": "yes"}):
        with pytest.raises(WireError, match="first"):
            ChallengeRequest.from_body(body)


def test_a_capture_the_quality_gate_refuses_is_said_to_be_refused_once(daemon_with_module) -> None:
    """A smudged print (no ridges: the gate's bare "place_finger") was prompted as "Place your finger on the
    sensor" twice in a row, the second being the next attempt's: nothing said the capture had been refused."""
    daemon = daemon_with_module()
    enroll_ana(daemon)
    person = cli(daemon, "verify", "--subject", "ana")
    placements = ["smudge", "place 0 2", "place 4 2"]  # the device's first verification steps up: a second finger
    prompts = []
    for line in lines_said(person):
        if line.startswith("  > "):
            prompts.append(line[4:].strip())
        if "Place" in line or "place the same finger" in line:
            daemon.zfm.send(placements.pop(0) if placements else "place 4 3")
        elif "Lift" in line:
            daemon.zfm.send("lift")
    assert person.wait(30) == 0, prompts
    assert prompts[:4] == [
        "Place your finger on the sensor",
        "Lift your finger",
        "That print could not be read well enough: place the same finger again, flat and still",
        "Lift your finger",
    ], prompts


def test_a_finger_left_on_the_sensor_is_reminded_to_lift_and_the_session_ends_if_it_stays(
    daemon_with_module, verifier
) -> None:
    """A lift that timed out was ignored: the person heard nothing for 15 s, then "Place your finger", and the
    module imaged the same placement again (an enrollment's captures could all be one placement). The waits are
    [sessions] lift_reminder_s and finger_timeout_s (shortened here; the finger wait not to 5 s, which each
    placement and lift of the enrollment must beat through the test and the simulator, on a loaded machine too)."""
    daemon = daemon_with_module(sessions="finger_timeout_s = 20\nlift_reminder_s = 1")
    person = cli(daemon, "enroll", "--subject", "bob", "--fingers", "1", "--captures", "2")
    placements = ["place 6 0", "place 6 1"]
    prompts, said = [], []
    for line in lines_said(person):
        said.append(line.rstrip())
        if line.startswith("  > "):
            prompts.append(line[4:].strip())
        if "Place" in line and placements:
            daemon.zfm.send(placements.pop(0))
        elif "still on the sensor" in line and len(placements) == 1:  # the first time: lifts when reminded
            daemon.zfm.send("lift")
        # ... and never lifts at a plain "Lift your finger", nor the second time at all
    out = "\n".join(prompts)
    assert person.wait(60) == 2, out
    assert prompts == [
        "Place your finger on the sensor",
        "Lift your finger",
        "Your finger is still on the sensor: lift it now",
        "Place your finger on the sensor",
        "Lift your finger",
        "Your finger is still on the sensor: lift it now",
    ], out
    assert said[-2:] == ["error: the finger stayed on the sensor, so the session ended",
                         "fix: start again, and lift your finger each time you are asked"], said
    subjects = verifier_cli("subject", "list", "--pki", str(verifier.pki_dir)).stdout
    assert "bob" not in subjects, "an enrollment whose finger never came off sends nothing"


async def a_person_runs_identify_beside(daemon, request: dict, connected: dict | None = None) -> tuple[int, str]:
    """`capture-agent identify` at the terminal while a kiosk app's session (``request``, once ``connected`` holds)
    runs: (its exit status, what it said); the kiosk's session cancelled after."""
    async with daemon.client() as kiosk:
        if connected:
            await daemon.devices_connected(kiosk, connected, 20)
        first = await kiosk.post("/sessions", json=request)
        assert first.status_code == 201, first.text
        person = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "--config", str(daemon.config_file), "identify",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await person.communicate()
        await kiosk.delete(f"/sessions/{first.json()['id']}")
        return person.returncode or 0, out.decode()


def test_a_second_client_is_told_the_sensor_is_busy_and_what_to_do(daemon_with_module) -> None:
    """Two clients at once: the second was told "wait for it or cancel it" with no fix line, and a person at a
    terminal has no command that cancels a session another client started."""
    daemon = daemon_with_module()

    code, out = asyncio.run(a_person_runs_identify_beside(daemon, {"operation": "identify"}))  # waits for a finger
    assert code == 2, out
    assert out.splitlines() == [
        "error: a session is running on the sensor (or still stopping after a cancel)",
        'fix: try again when it has ended (GET /health says "busy": false); the client that started it may '
        "cancel it (DELETE /sessions/ID)",
    ], out


def test_a_second_client_is_told_a_face_session_holds_the_camera_not_the_sensor(daemon_with_module) -> None:
    """While a kiosk app's face session ran, a person starting a finger session was told "a session is running on
    the sensor", and saw nobody at the sensor."""
    daemon = daemon_with_module(camera=True)
    assert daemon.camera is not None
    daemon.camera.send("nothing")  # nobody in front of the camera: the face session waits

    face = {"operation": "identify", "modality": "face"}
    code, out = asyncio.run(a_person_runs_identify_beside(daemon, face, {"reader": True, "camera": True}))
    assert code == 2, out
    assert out.splitlines()[0] == "error: a session is running on the camera (or still stopping after a cancel)", out


def test_a_refused_verification_tells_the_person_what_to_do_next(daemon_with_module) -> None:
    """The wrong finger ended in "reject (score 0.0028)" alone: a verdict, nothing the person could do."""
    daemon = daemon_with_module()
    enroll_ana(daemon)
    person = cli(daemon, "verify", "--subject", "ana")
    placements = ["place 6 0", "place 7 0"]  # fingers that are not ana's (a step-up may ask for a second)
    said = []
    for line in lines_said(person):
        said.append(line.rstrip())
        if "Place" in line and placements:
            daemon.zfm.send(placements.pop(0))
        elif "Lift" in line:
            daemon.zfm.send("lift")
    assert person.wait(30) == 1, said
    assert said[-2].startswith("reject (score "), said
    assert said[-1] == ("not recognised as ana: try again with a finger enrolled for ana (repeated failures lock "
                        "the id out for a while)"), said


def test_health_says_when_the_verifier_is_unreachable_and_when_it_is_back(daemon_with_module, verifier) -> None:
    """With the verifier down /health said "status": "ok": a kiosk app could not show "out of service", and each
    person gave a finger (or was told of a network error) before anyone knew."""
    daemon = daemon_with_module()
    enroll_ana(daemon)

    async def story() -> None:
        async with daemon.client() as kiosk:
            health = (await kiosk.get("/health")).json()
            assert health["status"] == "ok" and health["verifier"] == "reachable", health
            unknown = await daemon.session(kiosk, operation="verify", subject="zed")
            assert unknown[-1]["code"] == "verifier_refused" and unknown[-1]["problem"] == "unknown-subject", unknown
            verifier.stop()
            failed = await daemon.session(kiosk, operation="verify", subject="ana")
            assert failed[-1]["type"] == "error" and "could not be reached" in failed[-1]["message"], failed
            assert failed[-1]["code"] == "verifier_unreachable", failed
            health = (await kiosk.get("/health")).json()
            assert health["status"] == "degraded" and health["verifier"] == "unreachable", health
            assert "could not be reached" in health["verifier_error"] and "start it again" in health["verifier_fix"]
            verifier.start()  # the same port: the daemon's outbox delivery finds it back by itself
            deadline = time.monotonic() + 60
            while (health := (await kiosk.get("/health")).json())["verifier"] != "reachable":
                assert time.monotonic() < deadline, health
                await asyncio.sleep(0.2)
            assert health["status"] == "ok" and "verifier_error" not in health, health
            daemon.placements = [(0, 2), (4, 2)]
            again = await daemon.session(kiosk, operation="verify", subject="ana")
            assert again[-1].get("decision") == "accept", again

    asyncio.run(story())


def test_a_kiosk_app_tells_errors_apart_by_code_not_by_their_english(daemon_with_module) -> None:
    """The error event carried only English (message, fix): "no finger in time" and "reader unplugged" need
    different screens, and a kiosk app had to match the text to choose."""
    daemon = ana_enrolled_then(daemon_with_module, sessions="finger_timeout_s = 5")

    async def nobody_comes() -> dict:
        async with daemon.client() as kiosk:
            return (await daemon.session(kiosk, operation="verify", subject="ana"))[-1]

    ended = asyncio.run(nobody_comes())
    assert ended["type"] == "error" and ended["code"] == "no_finger", ended


@pytest.mark.parametrize(
    ("stop", "told"),
    [
        # SIGTERM (an update, a reboot): the terminal printed "error: cancelled", the event's reason left out.
        ("stopped", ["error: the session was cancelled: the agent is stopping", "fix: start it again"]),
        # SIGKILL (a crash, the OOM killer): the events stream just ended, and nothing was printed before exit 2.
        ("killed", ["error: the agent stopped before the session ended",
                    "fix: start it again once the agent runs (systemctl status capture-agent)"]),
    ],
)
def test_the_agent_ending_during_a_session_is_said_to_the_person(daemon_with_module, stop: str, told: list) -> None:
    """The daemon ended while a person waited at the sensor: the terminal says why, not nothing or "cancelled"."""
    daemon = daemon_with_module()
    person, said = ana_asked_for_her_finger(daemon)
    daemon.process.send_signal(signal.SIGTERM) if stop == "stopped" else daemon.process.kill()
    said += [line.rstrip() for line in lines_said(person)]
    assert person.wait(30) == 2, said
    assert said[-2:] == told, said


def test_health_is_degraded_while_the_reader_is_unplugged(daemon_with_module) -> None:
    """/health said "status": "ok" with the kiosk's only reader unplugged (only devices[].connected told)."""
    daemon = daemon_with_module()

    async def story() -> None:
        async with daemon.client() as kiosk:
            await daemon.reader_connected(kiosk, True, 10)
            assert (await kiosk.get("/health")).json()["status"] == "ok"
            daemon.zfm.send("unplug")
            await daemon.reader_connected(kiosk, False, 10)
            health = (await kiosk.get("/health")).json()
            assert health["status"] == "degraded" and health["device_error"] == "not connected: reader", health
            daemon.zfm.send("replug")
            await daemon.reader_connected(kiosk, True, 30)
            health = (await kiosk.get("/health")).json()
            assert health["status"] == "ok" and "device_error" not in health, health

    asyncio.run(story())


def test_a_session_on_a_reader_known_unplugged_asks_for_no_finger(daemon_with_module) -> None:
    """With the reader unplugged (and /health saying so), a session told the person "Place your finger on the
    sensor", then ended at once with device_not_connected: a prompt for a sensor that is not there."""
    daemon = daemon_with_module()

    async def story() -> list[dict]:
        async with daemon.client() as kiosk:
            await daemon.reader_connected(kiosk, True, 10)
            daemon.zfm.send("unplug")
            await daemon.reader_connected(kiosk, False, 10)
            return await daemon.session(kiosk, operation="identify")  # no subject: nothing the verifier refuses

    events = asyncio.run(story())
    assert [e["type"] for e in events] == ["error"], events
    assert events[-1]["code"] == "device_not_connected" and "plug it in" in events[-1]["fix"], events


def test_health_stays_ok_while_an_optional_camera_is_unplugged(daemon_with_module) -> None:
    """A camera beside the reader went away: /health said "degraded" (a kiosk app showed "out of service") while
    the default, finger sessions ran as ever. It is named as optional, and only the reader degrades the status."""
    daemon = daemon_with_module(camera=True)
    assert daemon.camera is not None

    async def story() -> None:
        async with daemon.client() as kiosk:
            health = await daemon.devices_connected(kiosk, {"reader": True, "camera": True}, 20)
            assert health["status"] == "ok", health
            daemon.camera.send("unplug")
            health = await daemon.devices_connected(kiosk, {"reader": True, "camera": False}, 20)
            assert health["status"] == "ok" and "device_error" not in health, health
            assert {d["name"]: d["required"] for d in health["devices"]} == {"reader": True, "camera": False}
            assert health["device_warning"] == "not connected (optional): camera" and health["device_fix"], health
            daemon.zfm.send("unplug")
            health = await daemon.devices_connected(kiosk, {"reader": False, "camera": False}, 20)
            assert health["status"] == "degraded" and health["device_error"] == "not connected: reader", health

    asyncio.run(story())


def test_identify_of_someone_not_enrolled_says_what_to_do(daemon_with_module) -> None:
    """A person nobody enrolled was told "nobody recognised: ..." and nothing about what to do."""
    daemon = daemon_with_module()
    enroll_ana(daemon)
    person = cli(daemon, "identify")
    said = []
    for line in lines_said(person):
        said.append(line.rstrip())
        if "Place" in line:
            daemon.zfm.send("place 8 0")  # nobody's finger
        elif "Lift" in line:
            daemon.zfm.send("lift")
    assert person.wait(30) == 1, said
    assert said[-2:] == ["nobody recognised: no enrolled subject of this device's groups matches",
                         "try again with a finger you enrolled; if you have not enrolled here, ask to be enrolled"]


def test_verifying_by_face_a_subject_with_no_face_is_refused_before_the_head_turns(daemon_with_module) -> None:
    """The challenge only checked that the subject was enrolled (a finger will do): a person with no face enrolled
    went through the whole head-turn challenge (or 20 s of "Stand in front of the camera") to hear it after."""
    daemon = daemon_with_module(camera=True)
    enroll_ana(daemon)  # by finger only
    assert daemon.camera is not None
    daemon.camera.send("nothing")
    person = cli(daemon, "verify", "--face", "--subject", "ana")
    out, _ = person.communicate(timeout=60)
    assert person.returncode == 2, out
    assert "  > " not in out, f"refused before any prompt: {out}"
    assert out.splitlines() == [
        "error: verifier refused: 404 No face enrolled for the subject: subject 'ana' has no face enrolled",
        "fix: verify with a finger, or enroll a face first: capture-agent enroll --face --subject ana --add",
    ], out


def test_a_challenge_request_names_a_modality_only_for_a_verification() -> None:
    from protocol.messages import ChallengeRequest
    from protocol.wire import WireError

    asked = ChallengeRequest("verify", "ana", modality="face")
    assert ChallengeRequest.from_body(asked.body()) == asked
    for body in ({"operation": "identify", "modality": "face"},
                 {"operation": "verify", "subject": "ana", "modality": "iris"}):
        with pytest.raises(WireError, match="modality"):
            ChallengeRequest.from_body(body)


class StandInAPI(UnixStandIn):
    """A local API socket that answers like the daemon but says only ``events``, then holds the stream open
    (ended only for a replay after a DELETE, or when ``ends``).

    For what a real daemon does only by a race or after minutes: a stream that goes quiet, a Ctrl-C that comes
    after the end was shown. One request per connection, as the daemon's; ``requests`` lists them.
    """

    def __init__(self, path: Path, events: list[dict], ends: bool = False) -> None:
        self.events = events
        self.ends = ends  # the stream ends after ``events``, as the daemon's does once the session has ended
        self.requests: list[tuple[str, str]] = []
        super().__init__(path)

    def answer(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        method, target = head.split(b" ")[:2]
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            body += conn.recv(65536)
        self.requests.append((method.decode(), target.decode()))
        if method == b"GET":
            stream = "".join(f"data: {json.dumps(event)}\n\n" for event in self.events).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n" + stream)
            if self.ends or ("DELETE", "/sessions/s1") in self.requests:  # a replay after a cancel ends too
                conn.close()
            else:
                self.held.append(conn)  # ... and then nothing, never the end
            return
        status, answer = (b"201 Created", {"id": "s1", "events": "/sessions/s1/events"}) if method == b"POST" else (
            b"202 Accepted", {"cancelled": "s1"})
        payload = json.dumps(answer).encode()
        conn.sendall(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     + f"content-length: {len(payload)}\r\n\r\n".encode() + payload)
        conn.close()


def stand_in_config(tmp_path: Path) -> Path:
    """A config file for a command that talks to a stand-in socket only."""
    path = tmp_path / "cli.toml"
    path.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n[logging]\nlevel = "error"\n')
    return path


def test_the_cli_waits_for_events_past_every_wait_of_the_daemon() -> None:
    """The read timeout was 300 s, the largest [sessions] finger_timeout_s: at that setting the daemon's "no finger"
    raced it, and the loser was said as "the agent stopped before the session ended"."""
    slowest = parse_config({"sessions": {"finger_timeout_s": 300, "lift_reminder_s": 60}})
    waits = 300 + 60 + 4 * slowest.network.call_deadline_s
    assert sessions_command.events_read_timeout_s(slowest) > waits
    assert sessions_command.events_read_timeout_s(parse_config({})) >= 300  # never shorter than it was


def test_a_quiet_events_stream_is_said_as_such_not_as_the_agent_stopping(
    tmp_path, monkeypatch, capsys, keep_process_settings
) -> None:
    """A read timeout was caught as any transport error: "the agent stopped before the session ended", while the
    agent ran on (and the real reason, the no-finger timeout it raced, was lost)."""
    api = StandInAPI(tmp_path / "api.sock", [{"type": "prompt", "code": "place_finger", "message": "Place it"}])
    monkeypatch.setattr(sessions_command, "events_read_timeout_s", lambda config: 0.5)
    try:
        code = agent_main(["--config", str(stand_in_config(tmp_path)), "verify", "--subject", "ana",
                           "--socket", str(api.path)])
    finally:
        api.close()
    said = capsys.readouterr()
    assert code == 2, said
    assert "the agent stopped" not in said.err, said.err
    assert "error: the agent said nothing of the session for 0.5 s" in said.err, said.err
    assert "journalctl -u capture-agent" in said.err and "[sessions]" in said.err, said.err


def test_ctrl_c_as_the_session_ends_by_itself_shows_its_error_not_a_cancel(daemon_with_module) -> None:
    """Ctrl-C just after the session ended with an error (no finger in time) said "cancelled; the sensor is free":
    only a result was looked for in the events replayed after the cancel."""
    daemon = ana_enrolled_then(daemon_with_module, sessions="finger_timeout_s = 5")
    person, said = ana_asked_for_her_finger(daemon, enrolled=True)
    person.send_signal(signal.SIGSTOP)  # the terminal is held while the daemon ends the session (no finger)

    async def session_ended() -> None:
        async with daemon.client() as kiosk:
            deadline = time.monotonic() + 30
            while (await kiosk.get("/health")).json()["busy"]:
                assert time.monotonic() < deadline, "the session never ended"
                await asyncio.sleep(0.1)

    try:
        asyncio.run(session_ended())
    finally:
        person.send_signal(signal.SIGINT)  # pressed before the terminal read the error: it comes first
        person.send_signal(signal.SIGCONT)
    said += [line.rstrip() for line in lines_said(person)]
    assert person.wait(30) == 2, said
    assert "cancelled; the sensor is free for the next person" not in said, said
    assert said[-2:] == [
        "error: no finger was placed on the sensor within 5 s, so the session ended",
        "fix: start again: place a finger on the sensor when asked, and hold it there until asked to lift it",
    ], said



def at_a_terminal(tmp_path, api, *command: str) -> subprocess.Popen[str]:
    """`capture-agent COMMAND` against the stand-in API, as from a terminal (Ctrl-C reaches it), its output piped."""
    return subprocess.Popen(
        [*prepared("sigint-default"), sys.executable, "-m", "agent.cli", "--config",
         str(stand_in_config(tmp_path)), *command, "--socket", str(api.path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **DIAGNOSABLE},
    )

def test_ctrl_c_after_the_result_was_shown_neither_cancels_nor_shows_it_again(tmp_path) -> None:
    """Ctrl-C after the result was printed (the stream not yet closed) cancelled a session that had ended and
    printed its result a second time from the replay."""
    api = StandInAPI(tmp_path / "api.sock", [{"type": "prompt", "code": "place_finger", "message": "Place it"},
                                             {"type": "result", "decision": "accept", "score": 0.9, "subject": "ana"}])
    try:
        person = at_a_terminal(tmp_path, api, "verify", "--subject", "ana")
        said = []
        for line in lines_said(person):
            said.append(line.rstrip())
            if line.startswith("accept"):
                person.send_signal(signal.SIGINT)  # the stream is held open: the command is still reading it
        code = person.wait(30)
    finally:
        api.close()
    assert said.count("accept (score 0.9)") == 1, said
    assert not any("cancel" in line for line in said), said
    assert code == 0, said
    assert [method for method, _ in api.requests] == ["POST", "GET"], api.requests


def test_ctrl_c_in_a_face_session_frees_the_camera_and_says_so(daemon_with_module) -> None:
    """Ctrl-C during `identify --face` said "cancelled; the sensor is free for the next person" to a person at a
    camera who never touched a sensor. Nobody is in front of the camera here: the first prompt is the cue."""
    daemon = daemon_with_module(camera=True)
    assert daemon.camera is not None
    daemon.camera.send("nothing")
    person = cli(daemon, "identify", "--face")
    lines = []
    for line in lines_said(person):
        lines.append(line)
        if "Stand in front of the camera" in line:
            person.send_signal(signal.SIGINT)
    assert person.wait(30) == 130, "".join(lines)
    said = "".join(lines)
    assert "cancelled; the camera is free for the next person" in said and "sensor" not in said, said

    async def next_person() -> int:
        async with daemon.client() as kiosk:
            created = await kiosk.post("/sessions", json={"operation": "identify", "modality": "face"})
            if created.status_code == 201:
                await kiosk.delete(f"/sessions/{created.json()['id']}")
            return created.status_code

    assert asyncio.run(next_person()) == 201, "the camera is free as soon as the cancelled command has exited"


FACE_THEN_FINGER = [
    {"type": "challenge", "steps": ["turn_head_left"]},
    {"type": "prompt", "code": "turn_head_left", "message": "Slowly turn your head to your left"},
    {"type": "step_up", "acr_values": "finger", "reasons": ["factor_rule"]},
    {"type": "prompt", "code": "place_finger", "message": "Place your finger on the sensor"},
]
FINGER_THEN_FACE = [
    {"type": "prompt", "code": "place_finger", "message": "Place your finger on the sensor"},
    {"type": "prompt", "code": "lift_finger", "message": "Lift your finger"},
    {"type": "step_up", "acr_values": "face", "reasons": ["factor_rule"]},
    {"type": "challenge", "steps": ["turn_head_left"]},
    {"type": "prompt", "code": "face_not_found", "message": "Stand in front of the camera"},
]


@pytest.mark.parametrize(("command", "events", "freed"), [
    (("verify", "--subject", "ana", "--face"), FACE_THEN_FINGER, "the camera and the sensor are"),
    (("verify", "--subject", "ana"), FINGER_THEN_FACE, "the sensor and the camera are"),
    # a face added to a subject with fingers only: the person verifies by finger first, then turns the head
    (("enroll", "--subject", "ana", "--face", "--add"), FINGER_THEN_FACE[:2] + FINGER_THEN_FACE[3:],
     "the camera and the sensor are"),
], ids=["face-stepped-up-to-a-finger", "finger-stepped-up-to-a-face", "face-added-after-a-finger"])
def test_ctrl_c_after_a_step_up_names_every_device_the_session_used(tmp_path, command, events, freed) -> None:
    """Ctrl-C in `verify --face` after the verifier asked for a finger too said "the camera is free" while the
    person had been asked onto the sensor as well (and a finger verification stepped up to a face never named the
    camera): the message named the device of the command's modality, not the devices the session had used."""
    api = StandInAPI(tmp_path / "api.sock", events)
    try:
        person = at_a_terminal(tmp_path, api, *command)
        said = []
        for line in lines_said(person):
            said.append(line.rstrip())
            if line.strip() == f"> {events[-1]['message']}":  # the last event shown: the person gives up
                person.send_signal(signal.SIGINT)
        code = person.wait(30)
    finally:
        api.close()
    assert code == 130, said
    assert said[-1] == f"cancelled; {freed} free for the next person", said
    assert [method for method, _ in api.requests] == ["POST", "GET", "DELETE", "GET"], api.requests


# `capture-agent ARGS` with a spare thread beside its main one, the spare's thread id its first line.
WITH_A_SPARE_THREAD = (
    "import sys, threading, time\n"
    "spare = threading.Thread(target=time.sleep, args=(3600,), daemon=True)\n"
    "spare.start()\n"
    "print(f'spare thread {spare.native_id}', flush=True)\n"
    "from agent.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def asleep(pid: int) -> bool:
    """Whether the process's main thread is asleep (waiting in a system call), from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "S"


def test_a_ctrl_c_that_lands_just_before_the_wait_for_the_next_event_cancels_at_once(tmp_path) -> None:
    """`verify --face` said nothing for 60 s after its Ctrl-C (seen once under load): a signal that lands after
    Python's last look for signals and before the read's wait begins is only noted, its KeyboardInterrupt raised
    once the read returns, and a person who gave up at the sensor sends no event: the command sat silent until
    its read timeout (minutes), the session holding the sensor. That window is microseconds wide; its state is
    made here for certain by a Ctrl-C that another thread of the command takes (the main thread's wait is not
    interrupted either), sent once the command waits for an event that never comes."""
    api = StandInAPI(tmp_path / "api.sock", FACE_THEN_FINGER)
    try:
        person = subprocess.Popen(
            [*prepared("sigint-default"), sys.executable, "-c", WITH_A_SPARE_THREAD, "--config",
             str(stand_in_config(tmp_path)), "verify", "--subject", "ana", "--face", "--socket", str(api.path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **DIAGNOSABLE},
        )
        said, spare = [], 0
        for line in lines_said(person):
            said.append(line.rstrip())
            if line.startswith("spare thread "):
                spare = int(line.split()[-1])
            elif line.strip() == f"> {FACE_THEN_FINGER[-1]['message']}":  # the last event: then nothing comes
                deadline = time.monotonic() + 30
                while not asleep(person.pid):
                    assert time.monotonic() < deadline, "the command never waited for the next event"
                    time.sleep(0.05)
                os.kill(spare, signal.SIGINT)
        code = person.wait(30)
    finally:
        api.close()
    assert code == 130, said
    assert said[-1] == "cancelled; the camera and the sensor are free for the next person", said
    assert [method for method, _ in api.requests] == ["POST", "GET", "DELETE", "GET"], api.requests


def test_a_face_verification_that_needs_a_finger_on_an_agent_with_no_reader_says_where_to_go(
    tmp_path, capsys, keep_process_settings
) -> None:
    """A face verification whose verifier also wanted a finger, on an agent with no fingerprint reader, ended with
    "run capture-agent verify with a finger": on that agent the command fails the same way (no reader)."""
    api = StandInAPI(tmp_path / "api.sock", [
        {"type": "challenge", "steps": ["turn_head_left"]},
        {"type": "step_up", "acr_values": "finger", "reasons": ["factor_rule"]},
        {"type": "result", "operation": "verify", "modality": "face", "subject": "ana", "decision": "step_up",
         "acr_values": "finger"},
    ], ends=True)
    try:
        code = agent_main(["--config", str(stand_in_config(tmp_path)), "verify", "--subject", "ana", "--face",
                           "--socket", str(api.path)])
    finally:
        api.close()
    said = capsys.readouterr().out.splitlines()
    assert code == 1, said
    assert said[-2] == "a finger is needed too, and this agent has no fingerprint reader ready to take it", said
    assert said[-1].startswith("fix: verify with a finger at a kiosk that has a reader"), said
    assert not any("run capture-agent verify" in line for line in said), said


def test_a_face_session_on_an_unplugged_camera_says_the_agent_reopens_it(daemon_with_module) -> None:
    """A camera pulled out between sessions: `verify --face` said "fix: plug it in", also to a person who had just
    plugged it back in, while the agent reopens it by itself a few seconds later; nothing said to try again."""
    daemon = daemon_with_module(camera=True)
    assert daemon.camera is not None

    async def unplugged() -> None:
        async with daemon.client() as kiosk:
            await daemon.devices_connected(kiosk, {"reader": True, "camera": True}, 20)
            daemon.camera.send("unplug")
            await daemon.devices_connected(kiosk, {"reader": True, "camera": False}, 20)

    asyncio.run(unplugged())
    person = cli(daemon, "identify", "--face")
    out, _ = person.communicate(timeout=60)
    assert person.returncode == 2, out
    assert out.splitlines()[-2:] == [
        "error: device camera is not connected",
        "fix: plug it in (the agent reopens it by itself within a few seconds), then try again; "
        "`capture-agent devices` shows what is found",
    ], out


# A finger capacity of 20 comparisons, computed from the calibration in force (a literal rate's capacity moves with
# every refit of its tail); faces left at identify_fpir's default.
KIOSK_PAST_CAPACITY_FPIR = finger_fpir_for(20)


@pytest.mark.verifier_settings(f"finger_identify_fpir = {KIOSK_PAST_CAPACITY_FPIR!r}", "max_views_per_request = 176")
def test_an_identification_past_the_verifiers_capacity_tells_the_installer_why_not_nobody_recognised(
    daemon_with_module, provisioned, finger_generator, verifier
) -> None:
    """Past its capacity (verifier/ranking.py: here 20 comparisons, from finger_identify_fpir; the gallery grown
    past it by ben's enrollment), an identification can name nobody, the enrolled person at the kiosk included. It
    was an empty answer: `identify` said "nobody recognised ... ask to be enrolled" to ana, enrolled, and a kiosk app
    showed "no match"; the installer never learned why. Now the terminal and the kiosk app are told the verifier's
    refusal and its fix, `identify` exits 2 (could not finish), and the attempt is in the audit trail the daemon
    delivers."""
    from agent.client import VerifierClient
    from agent.verifier_api import VerifierAPI
    from biometrics.fingerprint import extract
    from biometrics.fingerprint.iso19794_2 import encode
    from verifier.ranking import UNREACHABLE_FIX

    largest = finger_capacity(KIOSK_PAST_CAPACITY_FPIR)
    ben_views = largest - 4 + 1  # ana's 4 templates and ben's: one template past the capacity
    gallery = 4 + ben_views
    assert 4 < largest < gallery and ben_views <= 176, "ana's 4 templates within the capacity, the grown gallery past"
    daemon = daemon_with_module()
    enroll_ana(daemon)  # 4 templates

    async def grow() -> None:  # the gallery grows past the capacity while the verifier runs: ben's views
        # A small sensor's window (160 pixels square, some 300 bytes a view), so that one request holds them all.
        impression = finger_generator.finger(3).impression(0)
        ben = extract(impression.image[120:280, 70:230].copy(), impression.dpi)
        # A record holds at most 16 views of each of the 11 finger position codes: 176.
        record = encode([dataclasses.replace(ben, finger_position=i % 11) for i in range(ben_views)])
        async with VerifierClient(*provisioned) as client:
            await VerifierAPI(client).enroll("ben", [record])

    asyncio.run(grow())
    person = cli(daemon, "identify")
    said = []
    for line in lines_said(person):
        said.append(line.rstrip())
        if "Place" in line:
            daemon.zfm.send("place 0 2")  # ana's own finger
        elif "Lift" in line:
            daemon.zfm.send("lift")
    assert person.wait(30) == 2, said
    assert not any("nobody recognised" in line for line in said), said
    assert said[-2].startswith("error: verifier refused: 422 Identification past its capacity: this finger "
                               "identification (1 view) would search more templates"), said
    told = re.findall(r"\d+", said[-2].replace(",", ""))
    assert str(gallery) not in told, "the size of the device's gallery is not told to it"
    assert said[-1] == f"fix: {UNREACHABLE_FIX}", said

    async def kiosk_app() -> list[dict]:
        async with daemon.client() as kiosk:
            daemon.placements = [(0, 2)]
            return await daemon.session(kiosk, operation="identify")

    last = asyncio.run(kiosk_app())[-1]
    assert (last["type"], last["code"], last["problem"]) == ("error", "verifier_refused", "identification-unreachable")
    assert last["fix"] == UNREACHABLE_FIX and "would search more templates" in last["message"], last
    daemon.stop()  # it flushes its outbox first: every session's end reaches the verifier, none held back
    finished = [e["data"] for e in audit_until(verifier, "agent_stopping") if e["type"] == "session_finished"]
    assert [(s["operation"], s["outcome"]) for s in finished] == [("enroll", "enrolled"), ("identify", "error"),
                                                                  ("identify", "error")], finished
    assert all("would search more templates" in s["reason"] for s in finished[1:]), finished
