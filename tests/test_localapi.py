"""The local API on a unix socket: start sessions, stream prompts as SSE, cancel."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import socket
import stat

import httpx
import pytest

from agent.client import VerifierClient
from agent.localapi import LocalAPI
from agent.sessions import CaptureSession
from drivers.zfm.driver import ZfmModule
from tests.conftest import api_socket_up, start_agent_daemon


def kiosk_app_group() -> grp.struct_group:
    """A group other than ours that we may give the socket to (any group as root, else a supplementary one)."""
    mine = os.getgid()
    candidates = [g for g in grp.getgrall() if g.gr_gid != mine] if os.geteuid() == 0 else []
    candidates += [grp.getgrgid(gid) for gid in os.getgroups() if gid != mine]
    if not candidates:
        pytest.skip("this user belongs to no second group to hand the socket to")
    return candidates[0]


def sse_events(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_sessions_over_the_unix_socket_with_prompts_and_cancel(provisioned, zfm_sim, tmp_path) -> None:
    config, identity = provisioned
    socket_path = tmp_path / "run" / "api.sock"
    kiosk_group = kiosk_app_group()

    async def scenario() -> tuple[list[dict], list[dict], int, int, dict]:
        async with VerifierClient(config, identity) as client:
            with ZfmModule(zfm_sim.port) as reader:

                def make(emit):
                    def script(event):  # the person at the sensor, as in the other session tests
                        if event["type"] == "prompt" and event["code"] == "place_finger" and script.fingers:
                            zfm_sim.place(finger=0, impression=script.fingers.pop(0))
                        elif event["type"] == "prompt" and event["code"] == "lift_finger":
                            zfm_sim.lift()
                        emit(event)

                    script.fingers = list(make.fingers)
                    return CaptureSession(reader, client, emit=script, finger_timeout_s=5)

                api = LocalAPI(socket_path, make, group=kiosk_group.gr_name)
                await api.start()
                mode = stat.S_IMODE(socket_path.stat().st_mode)
                owner_gid = socket_path.stat().st_gid
                transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
                async with httpx.AsyncClient(transport=transport, base_url="http://kiosk") as kiosk:
                    make.fingers = [0, 1]
                    created = (
                        await kiosk.post(
                            "/sessions", json={"operation": "enroll", "subject": "gus", "captures": 2, "fingers": 1}
                        )
                    ).json()
                    enrolled = sse_events((await kiosk.get(created["events"])).text)
                    make.fingers = []  # nobody comes: the session waits for a finger
                    waiting = (await kiosk.post("/sessions", json={"operation": "verify", "subject": "gus"})).json()
                    busy = (await kiosk.post("/sessions", json={"operation": "identify"})).status_code
                    bad = await kiosk.post("/sessions", json={"operation": "enroll", "subject": "x", "captures": "3"})
                    assert bad.status_code == 400 and "captures" in bad.json()["error"]
                    await asyncio.sleep(0.3)
                    cancelled = (await kiosk.delete(f"/sessions/{waiting['id']}")).status_code
                    after_cancel = sse_events((await kiosk.get(waiting["events"])).text)
                    health = (await kiosk.get("/health")).json()
                await api.stop()
                return enrolled, after_cancel, busy, cancelled, {"mode": mode, "gid": owner_gid, **health}

    enrolled, after_cancel, busy, cancelled, facts = asyncio.run(scenario())
    assert facts["mode"] == 0o660 and facts["gid"] == kiosk_group.gr_gid != os.getgid()
    kinds = [e["type"] for e in enrolled]
    assert kinds.count("prompt") >= 4 and kinds[-1] == "result" and enrolled[-1]["templates"] == 2
    assert busy == 409
    assert cancelled == 202
    assert after_cancel[-1]["type"] in ("cancelled", "error")
    assert facts["busy"] is False, "a cancelled session leaves the sensor free"
    assert zfm_sim.commands.count(0x06) == 0, "nothing stored on the module"
    assert not socket_path.exists(), "the socket is removed on stop"


def test_the_daemon_serves_the_api_and_the_cli_drives_a_session(provisioned, verifier, zfm_sim, tmp_path) -> None:
    """`capture-agent run` with a reader; `capture-agent enroll` and `verify` talk to it; a person reacts."""
    import signal
    import subprocess
    import sys

    from agent.devstack import write_config_file

    config, _ = provisioned
    socket_path = tmp_path / "api.sock"
    config_file = write_config_file(
        tmp_path / "agent.toml",
        config,
        f'[reader]\nkind = "zfm"\nport = "{zfm_sim.port}"\n[api]\nsocket = "{socket_path}"\n'
        '[logging]\nlevel = "error"\n',
    )
    daemon = start_agent_daemon(config_file)
    try:
        api_socket_up(daemon, socket_path)

        def cli(*args: str, placements: list[tuple[int, int]]) -> tuple[int, str]:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "--config", str(config_file), *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            lines = []
            for line in proc.stdout:  # the person at the terminal reacts to the prompts
                lines.append(line)
                if "Place" in line:  # a re-prompt after a poor capture reuses the last placement
                    finger, impression = placements.pop(0) if len(placements) > 1 else placements[0]
                    zfm_sim.place(finger=finger, impression=impression)
                elif "Lift" in line:
                    zfm_sim.lift()
            proc.stdout.close()
            return proc.wait(60), "".join(lines)

        # An unknown subject is said before anyone is asked to touch the sensor, with the command that fixes it.
        code, out = cli("verify", "--subject", "nobody", placements=[(0, 0)])
        assert code != 0 and "Place" not in out, out
        assert "fix: enroll the subject first: capture-agent enroll --subject nobody" in out, out
        two_fingers = [(0, 0), (0, 1), (5, 0), (5, 1)]
        code, out = cli("enroll", "--subject", "hana", "--group", "staff", "--captures", "2", placements=two_fingers)
        assert code == 0 and "enrolled hana in group staff (4 templates)" in out, out
        assert "[####################] 4/4" in out, out
        # The device's first verification: the step-up asks for another finger, which the person gives.
        code, out = cli("verify", "--subject", "hana", placements=[(0, 2), (5, 2)])
        assert code == 0 and "another finger" in out and "accept" in out, out
        # Adding templates: hana verifies first, then more captures of her enrolled finger; the group stays.
        add = ("enroll", "--subject", "hana", "--add", "--fingers", "1", "--captures", "2")
        code, out = cli(*add, placements=[(0, 3), (5, 3), (5, 4)])
        assert code == 0 and "accept" in out and "enrolled hana in group staff (2 templates)" in out, out
        code, out = cli("verify", "--subject", "hana", placements=[(3, 0)])  # someone else
        assert code == 1 and "reject" in out, out
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)
    assert not socket_path.exists()
    # Every session is in the device's audit trail, delivered to the verifier (or still in the outbox).
    import sqlite3

    from agent.keystore import load_kek
    from agent.outbox import Outbox

    with sqlite3.connect(verifier.pki_dir / "verifier.sqlite") as db:
        delivered = [json.loads(body) for (body,) in db.execute("SELECT body FROM audit_events ORDER BY seq")]
    queued = Outbox(config.agent.state_dir / "outbox.sqlite", load_kek(config)).pending(100)
    sessions = [e["data"] for e in delivered + queued if e["type"] == "session_finished"]
    assert [(s["operation"], s["subject"], s["outcome"]) for s in sessions] == [
        ("verify", "nobody", "error"),
        ("enroll", "hana", "enrolled"),
        ("verify", "hana", "accept"),
        ("enroll", "hana", "enrolled"),
        ("verify", "hana", "reject"),
    ]
    assert all(set(s) == {"session_id", "operation", "outcome", "reason", "subject"} for s in sessions)


def test_a_reader_name_no_device_has_is_the_requests_mistake_a_400(provisioned, zfm_sim, tmp_path) -> None:
    """`"reader": "fingr"` (a kiosk app's typo) was answered 503 Service Unavailable, which a kiosk app takes for
    "try again later", and tried again; DELETE /prints says the same typo as a 400. A capability no device has
    is still the kiosk's state, a 503."""
    import signal

    from agent.devstack import write_config_file

    config, _ = provisioned
    socket_path = tmp_path / "api.sock"
    config_file = write_config_file(
        tmp_path / "agent.toml", config,
        f'[[device]]\nkind = "zfm"\nname = "finger"\nport = "{zfm_sim.port}"\n[api]\nsocket = "{socket_path}"\n'
        '[logging]\nlevel = "error"\n',
    )
    daemon = start_agent_daemon(config_file)
    try:
        api_socket_up(daemon, socket_path)
        transport = httpx.HTTPTransport(uds=str(socket_path))
        with httpx.Client(transport=transport, base_url="http://agent", timeout=20) as api:
            typo = api.post("/sessions", json={"operation": "identify", "reader": "fingr"})
            no_such_kind = api.post("/sessions", json={"operation": "identify", "reader": "match-on-sensor"})
            busy = api.get("/health").json()["busy"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)
    assert typo.status_code == 400, typo.text
    assert typo.json()["error"].startswith("no [[device]] is named 'fingr'") and "finger" in typo.json()["fix"]
    assert no_such_kind.status_code == 503, no_such_kind.text
    assert busy is False, "a refused request started a session"


def test_a_socket_another_daemon_serves_is_refused_and_left_to_it(tmp_path) -> None:
    """A second daemon (another state directory, the same [api] socket) unlinked the first one's socket,
    bound its own, and removed it on exit: the first daemon's kiosk app lost its door for good."""
    from agent.errors import ConfigError

    path = tmp_path / "api.sock"

    def make(emit):
        raise AssertionError("no session in this test")

    async def scenario() -> None:
        first = LocalAPI(path, make)
        await first.start()
        try:
            second = LocalAPI(path, make)
            with pytest.raises(ConfigError) as info:
                await second.start()
            await second.stop()  # what the daemon does after a failed start: must not take the socket
            assert f"served by another process (PID {os.getpid()})" in info.value.message
            assert "its own [api] socket" in info.value.fix
            _, writer = await asyncio.open_unix_connection(str(path))  # the first one still answers
            writer.close()
        finally:
            await first.stop()
        assert not path.exists(), "the first one removes its own socket"
        # A dead daemon's socket (nobody listens) is replaced; a path that is no socket is refused and kept.
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))
        stale.close()
        third = LocalAPI(path, make)
        await third.start()
        await third.stop()
        path.write_text("not a socket")
        with pytest.raises(ConfigError, match="is not a socket"):
            await LocalAPI(path, make).start()
        assert path.read_text() == "not a socket"

    asyncio.run(scenario())


def test_a_socket_path_it_cannot_listen_at_is_the_config_error_with_its_fix(tmp_path) -> None:
    """`capture-agent run` by hand with [api] socket under a file, or longer than sun_path, ended in a traceback."""
    from agent.errors import ConfigError

    def make(emit):
        raise AssertionError("no session in this test")

    a_file = tmp_path / "agent.toml"
    a_file.write_text("")
    too_long = tmp_path / ("d" * 60) / ("s" * 60 + ".sock")
    for path, said in ((a_file / "api.sock", "is a file, not a folder"), (too_long, "a unix socket's path is at most")):
        api = LocalAPI(path, make)
        with pytest.raises(ConfigError, match=said) as info:
            asyncio.run(api.start())
        assert "[api] socket" in info.value.fix
        asyncio.run(api.stop())  # what the daemon does after a failed start: quiet, whatever is at the path


def test_a_live_socket_whose_queue_is_full_is_not_taken_for_a_dead_one(tmp_path) -> None:
    """Only a refused connection proves nobody serves a socket: a daemon busy enough that its listen queue is full
    made the probe time out, and the second daemon unlinked the live socket and bound its own over it."""
    from agent.errors import ConfigError

    path = tmp_path / "api.sock"
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(str(path))
    busy.listen(0)  # never accepts: its queue fills at once
    fillers = []
    try:
        while True:  # connect until the queue is full (a non-blocking connect then says EAGAIN)
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            try:
                filler.connect(str(path))
            except BlockingIOError:
                break
        inode = path.stat().st_ino

        def make(emit):
            raise AssertionError("no session in this test")

        api = LocalAPI(path, make)
        with pytest.raises(ConfigError, match="may be served by another process") as info:
            asyncio.run(api.start())
        asyncio.run(api.stop())
        assert "its own [api] socket" in info.value.fix
        assert path.stat().st_ino == inode, "the live socket was replaced"
    finally:
        for filler in fillers:
            filler.close()
        busy.close()


def kiosk_session_events(provisioned, device, socket_path, request: dict, script=None) -> list[dict]:
    """The events a kiosk app reads of one session ``request`` over the local API on ``socket_path``, against the
    real verifier, on ``device`` (opened here, stopped after). ``script(device, event)`` plays the person at the
    sensor (and the agent's stop) as each event is emitted."""
    config, identity = provisioned

    async def scenario() -> list[dict]:
        await device.open()
        try:
            async with VerifierClient(config, identity) as client:

                def make(emit):
                    def played(event):
                        if script is not None:
                            script(device, event)
                        emit(event)

                    return CaptureSession(device, client, emit=played, finger_timeout_s=5)

                api = LocalAPI(socket_path, make)
                await api.start()
                try:
                    transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
                    async with httpx.AsyncClient(transport=transport, base_url="http://kiosk") as kiosk:
                        created = (await kiosk.post("/sessions", json=request)).json()
                        return sse_events((await kiosk.get(created["events"])).text)
                finally:
                    await api.stop()
        finally:
            device.stop()

    return asyncio.run(scenario())


def zfm_reader(zfm_sim):
    from agent.config import DeviceSection
    from agent.devices.kinds import ZfmDevice

    return ZfmDevice(DeviceSection(kind="zfm", port=zfm_sim.port), "reader")


ENROLL_TWO_CAPTURES = {"operation": "enroll", "subject": "gus", "captures": 2, "fingers": 1}


def test_a_device_the_stopping_agent_closed_mid_session_is_its_own_code_with_a_retry_fix(
    provisioned, zfm_sim, tmp_path
) -> None:
    """A session's reader closed under it by the stopping agent (DeviceStopped) reached the kiosk app as
    ``agent_error``, the code of the agent's own failures that need staff; its fix said to start the agent by
    hand. Now it is ``agent_stopping``, and the fix says to try again once the agent is back."""

    def script(device, event):  # the agent stops as the person is asked for a finger
        if event["type"] == "prompt" and event["code"] == "place_finger":
            device.stop()

    events = kiosk_session_events(provisioned, zfm_reader(zfm_sim), tmp_path / "run" / "api.sock",
                                  {"operation": "identify"}, script)
    ended = events[-1]
    assert ended["type"] == "error" and ended["code"] == "agent_stopping", events
    assert "the agent is stopping" in ended["message"], ended
    assert ended["fix"].startswith("try again once the agent is back"), ended


def one_capture_then(zfm_sim, after_first):
    """The person at the sensor for an enrollment of two captures: ``after_first(device)`` once the first is
    taken, before the next is asked for."""

    def script(device, event):
        if event["type"] == "prompt" and event["code"] == "place_finger":
            zfm_sim.place(finger=0, impression=0)
        elif event["type"] == "prompt" and event["code"] == "lift_finger":
            zfm_sim.lift()
        elif event["type"] == "progress" and event["step"] == 1:
            after_first(device)

    return script


def test_a_finger_session_between_captures_when_the_agent_stops_is_told_the_stop_not_plug_it_in(
    provisioned, zfm_sim, tmp_path
) -> None:
    """An enrollment the agent stopped between its captures: its look at the reader before the next prompt found
    it not connected and ended with device_not_connected, "plug it in", of a reader plugged in all along (the
    stop had closed it). Now that look tells the stop: agent_stopping, try again once the agent is back."""
    events = kiosk_session_events(provisioned, zfm_reader(zfm_sim), tmp_path / "run" / "api.sock",
                                  ENROLL_TWO_CAPTURES, one_capture_then(zfm_sim, lambda device: device.stop()))
    assert {"type": "progress", "step": 1, "total": 2} in events, events  # the first capture was taken
    ended = events[-1]
    assert ended["type"] == "error" and ended["code"] == "agent_stopping", events  # was device_not_connected
    assert "the agent is stopping" in ended["message"], ended
    assert ended["fix"].startswith("try again once the agent is back"), ended
    assert [e["code"] for e in events if e["type"] == "prompt"].count("place_finger") == 1, events  # none after


def test_a_request_only_the_driver_can_refuse_reaches_the_kiosk_app_as_device_cannot(
    provisioned, fprint_socket_dir, tmp_path
) -> None:
    """An image session on libfprint's match-on-sensor virtual_device: libfprint refuses the capture
    (NOT_SUPPORTED), a usage error, and the kiosk app was told device_error, "a reader's fault", of a reader that
    works. It is device_cannot, as a request the device refuses itself, with a fix that is no replug."""
    from agent.config import DeviceSection
    from agent.devices.kinds import FprintDevice

    section = DeviceSection(kind="fprint", selector="virtual_device")
    device = FprintDevice(section, "sensor", env={"FP_VIRTUAL_DEVICE": str(fprint_socket_dir / "device.sock")})
    ended = kiosk_session_events(provisioned, device, tmp_path / "run" / "api.sock", {"operation": "identify"})[-1]
    assert ended["type"] == "error" and ended["code"] == "device_cannot", ended  # was device_error
    assert "refused the request" in ended["message"] and "unplug and replug" not in ended["fix"], ended


def test_a_reader_pulled_out_before_the_agent_stops_is_not_told_as_the_stop(provisioned, zfm_sim, tmp_path) -> None:
    """An enrollment between its captures: the reader is pulled out (the supervisor sees it go: went_away), then
    the agent stops. The session's look before the next prompt told the stop (agent_stopping: "try again once the
    agent is back"), of a reader that is not there: the unplug came first, and stays what it is told
    (device_not_connected), as a capture cut short by an unplug before a stop stays device_unplugged."""

    def pulled_out_then_stopped(device) -> None:
        device.went_away()  # as the supervisor's look does when the port is gone
        device.stop()

    events = kiosk_session_events(provisioned, zfm_reader(zfm_sim), tmp_path / "run" / "api.sock",
                                  ENROLL_TWO_CAPTURES, one_capture_then(zfm_sim, pulled_out_then_stopped))
    assert {"type": "progress", "step": 1, "total": 2} in events, events  # the first capture was taken
    ended = events[-1]
    assert ended["type"] == "error" and ended["code"] == "device_not_connected", events  # was agent_stopping


def test_a_missing_factor_is_told_to_the_kiosk_as_an_enrollment_it_can_start(provisioned, verifier, zfm_sim, tmp_path):
    """A finger verification of a subject whose rule needs a face they never enrolled ends with the verifier's
    403 factor-not-enrolled. Its fix ("enroll a face with this enrollment_token: ...") is the verifier's word to
    the agent, and reached the kiosk app and the terminal as it was: neither can hand over that token. The event
    now says the enrollment they can start, which verifies the person again and earns its own."""
    from tests.test_verifier_operator_cli import cli

    placements = iter([(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (1, 2)])  # enroll two fingers, then verify (+step-up)

    def person(device, event):
        if event["type"] == "prompt" and event["code"] == "place_finger":
            finger, impression = next(placements)
            zfm_sim.place(finger=finger, impression=impression)
        elif event["type"] == "prompt" and event["code"] == "lift_finger":
            zfm_sim.lift()

    enroll = {"operation": "enroll", "subject": "gus", "captures": 2, "fingers": 2}
    enrolled = kiosk_session_events(provisioned, zfm_reader(zfm_sim), tmp_path / "a.sock", enroll, person)
    assert enrolled[-1]["type"] == "result", enrolled[-1]
    rule = cli("subject", "require", "--pki", str(verifier.pki_dir), "gus", "--factors", "finger,face")
    assert rule.returncode == 0, rule.stderr
    verified = kiosk_session_events(provisioned, zfm_reader(zfm_sim), tmp_path / "b.sock",
                                    {"operation": "verify", "subject": "gus"}, person)
    end = verified[-1]
    assert (end["type"], end.get("problem")) == ("error", "factor-not-enrolled"), verified
    assert "enrollment_token" not in end["fix"], end["fix"]
    assert "capture-agent enroll --face --subject gus --add" in end["fix"], end["fix"]
    assert '"modality": "face", "verify_first": true' in end["fix"], end["fix"]
