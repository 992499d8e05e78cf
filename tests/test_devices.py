"""One device model: several devices in one daemon, each reached only through its owner thread.

The acceptance scenario: a simulated serial module and a simulated camera run
under one supervisor; unplugging either during a capture gives that capture a
typed error and an audit event, never touches the other device, and never
reaches a driver from two threads at once. The serial driver is instrumented
to catch concurrent entry (the old design closed and reopened the module from
the watch task's thread while a session's thread was inside a capture).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.config import DeviceSection, parse_config
from agent.devices.capabilities import CAMERA, FINGERPRINT_IMAGE, MATCH_ON_SENSOR
from agent.devices.errors import DeviceUnplugged, NoDeviceFor
from agent.devices.kinds import Device, make_device
from agent.devices.supervisor import DeviceSupervisor, configured_devices
from agent.errors import ConfigError

DRIVER_CALLS = ("open", "close", "capture", "wait_for_finger", "wait_for_lift", "download_image")


class ConcurrencyDetector:
    """Wraps a driver object's methods: records any entry while another thread is inside."""

    def __init__(self, target: Any, methods: tuple[str, ...] = DRIVER_CALLS) -> None:
        self._lock = threading.Lock()
        self._inside: dict[int, str] = {}
        self.overlaps: list[tuple[str, str]] = []
        self.threads: set[int] = set()
        for name in methods:
            setattr(target, name, self._wrap(name, getattr(target, name)))

    def _wrap(self, name: str, method: Any) -> Any:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            me = threading.get_ident()
            with self._lock:
                others = [m for t, m in self._inside.items() if t != me]
                if others:
                    self.overlaps.append((name, others[0]))
                self._inside.setdefault(me, name)
                self.threads.add(me)
            try:
                return method(*args, **kwargs)
            finally:
                with self._lock:
                    if self._inside.get(me) == name:
                        del self._inside[me]

        return wrapper


def test_the_detector_catches_a_close_from_another_thread_during_a_capture(zfm_sim) -> None:
    """Not vacuous: the old design's pattern (close from the watch thread during a capture) is caught."""
    from drivers.zfm.driver import ZfmModule
    from drivers.zfm.errors import ModuleError

    module = ZfmModule(zfm_sim.port)
    detector = ConcurrencyDetector(module)
    module.open()
    def waiting() -> None:
        with contextlib.suppress(ModuleError):  # the port closes under it
            module.wait_for_finger(2)

    capture = threading.Thread(target=waiting)
    capture.start()
    time.sleep(0.3)
    module.close()
    capture.join(5)
    assert detector.overlaps and detector.overlaps[0][0] == "close"


def test_device_list_config_and_the_old_reader_section() -> None:
    config = parse_config(
        {
            "reader": {"kind": "zfm", "port": "/dev/ttyUSB0"},
            "device": [
                {"kind": "camera", "name": "door", "source": "http://127.0.0.1:8080/stream.mjpg", "fps": 15},
                {"kind": "fprint", "selector": "uru4000"},
            ],
        }
    )
    named = configured_devices(config)
    assert [(n, s.kind) for n, s in named] == [("reader", "zfm"), ("door", "camera"), ("fprint0", "fprint")]
    assert named[0][1].port == "/dev/ttyUSB0"
    with pytest.raises(ConfigError, match="keys of another kind: port") as caught:
        parse_config({"device": [{"kind": "camera", "source": "0", "port": "/dev/ttyUSB0"}]})
    assert "source, width, height, fps" in caught.value.fix
    with pytest.raises(ConfigError, match="needs port"):
        parse_config({"device": [{"kind": "zfm"}]})
    with pytest.raises(ConfigError, match="use one of"):
        parse_config({"device": [{"kind": "webcam"}]})


def test_allow_basic_over_http_is_a_camera_option_off_by_default_and_reaches_the_driver() -> None:
    from agent.devices.kinds import CameraDevice

    url = "http://127.0.0.1:8080/stream.mjpg"
    (plain,) = parse_config({"device": [{"kind": "camera", "source": url}]}).device
    (opted,) = parse_config({"device": [{"kind": "camera", "source": url, "allow_basic_over_http": True}]}).device
    assert not plain.allow_basic_over_http and opted.allow_basic_over_http
    with made(CameraDevice(opted, "cam")) as device:
        assert device.camera.allow_basic_over_http
    with made(CameraDevice(plain, "cam")) as device:
        assert not device.camera.allow_basic_over_http
    with pytest.raises(ConfigError, match="keys of another kind: allow_basic_over_http"):
        parse_config({"device": [{"kind": "zfm", "port": "/dev/ttyUSB0", "allow_basic_over_http": True}]})
    with pytest.raises(ConfigError):
        parse_config({"device": [{"kind": "camera", "source": url, "allow_basic_over_http": "yes"}]})


def test_ca_file_is_a_camera_option_an_absolute_path_that_reaches_the_driver() -> None:
    from agent.devices.kinds import CameraDevice

    url = "https://cam.lan/stream.mjpg"
    (section,) = parse_config({"device": [{"kind": "camera", "source": url, "ca_file": "/etc/cam-ca.pem"}]}).device
    with made(CameraDevice(section, "cam")) as device:
        assert device.camera.ca_file == "/etc/cam-ca.pem"
    with pytest.raises(ConfigError, match="ca_file"):
        parse_config({"device": [{"kind": "camera", "source": url, "ca_file": "cam-ca.pem"}]})


@contextlib.contextmanager
def made(device: Device) -> Iterator[Device]:
    """A device made (its owner thread started) and never opened, stopped after: its thread ends."""
    try:
        yield device
    finally:
        device.stop()


def test_a_device_the_config_refuses_leaves_no_owner_thread_behind() -> None:
    """A kind's driver refusing its section (a camera URL with an unencoded "/" in the password, here) was made
    after the device's owner thread had started, and that thread waited for a job for the rest of the process:
    one per refused device, each time a supervisor was made (the daemon's start, `capture-agent devices`)."""
    refused = "http://admin:Pa55/w0rd@127.0.0.1:9/video.mjpg"
    before = {t.ident for t in threading.enumerate()}
    supervisor = DeviceSupervisor([("door", DeviceSection(kind="camera", source=refused))], lambda kind, data: None)
    assert supervisor.devices == [] and [u.name for u in supervisor.unmade] == ["door"]
    assert [t.name for t in threading.enumerate() if t.ident not in before] == []


def _events(recorded: list[tuple[str, dict]], device: str) -> list[str]:
    return [kind for kind, data in recorded if data.get("device") == device]


async def _until(predicate, timeout_s: float = 10.0, describe=lambda: "") -> None:
    """Poll ``predicate``; on timeout fail with ``describe()`` (a simulator's state, say), to tell why."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"condition not reached in time; {describe()}"
        await asyncio.sleep(0.05)


def test_serial_module_and_camera_in_one_supervisor(zfm_sim, camera_sim) -> None:
    recorded: list[tuple[str, dict]] = []
    sections = [
        ("finger", DeviceSection(kind="zfm", port=zfm_sim.port, check_interval_s=0.1)),
        ("face", DeviceSection(kind="camera", source=camera_sim.url, check_interval_s=0.1)),
    ]

    async def scenario() -> ConcurrencyDetector:
        supervisor = DeviceSupervisor(sections, lambda kind, data: recorded.append((kind, data)))
        finger, face = supervisor.devices
        detector = ConcurrencyDetector(finger.module)
        await supervisor.open_all()
        supervisor.start()
        try:
            assert finger.connected and face.connected
            assert supervisor.pick(FINGERPRINT_IMAGE) is finger and supervisor.pick(CAMERA) is face
            with pytest.raises(NoDeviceFor, match="match-on-sensor"):
                supervisor.pick(MATCH_ON_SENSOR)

            # 1. the serial module is pulled out while a session waits for a finger
            frames_before = face.wait_frame(timeout_s=5).seq
            capture = asyncio.create_task(asyncio.to_thread(finger.wait_for_finger, 20))
            await asyncio.sleep(0.3)
            zfm_sim.unplug()
            with pytest.raises(DeviceUnplugged, match="plug it back in"):
                await asyncio.wait_for(capture, 10)
            await _until(lambda: not finger.connected)
            assert face.connected and face.wait_frame(after=frames_before, timeout_s=5).seq > frames_before
            zfm_sim.replug()
            await _until(lambda: finger.connected, 20, describe=zfm_sim.state)
            zfm_sim.place(finger=2)
            await asyncio.to_thread(finger.wait_for_finger, 5)
            image = await asyncio.to_thread(finger.download_image)
            assert image.shape == (zfm_sim.profile.image_height, zfm_sim.profile.image_width)
            zfm_sim.lift()

            # 2. the camera is pulled out while a session waits for a frame
            seen = face.wait_frame(timeout_s=5).seq
            frame_wait = asyncio.create_task(asyncio.to_thread(face.wait_frame, seen + 10_000, 20))
            await asyncio.sleep(0.2)
            camera_sim.unplug()
            with pytest.raises(DeviceUnplugged):
                await asyncio.wait_for(frame_wait, 10)
            await _until(lambda: not face.connected)
            zfm_sim.place(finger=3)  # the serial module works all along
            await asyncio.to_thread(finger.wait_for_finger, 5)
            assert finger.connected
            camera_sim.replug()
            await _until(lambda: face.connected, 15)
            assert face.wait_frame(timeout_s=5).pixels.shape == (240, 320, 3)
        finally:
            await supervisor.close()
        return detector

    detector = asyncio.run(scenario())
    assert detector.overlaps == [], "a driver was entered from two threads at once"
    assert len(detector.threads) == 1, "every serial driver call ran on the device's one owner thread"
    assert _events(recorded, "finger") == ["device_plugged", "device_unplugged", "device_plugged"]
    assert _events(recorded, "face") == ["device_plugged", "device_unplugged", "device_plugged"]


def test_a_flapping_device_is_reopened_ever_later_and_a_stable_one_at_once(camera_sim, monkeypatch) -> None:
    """A camera pulled out right after each reopen waits 2**n intervals after its n-th flap; one that stayed, one.

    Each flap is two audit events: undamped, a link that breaks every few seconds fills the outbox.
    A long absence (failed reopens, growing backoff) does not carry over into the flaps that follow it.
    The flap window is widened here (30 intervals, 3 s) so that a slow CI machine cannot turn a flap
    into a stay.
    """
    from agent.devices import supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "FLAP_INTERVALS", 30)
    interval = 0.1
    recorded: list[tuple[str, dict]] = []
    section = DeviceSection(kind="camera", source=camera_sim.url, check_interval_s=interval)

    def unplugged() -> list[dict]:
        return [data for kind, data in recorded if kind == "device_unplugged"]

    def reopens() -> int:
        return sum(1 for kind, _ in recorded if kind == "device_plugged") - 1

    async def scenario() -> None:
        supervisor = DeviceSupervisor([("face", section)], lambda k, d: recorded.append((k, d)))
        (face,) = supervisor.devices
        await supervisor.open_all()
        supervisor.start()
        try:
            camera_sim.unplug()  # right after the first open: a flap
            await _until(lambda: len(unplugged()) == 1)
            await asyncio.sleep(2.0)  # away a while: refused reopens grow the backoff (0.4, 0.8, 1.6...)
            camera_sim.replug()
            await _until(lambda: face.connected, 20)
            for flap in range(1, 4):  # pulled out as soon as it is back
                camera_sim.unplug()
                await _until(lambda n=flap: len(unplugged()) == n + 1)
                camera_sim.replug()
                await _until(lambda: face.connected, 20)
            await asyncio.sleep(30 * interval * 1.5)  # then it stays
            camera_sim.unplug()
            await _until(lambda: len(unplugged()) == 5)
        finally:
            await supervisor.close()

    asyncio.run(scenario())
    assert reopens() == 4, "reopened after each replug, once each"
    waits = [data["reopen_in_s"] for data in unplugged()]
    assert waits == [0.2, 0.4, 0.8, 1.6, interval], waits


MISSING_LIBFPRINT_SCRIPT = """
import asyncio, json, sys
from agent.config import DeviceSection
from agent.devices.supervisor import DeviceSupervisor

recorded = []
sections = [("usb", DeviceSection(kind="fprint")), ("finger", DeviceSection(kind="zfm", port=sys.argv[1]))]

async def main():
    supervisor = DeviceSupervisor(sections, lambda kind, data: recorded.append((kind, data)))
    await supervisor.open_all()
    health = supervisor.health()
    await supervisor.close()
    print(json.dumps({"recorded": recorded, "health": health}))

asyncio.run(main())
"""


def test_a_missing_libfprint_leaves_the_other_devices_running(zfm_sim, tmp_path) -> None:
    """PyGObject hidden from a real agent process: the serial module opens, the USB reader is a fault with the fix."""
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "gi").mkdir()
    (tmp_path / "gi" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    out = subprocess.run(
        [sys.executable, "-c", MISSING_LIBFPRINT_SCRIPT, zfm_sim.port],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    ).stdout
    result = json.loads(out.splitlines()[-1])
    devices = result["health"]["devices"]
    assert [(d["name"], d["connected"], d["state"]) for d in devices] == [
        ("usb", False, "not_set_up"), ("finger", True, "connected")
    ]
    fault = next(data for kind, data in result["recorded"] if kind == "device_fault")
    assert fault["device"] == "usb" and "apt-get install libfprint-2-2" in fault["fix"]


def test_serial_module_found_at_its_baud_raised_and_remembered(tmp_path) -> None:
    """A module left at 9600 by another tool: found, raised to 115200, and found there first after a restart."""
    import json

    from simulators.zfm import SimulatedModule

    recorded: list[tuple[str, dict]] = []
    with SimulatedModule("r307", link=tmp_path / "ttyZFM0", baud=9600) as sim:
        sections = [("finger", DeviceSection(kind="zfm", port=sim.port))]

        async def run_once() -> dict:
            supervisor = DeviceSupervisor(sections, lambda k, d: recorded.append((k, d)), state_dir=tmp_path / "state")
            await supervisor.open_all()
            try:
                return supervisor.devices[0].status()
            finally:
                await supervisor.close()

        first = asyncio.run(run_once())
        assert (first["found_at"], first["baud"], sim.baud) == (9600, 115200, 115200)
        memory = json.loads((tmp_path / "state" / "devices" / "finger.json").read_text())
        assert memory == {"port": sim.port, "baud": 115200}
        sim.unplug()  # power-cycled: the module keeps its speed in flash
        sim.replug()
        commands_before = len(sim.commands)
        again = asyncio.run(run_once())
        assert (again["found_at"], again["baud"]) == (115200, 115200)
        assert sim.commands[commands_before] == 0x13, "the remembered speed answered the first VerifyPwd"


def test_the_remembered_speed_is_kept_0600_in_a_0700_folder_under_umask_022(tmp_path) -> None:
    """A daemon started by hand (umask 022, no unit's UMask=0077) wrote devices/NAME.json 0644 in a 0755
    folder, and `doctor` then failed the state directory on the daemon's own file."""
    import stat

    from simulators.zfm import SimulatedModule

    mask = os.umask(0o022)
    try:
        with SimulatedModule("r307", link=tmp_path / "ttyZFM0", baud=9600) as sim:
            supervisor = DeviceSupervisor(
                [("finger", DeviceSection(kind="zfm", port=sim.port))], lambda k, d: None, state_dir=tmp_path / "state"
            )

            async def run_once() -> None:
                await supervisor.open_all()
                await supervisor.close()

            asyncio.run(run_once())
    finally:
        os.umask(mask)
    memory = tmp_path / "state" / "devices" / "finger.json"
    assert stat.S_IMODE(memory.stat().st_mode) == 0o600
    assert stat.S_IMODE(memory.parent.stat().st_mode) == 0o700


def test_lift_is_asked_before_the_image_crosses_the_line(tmp_path) -> None:
    """At real line speed: "lift" comes right after GenImg, before UpImage starts the 3.5 s transfer."""
    from agent.sessions import CaptureSession
    from drivers.zfm.constants import Command
    from simulators.fingers import FingerGenerator
    from simulators.zfm import SimulatedModule

    sim = SimulatedModule("r307", link=tmp_path / "ttyZFM0", finger_source=FingerGenerator(11).image, real_speed=True)
    seen_at_lift: list[int] = []

    def person(event: dict) -> None:
        if event["type"] != "prompt":
            return
        if event["code"] == "place_finger":
            sim.place(finger=1)
        elif event["code"] == "lift_finger":
            seen_at_lift.append(sim.commands[-1])
            sim.lift()

    async def scenario() -> tuple[bytes, float, dict]:
        supervisor = DeviceSupervisor([("finger", DeviceSection(kind="zfm", port=sim.port))], lambda k, d: None)
        await supervisor.open_all()
        try:
            device = supervisor.pick(FINGERPRINT_IMAGE)
            session = CaptureSession(device, client=None, emit=person)  # capture() needs no verifier
            return await session.capture(), session.timings.capture_ms, device.status()
        finally:
            await supervisor.close()

    with sim:
        record, capture_ms, status = asyncio.run(scenario())
    assert status["baud"] == 115200 and sim.baud == 115200
    assert seen_at_lift and seen_at_lift[0] == Command.GEN_IMG, "lift was asked only after the transfer"
    assert Command.UP_IMAGE in sim.commands and record
    assert capture_ms > 0


def test_usb_reader_unplugged_during_a_capture_then_reopened(fprint_socket_dir, synthetic_print) -> None:
    """libfprint's virtual_image reader under the supervisor: typed error, audit events, reopened, captures again."""
    from agent.devices.kinds import FprintDevice
    from simulators.fprint import VirtualImageFeeder

    path = fprint_socket_dir / "image.sock"
    recorded: list[tuple[str, dict]] = []
    section = DeviceSection(kind="fprint", selector="virtual_image", check_interval_s=0.1)

    def factory(section: DeviceSection, name: str) -> FprintDevice:
        return FprintDevice(section, name, env={"FP_VIRTUAL_IMAGE": str(path)})

    async def scenario() -> None:
        supervisor = DeviceSupervisor([("usb", section)], lambda k, d: recorded.append((k, d)), factory=factory)
        (usb,) = supervisor.devices
        await supervisor.open_all()
        supervisor.start()
        feeder = VirtualImageFeeder(path)
        try:
            assert usb.connected and supervisor.pick(FINGERPRINT_IMAGE) is usb and usb.resolution_dpi == 500
            capture = asyncio.create_task(asyncio.to_thread(usb.wait_for_finger, 20))
            await asyncio.sleep(0.3)
            feeder.unplug()
            with pytest.raises(DeviceUnplugged):
                await asyncio.wait_for(capture, 10)
            feeder.close()
            await _until(lambda: _events(recorded, "usb").count("device_plugged") == 2)
            sent = synthetic_print(4, shape=(288, 256)).image
            def place_when_waiting() -> None:
                deadline = time.monotonic() + 10
                while not usb.reader.finger_needed() and time.monotonic() < deadline:
                    time.sleep(0.01)
                feeder.image(sent)

            threading.Thread(target=place_when_waiting, daemon=True).start()
            await asyncio.to_thread(usb.wait_for_finger, 10)
            assert (await asyncio.to_thread(usb.download_image)).tobytes() == sent.tobytes()
        finally:
            feeder.close()
            await supervisor.close()

    asyncio.run(scenario())
    assert _events(recorded, "usb") == ["device_plugged", "device_unplugged", "device_plugged"]
    assert recorded[0][1]["driver"] == "virtual_image"


def test_local_api_with_only_a_camera_refuses_a_fingerprint_session_naming_the_fix(camera_sim, tmp_path) -> None:
    import httpx

    from agent.daemon import _fingerprint_session
    from agent.localapi import LocalAPI

    socket_path = tmp_path / "api.sock"

    async def scenario() -> httpx.Response:
        face = DeviceSection(kind="camera", source=camera_sim.url)
        supervisor = DeviceSupervisor([("face", face)], lambda k, d: None)
        await supervisor.open_all()
        api = LocalAPI(socket_path, lambda emit: _fingerprint_session(supervisor, None, emit), record=lambda k, d: None)
        await api.start()
        try:
            transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
            async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
                return await client.post("/sessions", json={"operation": "verify", "subject": "alice"})
        finally:
            await api.stop()
            await supervisor.close()

    answer = asyncio.run(scenario())
    assert answer.status_code == 503
    assert "no configured device can do fingerprint-image" in answer.json()["error"]
    assert "face (camera)" in answer.json()["error"] and 'kind = "zfm" or "fprint"' in answer.json()["fix"]


def test_a_serial_port_carrying_noise_is_a_fault_not_a_hang(zfm_sim) -> None:
    """Something else on the module's port (a GPS, a console) sends bytes all the time: opening it ends
    with an audited fault, and closing the supervisor stops the device's owner thread."""
    from simulators.zfm import Fault

    recorded: list[tuple[str, dict]] = []
    zfm_sim.inject(Fault.NOISE)  # no reply to the first command, and noise for good

    async def scenario() -> tuple[bool, Any]:
        supervisor = DeviceSupervisor(
            [("reader", DeviceSection(kind="zfm", port=zfm_sim.port, check_interval_s=0.1))],
            lambda kind, data: recorded.append((kind, data)),
        )
        owner = supervisor.devices[0].owner
        try:
            await asyncio.wait_for(supervisor.open_all(), 40)  # the baud search: about 8 s
            returned = True
        except TimeoutError:
            returned = False
            zfm_sim.quiet()  # a hang: end it, so the owner thread can be stopped
            zfm_sim.silence()
        await supervisor.close()
        return returned, owner

    returned, owner = asyncio.run(scenario())
    assert returned, "open_all was still running on a noisy line"
    faults = [data for kind, data in recorded if kind == "device_fault"]
    assert faults and "no packet" in str(faults[0]), recorded
    assert not owner.alive


def _opened_once(config) -> list[tuple[str, dict]]:
    """The audit events (kind, data) a supervisor records opening ``config``'s devices once, then closing them."""
    recorded: list[tuple[str, dict]] = []

    async def scenario() -> None:
        supervisor = DeviceSupervisor(configured_devices(config), lambda kind, data: recorded.append((kind, data)))
        try:
            await supervisor.open_all()
        finally:
            await supervisor.close()

    asyncio.run(scenario())
    return recorded


def test_a_device_fault_fix_names_the_config_entry_the_device_comes_from(tmp_path) -> None:
    """A missing port of a [[device]] is not fixed in [reader]; the old [reader] keeps its own name."""
    config = parse_config(
        {
            "reader": {"kind": "zfm", "port": str(tmp_path / "ttyOLD")},
            "device": [
                {"kind": "zfm", "name": "door-finger", "port": str(tmp_path / "ttyDOOR")},
                {"kind": "zfm", "port": str(tmp_path / "ttyANON")},
            ],
        }
    )
    recorded = _opened_once(config)
    fixes = {data["device"]: data["fix"] for kind, data in recorded if kind == "device_fault"}
    assert fixes.keys() == {"reader", "door-finger", "zfm2"}, recorded
    assert "[reader] port" in fixes["reader"]
    assert 'port in [[device]] name = "door-finger"' in fixes["door-finger"] and "[reader]" not in fixes["door-finger"]
    assert 'port in the [[device]] with kind = "zfm" (known as zfm2)' in fixes["zfm2"]


def test_a_camera_node_that_does_not_exist_says_so_and_where_it_is_set(fake_dev) -> None:
    """A mistyped /dev/videoN was "gives no frame", "check it is plugged in or reachable", naming no entry; and
    `capture-agent devices --camera` listed it as [ok  ]. (A node of the folder standing in for /dev: a path
    elsewhere is a video file, said missing in a file's words.)"""
    from drivers.discovery import cameras

    missing = str(fake_dev.root / "video9")
    config = parse_config({"device": [{"kind": "camera", "name": "door", "source": missing}]})
    recorded = _opened_once(config)
    fault = next(data for kind, data in recorded if kind == "device_fault")
    assert fault["error"] == f"the camera {missing} does not exist"
    assert 'source in [[device]] name = "door"' in fault["fix"] and "ls /dev/video*" in fault["fix"]
    found = next(f for f in cameras([missing], max_index=0) if f.path == missing)
    assert not found.accessible and found.description == "does not exist" and "ls /dev/video*" in found.fix


def _absent_video_index() -> int:
    """An index N whose /dev/videoN this machine does not have, chosen at run time."""
    return next(n for n in range(64, 4096) if not os.path.exists(f"/dev/video{n}"))


def test_a_missing_camera_is_one_typed_error_that_discovery_the_device_and_doctor_show(fake_dev) -> None:
    """Discovery, the agent's camera device and doctor each checked for a missing node themselves, with three
    messages and fixes. Now CameraSource.open raises CameraNodeMissingError and each caller shows it: the same
    message and the same fix (the cable, `ls /dev/video*`, udev), the device's pointed at its own entry."""
    from agent.doctor import run_doctor
    from drivers.camera.camera import Camera
    from drivers.camera.errors import CameraNodeMissingError, CameraUnavailable
    from drivers.camera.source import CameraSource
    from drivers.discovery import cameras

    missing = str(fake_dev.root / "video9")  # a node of the folder standing in for /dev
    with pytest.raises(CameraNodeMissingError) as caught:
        CameraSource.parse(missing).open()
    error = caught.value
    assert isinstance(error, CameraUnavailable) and error.path == missing
    assert error.args[0] == f"the camera {missing} does not exist"
    assert "USB cable" in error.fix and "ls /dev/video*" in error.fix and "udevadm monitor" in error.fix
    # the driver's owner thread keeps it as the reason the open failed
    camera = Camera(missing, reconnect=False)
    assert not camera.open_once(timeout_s=5) and isinstance(camera.open_error, CameraNodeMissingError)
    # discovery (`capture-agent devices --camera`)
    found = next(f for f in cameras([missing], max_index=0) if f.path == missing)
    assert (found.accessible, found.description, found.fix) == (False, "does not exist", error.fix)
    # the agent's device, audited by the supervisor
    config = parse_config({"device": [{"kind": "camera", "name": "door", "source": missing}]})
    fault = next(data for kind, data in _opened_once(config) if kind == "device_fault")
    assert fault["error"] == error.args[0]
    assert fault["fix"] == error.fix.replace("correct the path", 'correct source in [[device]] name = "door"')
    # doctor, which only looks (the daemon may hold the camera)
    door = next(c for c in run_doctor(config).checks if c.name == "device door")
    assert door.ok is False and door.detail == f"camera: {error.args[0]}" and door.fix.startswith(error.fix + ";")


def test_a_missing_camera_given_as_an_index_is_named_by_its_node(tmp_path) -> None:
    """``source = "N"`` opens /dev/videoN: doctor looked for a file named N in its working directory, and
    discovery and the device said "N does not exist" however many /dev/video nodes there were."""
    from agent.doctor import run_doctor
    from drivers.camera.errors import CameraNodeMissingError
    from drivers.camera.source import CameraSource
    from drivers.discovery import cameras

    index = _absent_video_index()
    node = f"/dev/video{index}"
    (tmp_path / str(index)).touch()  # a file of that name where doctor runs: not the camera
    with contextlib.chdir(tmp_path):
        with pytest.raises(CameraNodeMissingError, match=f"the camera {node} does not exist"):
            CameraSource.parse(str(index)).open()
        config = parse_config({"device": [{"kind": "camera", "name": "door", "source": str(index)}]})
        door = next(c for c in run_doctor(config).checks if c.name == "device door")
        assert door.ok is False and f"{node} does not exist" in door.detail, door
        found = next(f for f in cameras([str(index)], max_index=0) if f.path == str(index))
        assert not found.accessible and found.description == "does not exist", found
        fault = next(data for kind, data in _opened_once(config) if kind == "device_fault")
        assert fault["error"] == f"the camera {node} does not exist", fault


UNCLEAR_CREDENTIALS_URL = "http://user:1234/5678@127.0.0.1/x"  # a password with an unencoded /: 1234/5678


def test_a_camera_url_with_unclear_credentials_is_a_finding_a_fault_and_a_doctor_failure() -> None:
    """``cameras()`` named a URL finding with ``CameraSource.parse(source).redacted``, unguarded: the URL the
    driver refuses (CameraSourceCredentials) was a traceback from `capture-agent devices --camera`; and doctor,
    which does not reach a stream, passed it while the daemon refused it. Each shows the refusal and its fix,
    never the password."""
    from agent.doctor import run_doctor
    from drivers.camera.source import CameraSource, CameraSourceCredentials
    from drivers.discovery import cameras

    with pytest.raises(CameraSourceCredentials) as caught:
        CameraSource.parse(UNCLEAR_CREDENTIALS_URL)
    error = caught.value
    (found,) = cameras([UNCLEAR_CREDENTIALS_URL], max_index=0)
    assert found.path == "http://***@127.0.0.1/x"
    assert found.description == f"not a camera source: {error.args[0]}" and found.fix == error.fix
    assert not found.capabilities
    config = parse_config({"device": [{"kind": "camera", "name": "door", "source": UNCLEAR_CREDENTIALS_URL}]})
    recorded = _opened_once(config)
    fault = next(data for kind, data in recorded if kind == "device_fault")
    assert (fault["error"], fault["fix"]) == (error.args[0], error.fix)
    door = next(c for c in run_doctor(config).checks if c.name == "device door")
    assert door.ok is False and door.detail == f"camera: {error.args[0]}" and door.fix.startswith(error.fix + ";")
    shown = repr([found, recorded, door])
    assert "5678" not in shown and "1234" not in shown, shown


def test_a_watch_whose_look_fails_keeps_watching(zfm_sim) -> None:
    """The audit trail refuses the unplug report once (a full disk): the device is still seen coming back."""
    recorded: list[tuple[str, dict]] = []
    refusals = [RuntimeError("disk full")]

    def record(kind: str, data: dict) -> None:
        if kind == "device_unplugged" and refusals:
            raise refusals.pop()
        recorded.append((kind, data))

    async def scenario() -> None:
        supervisor = DeviceSupervisor(
            [("finger", DeviceSection(kind="zfm", port=zfm_sim.port, check_interval_s=0.1))], record
        )
        finger = supervisor.devices[0]
        await supervisor.open_all()
        supervisor.start()
        try:
            zfm_sim.unplug()
            await _until(lambda: not refusals and not finger.connected)
            zfm_sim.replug()
            await _until(lambda: finger.connected, 20, describe=zfm_sim.state)
        finally:
            await supervisor.close()

    asyncio.run(scenario())
    assert _events(recorded, "finger") == ["device_plugged", "device_plugged"]  # the refused report is the gap


@pytest.mark.parametrize(("capability", "name", "said", "fix"), [
    (FINGERPRINT_IMAGE, "fingr", "no [[device]] is named 'fingr'", "configured devices (finger, face)"),
    (FINGERPRINT_IMAGE, "face", "device face cannot do fingerprint-image", 'kind = "zfm" or "fprint"'),
    (MATCH_ON_SENSOR, "", "no configured device can do match-on-sensor", 'kind = "fprint" with a match-on-sensor'),
])
def test_a_reader_asked_for_that_is_not_there_is_named_as_asked(capability: str, name: str, said: str,
                                                               fix: str) -> None:
    """A mistyped `--reader` name was told "no configured device can do fingerprint-image" beside a reader
    that could, and a match-on-sensor one to add a "zfm" (which never matches on the sensor)."""
    sections = [("finger", DeviceSection(kind="zfm", port="/dev/ttyUSB0")),
                ("face", DeviceSection(kind="camera", source="/dev/video0"))]
    supervisor = DeviceSupervisor(sections, lambda kind, data: None)  # never opened: picking reads the config
    try:
        with pytest.raises(NoDeviceFor) as refused:
            supervisor.pick(capability, name)
        assert said in refused.value.message and fix in refused.value.fix, (refused.value.message, refused.value.fix)
        assert supervisor.pick(FINGERPRINT_IMAGE, "finger").name == "finger"
    finally:
        asyncio.run(supervisor.close())


def test_a_device_asked_after_the_supervisor_closed_it_refuses_at_once(zfm_sim) -> None:
    """A session worker that outlived the daemon's bounded wait for its sessions, then asked the reader for
    something, queued a job behind its owner's stop: no thread ever ran it, the worker waited for good, and so
    did the interpreter's exit (systemd's SIGKILL ended the daemon). Now it is refused, typed, at once."""
    from agent.devices.errors import DeviceStopped

    async def scenario() -> Device:
        supervisor = DeviceSupervisor([("finger", DeviceSection(kind="zfm", port=zfm_sim.port))], lambda k, d: None)
        await supervisor.open_all()
        await supervisor.close()
        return supervisor.devices[0]

    finger = asyncio.run(scenario())
    outcome: list[BaseException | bool] = []

    def worker() -> None:  # a daemon thread, so that the old code's hang cannot hold the test run's exit
        try:
            outcome.append(finger.wait_for_lift(1.0))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    thread.join(60)  # a bound on a hang, far above the refusal's time: no timing is asserted
    assert outcome, "the worker's call after close never returned: it was queued behind the owner's stop"
    assert isinstance(outcome[0], DeviceStopped) and "agent is stopping" in str(outcome[0])
    assert not finger.connected and finger.status()["connected"] is False
    finger.stop()  # a second stop (a failed start, then the stop) is a no-op, not a refused job


def _sqlite_trail(path: Any) -> tuple[Any, Any]:
    """An audit trail as the daemon's is: an sqlite connection of the thread that makes it (the event loop's),
    which refuses another thread's write (sqlite3's check_same_thread). Returns (connection, record)."""
    import sqlite3

    trail = sqlite3.connect(path, isolation_level=None)
    trail.execute("CREATE TABLE events (kind TEXT, device TEXT)")

    def record(kind: str, data: dict) -> None:
        trail.execute("INSERT INTO events VALUES (?, ?)", (kind, data.get("device")))

    return trail, record


def _fault_in_a_worker(device: Device) -> list[BaseException]:
    """``device``'s session hook for a fault (as a camera's wait_frame calls it), from a worker thread; what it
    raised, if anything."""
    from agent.devices.errors import DeviceFault

    raised: list[BaseException] = []

    def worker() -> None:
        try:
            device.on_fault(DeviceFault(device.name, "frames of 9000x9000", "set the camera to 1280x720"))
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(60)
    return raised


def test_a_device_fault_met_after_the_loop_closed_is_said_never_written_from_the_worker(zfm_sim, tmp_path) -> None:
    """A session worker meeting a fault once the daemon's loop had closed recorded it from its own thread: into
    a trail the loop's thread owns (sqlite refuses: the error went up into the session instead of its typed one)
    and that the stopping daemon had closed. And checking ``is_closed()`` before ``call_soon_threadsafe`` left a
    window where the loop closed between the two (RuntimeError into the session). Now the fault is said in the log,
    whole, and the worker goes on."""
    from structlog.testing import capture_logs

    trail, record = _sqlite_trail(tmp_path / "trail.db")

    async def scenario() -> Device:
        supervisor = DeviceSupervisor([("finger", DeviceSection(kind="zfm", port=zfm_sim.port))], record)
        await supervisor.open_all()
        await supervisor.close()
        return supervisor.devices[0]

    finger = asyncio.run(scenario())  # the loop is closed now, as at the daemon's exit
    with capture_logs() as logs:
        raised = _fault_in_a_worker(finger)
    assert raised == [], f"the fault hook raised into the session worker: {raised!r}"
    said = [e for e in logs if e["event"] == "audit_event_not_stored" and e.get("type") == "device_fault"]
    assert said and said[0]["data"]["device"] == "finger" and said[0]["data"]["fix"] == "set the camera to 1280x720"
    assert said[0]["data"]["error"] == "device finger: frames of 9000x9000"
    assert trail.execute("SELECT kind FROM events").fetchall() == [("device_plugged",)]
    trail.close()


def test_a_device_fault_the_closed_trail_refuses_is_said_with_its_fields(zfm_sim, tmp_path) -> None:
    """The daemon closes its outbox after the devices; a worker's fault handed to the loop then made the trail
    raise inside a loop callback: asyncio's "Exception in callback" (stdlib logging, not the agent's log) and
    no device, error or fix anywhere. Now it is the agent's audit_event_not_stored line with the fault."""
    from structlog.testing import capture_logs

    trail, record = _sqlite_trail(tmp_path / "trail.db")

    async def scenario() -> list[BaseException]:
        supervisor = DeviceSupervisor([("finger", DeviceSection(kind="zfm", port=zfm_sim.port))], record)
        await supervisor.open_all()
        try:
            trail.close()  # the stopping daemon's outbox.close(), while the loop still runs
            raised = await asyncio.to_thread(_fault_in_a_worker, supervisor.devices[0])
            for _ in range(3):  # the callback it queued runs on this loop
                await asyncio.sleep(0)
            return raised
        finally:
            await supervisor.close()

    with capture_logs() as logs:
        raised = asyncio.run(scenario())
    assert raised == []
    said = [e for e in logs if e["event"] == "audit_event_not_stored" and e.get("type") == "device_fault"]
    assert said and said[0]["data"]["device"] == "finger" and said[0]["data"]["fix"] == "set the camera to 1280x720"
    assert "closed database" in said[0]["storage_error"], said[0]


def test_a_serial_module_fault_a_session_meets_is_audited_its_ordinary_ends_are_not(zfm_sim) -> None:
    """Only the camera handed the faults its sessions met to the supervisor's audit: a serial module whose
    line carried noise failed every session with no device_fault in the trail (invariant 5), only each
    session's end. A finger not placed in time is no fault, and stays unaudited."""
    from drivers.zfm.errors import FingerTimeoutError, ModuleError
    from simulators.zfm import Fault

    recorded: list[tuple[str, dict]] = []

    async def scenario() -> None:
        supervisor = DeviceSupervisor(
            [("finger", DeviceSection(kind="zfm", port=zfm_sim.port))], lambda k, d: recorded.append((k, d))
        )
        await supervisor.open_all()
        finger = supervisor.devices[0]
        try:
            with pytest.raises(FingerTimeoutError):  # nobody there: an ordinary end
                await asyncio.to_thread(finger.wait_for_finger, 0.5)
            zfm_sim.inject(Fault.NOISE)  # a floating RX wire, another device on the port
            with pytest.raises(ModuleError) as met:
                await asyncio.to_thread(finger.wait_for_finger, 5)
            await _until(lambda: "device_fault" in _events(recorded, "finger"))
            fault = next(data for kind, data in recorded if kind == "device_fault")
            assert fault["port"] == zfm_sim.port and fault["error"] == met.value.args[0]
            assert fault["fix"] == met.value.fix and fault["fix"]
        finally:
            zfm_sim.quiet()
            await supervisor.close()

    asyncio.run(scenario())
    assert _events(recorded, "finger") == ["device_plugged", "device_fault"]


class _HeldOwner:
    """Makes one thread's first look at ``owner.stopped`` return what it read only once another thread's stop
    has returned: the interleaving of two stops at once that the scheduler gives only now and then, every time.
    The owner thread stays the real one."""

    def __init__(self, device: Device) -> None:
        from agent.devices.owner import DeviceOwner

        self.held: int | None = None  # the thread whose look is held
        self.looked, self.other_done = threading.Event(), threading.Event()
        gate = self

        class Held(DeviceOwner):
            @property
            def stopped(self) -> bool:
                seen = self._stopped
                if threading.get_ident() == gate.held and not gate.looked.is_set():
                    gate.looked.set()
                    gate.other_done.wait(30)
                return seen

        device.owner.stop()  # the owner it was made with: replaced before anything ran on it
        device.owner = Held(device.name)


def test_two_stops_of_a_device_at_once_both_return_and_close_it_once(zfm_sim) -> None:
    """Device.stop checked whether its owner had stopped, then queued its close: a second stop at the same time
    (the daemon's, a failed start's) that looked before the first had stopped the owner queued its close after,
    and was refused with DeviceStopped (here: held between its look and its close)."""
    from agent.devices.kinds import ZfmDevice
    from drivers.zfm.driver import ZfmModule

    device = ZfmDevice(DeviceSection(kind="zfm", port=zfm_sim.port), "finger")
    gate = _HeldOwner(device)
    closes: list[int] = []
    module: ZfmModule = device.module
    real_close = module.close

    def close() -> None:
        closes.append(threading.get_ident())
        real_close()

    module.close = close  # type: ignore[method-assign]
    asyncio.run(device.open())
    raised: dict[str, BaseException] = {}

    def stop(who: str) -> None:
        if who == "second":
            gate.held = threading.get_ident()
        try:
            device.stop()
        except BaseException as exc:
            raised[who] = exc
        finally:
            if who == "first":
                gate.other_done.set()

    second = threading.Thread(target=stop, args=("second",), daemon=True)
    second.start()
    while not gate.looked.wait(0.01) and second.is_alive():
        pass  # until the second stop has looked (the old code) or is done (one that never looks)
    first = threading.Thread(target=stop, args=("first",), daemon=True)
    first.start()
    for thread in (first, second):
        thread.join(60)  # a bound on a hang, not a timing assertion
    assert not first.is_alive() and not second.is_alive(), "a stop never returned"
    assert raised == {}, f"a concurrent stop raised: {raised!r}"
    assert len(closes) == 1, f"the module was closed {len(closes)} times"
    assert not device.owner.alive and not device.connected


def test_a_failed_reopen_is_a_warning_naming_the_error_type_and_when_the_next_try_is(tmp_path) -> None:
    """A serial module that failed each reopen (here its port is a file, not a serial device: every open is
    refused at once) was logged at info level: invisible at the default level, with neither the error's type
    nor when the agent would try again. Each failure is now a warning with both; the wait doubles from one
    check interval."""
    from structlog.testing import capture_logs

    port = tmp_path / "ttyUSB9"
    port.write_bytes(b"")

    def failed(logs: list[dict]) -> list[dict]:
        return [e for e in logs if e["event"] == "device_open_failed"]

    async def scenario(logs: list[dict]) -> None:
        supervisor = DeviceSupervisor(
            [("finger", DeviceSection(kind="zfm", port=str(port), check_interval_s=0.1))], lambda k, d: None
        )
        await supervisor.open_all()
        supervisor.start()
        try:
            await _until(lambda: len(failed(logs)) >= 3, 30)
        finally:
            await supervisor.close()

    with capture_logs() as logs:
        asyncio.run(scenario(logs))
    start, first, second = failed(logs)[:3]
    assert [e["log_level"] for e in (start, first, second)] == ["warning"] * 3, failed(logs)
    assert (start["reopen"], first["reopen"], second["reopen"]) == (False, True, True)
    assert [e["reopen_in_s"] for e in (start, first, second)] == [0.1, 0.2, 0.4], failed(logs)
    assert first["error_type"] == "PortSettingsError" and "cannot be opened" in first["error"], first
    assert "not a file" in first["fix"], first


def test_identify_on_a_reader_that_cannot_is_a_usage_error_not_an_audited_fault(fprint_socket_dir) -> None:
    """libfprint's virtual_device verifies only. Asked to identify, the driver's refusal (a driver error) was
    audited as a device_fault, a reader to replace for staff, and reached the kiosk app as device_error, of a
    reader that works. Now it is DeviceCannot, refused before the driver: code device_cannot, no device_fault."""
    from agent.devices.errors import DeviceCannot
    from agent.devices.kinds import FprintDevice
    from agent.localapi import error_codes

    path = fprint_socket_dir / "device.sock"
    recorded: list[tuple[str, dict]] = []

    def factory(section: DeviceSection, name: str) -> FprintDevice:
        return FprintDevice(section, name, env={"FP_VIRTUAL_DEVICE": str(path)})

    async def scenario() -> BaseException:
        supervisor = DeviceSupervisor(
            [("sensor", DeviceSection(kind="fprint", selector="virtual_device"))],
            lambda k, d: recorded.append((k, d)), factory=factory,
        )
        await supervisor.open_all()
        try:
            sensor = supervisor.pick(MATCH_ON_SENSOR)
            try:
                await asyncio.to_thread(sensor.identify, [b"a print"], 5)
            except Exception as exc:
                refused: BaseException = exc
            else:
                raise AssertionError("identify on a reader without identification was not refused")
            for _ in range(5):  # a fault handed to the loop (Device.on_fault) is recorded in a callback: let it run
                await asyncio.sleep(0)
            return refused
        finally:
            await supervisor.close()

    refused = asyncio.run(scenario())
    assert isinstance(refused, DeviceCannot), repr(refused)
    assert error_codes(refused) == {"code": "device_cannot"}
    assert "cannot identify" in refused.message and "capture-agent verify --subject ID" in refused.fix, refused
    assert _events(recorded, "sensor") == ["device_plugged"], recorded


def _stopped_during(device: Device, wait: Any, under_way: Any) -> BaseException:
    """Run ``wait`` in a worker thread, stop ``device`` (as the agent's stop does) once ``under_way()`` says the
    wait has begun, and return what the wait raised."""
    outcome: list[BaseException] = []

    def worker() -> None:
        try:
            wait()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not under_way():
            assert time.monotonic() < deadline, "the wait never got under way"
            time.sleep(0.01)
    finally:
        device.stop()
    thread.join(30)  # a bound on a hang, not a timing assertion
    assert outcome, "the wait the stop cut short ended without an error"
    return outcome[0]


def _told_as_the_stop(ended: BaseException) -> None:
    from agent.devices.errors import DeviceStopped
    from agent.localapi import error_codes

    assert isinstance(ended, DeviceStopped), repr(ended)  # was DeviceUnplugged: "plug it back in"
    assert error_codes(ended) == {"code": "agent_stopping"}
    assert "the agent is stopping" in ended.message and ended.fix.startswith("try again once the agent is back")


def test_a_serial_wait_for_a_finger_the_agents_stop_cuts_short_is_told_as_the_stop(zfm_sim) -> None:
    """The stop sets the device's abort, which a wait for a finger polls: the wait ended "went away (unplugged?):
    plug it back in" (device_unplugged), of a module still plugged in. It is the stop (agent_stopping)."""
    from agent.devices.kinds import ZfmDevice
    from drivers.zfm.constants import Command

    finger = ZfmDevice(DeviceSection(kind="zfm", port=zfm_sim.port), "finger")
    asyncio.run(finger.open())
    polls = zfm_sim.commands.count(Command.GEN_IMG)
    ended = _stopped_during(finger, lambda: finger.wait_for_finger(20),
                            lambda: zfm_sim.commands.count(Command.GEN_IMG) > polls)  # the module is asked for a finger
    _told_as_the_stop(ended)


def test_a_usb_wait_for_a_finger_the_agents_stop_cuts_short_is_told_as_the_stop(fprint_socket_dir) -> None:
    """libfprint's virtual_image reader waiting for a finger when the agent stops: told unplugged, it is the stop."""
    from agent.devices.kinds import FprintDevice

    path = fprint_socket_dir / "image.sock"
    section = DeviceSection(kind="fprint", selector="virtual_image")
    usb = FprintDevice(section, "usb", env={"FP_VIRTUAL_IMAGE": str(path)})
    asyncio.run(usb.open())
    ended = _stopped_during(usb, lambda: usb.wait_for_finger(20), usb.reader.finger_needed)  # the sensor lit up
    _told_as_the_stop(ended)


def test_a_camera_wait_for_a_frame_the_agents_stop_cuts_short_is_told_as_the_stop(camera_sim) -> None:
    """A face session waiting for the camera's next frame when the agent stops: told unplugged, it is the stop."""
    from agent.devices.kinds import CameraDevice

    face = CameraDevice(DeviceSection(kind="camera", source=camera_sim.url), "face")
    asyncio.run(face.open())
    seen = face.wait_frame(timeout_s=5).seq
    ended = _stopped_during(face, lambda: face.wait_frame(seen + 10_000, 20),  # a frame that never comes in time
                            lambda: face.camera.waiting > 0)  # a consumer in the driver's wait_frame
    _told_as_the_stop(ended)


def test_a_usage_error_only_the_driver_can_tell_is_not_audited_as_a_device_fault(fprint_socket_dir, zfm_sim) -> None:
    """libfprint refusing what a reader does not do (a capture of a match-on-sensor reader: NOT_SUPPORTED), the
    driver refusing an image fetched before any capture, the serial driver refusing a timeout no module takes:
    each a driver error of the family's one type, audited as a device_fault (a reader for staff to replace) of
    readers that work. Now a UsageError, not audited; a reader's real failure (a protocol error) still is."""
    from agent.devices.kinds import FprintDevice
    from drivers.fprint.errors import FprintError
    from simulators.fprint import ERROR_PROTO, VirtualImageFeeder

    sockets = {"FP_VIRTUAL_DEVICE": str(fprint_socket_dir / "device.sock"),
               "FP_VIRTUAL_IMAGE": str(fprint_socket_dir / "image.sock")}
    recorded: list[tuple[str, dict]] = []

    def factory(section: DeviceSection, name: str) -> Device:
        if section.kind == "zfm":
            return make_device(section, name)
        return FprintDevice(section, name, env=sockets)

    def refused(call: Any) -> BaseException:
        try:
            call()
        except Exception as exc:
            return exc
        raise AssertionError("the call was not refused")

    async def scenario() -> dict[str, BaseException]:
        supervisor = DeviceSupervisor(
            [("sensor", DeviceSection(kind="fprint", selector="virtual_device")),
             ("usb", DeviceSection(kind="fprint", selector="virtual_image")),
             ("serial", DeviceSection(kind="zfm", port=zfm_sim.port))],
            lambda k, d: recorded.append((k, d)), factory=factory,
        )
        await supervisor.open_all()
        sensor, usb, serial = supervisor.devices
        feeder = VirtualImageFeeder(fprint_socket_dir / "image.sock")
        try:
            ends = {
                "a capture on a match-on-sensor reader": await asyncio.to_thread(
                    refused, lambda: sensor.wait_for_finger(5)),
                "an image before any capture": await asyncio.to_thread(refused, usb.download_image),
                "a negative finger timeout": await asyncio.to_thread(refused, lambda: serial.wait_for_finger(-1)),
            }
            threading.Thread(target=_when_waiting, args=(usb, feeder.error, ERROR_PROTO), daemon=True).start()
            ends["a protocol error"] = await asyncio.to_thread(refused, lambda: usb.wait_for_finger(10))
            for _ in range(5):  # a fault handed to the loop (Device.on_fault) is recorded in a callback: let it run
                await asyncio.sleep(0)
            return ends
        finally:
            feeder.close()
            await supervisor.close()

    ends = asyncio.run(scenario())
    fault = ends.pop("a protocol error")
    faults = [(d["device"], d["error"]) for kind, d in recorded if kind == "device_fault"]
    assert faults == [("usb", fault.args[0])], faults  # the protocol error alone
    for what, end in ends.items():
        assert "unplug and replug" not in getattr(end, "fix", ""), (what, end)  # the reader is fine
    from drivers.errors import UsageError

    assert all(isinstance(end, UsageError) for end in ends.values()), ends
    assert isinstance(fault, FprintError) and not isinstance(fault, UsageError), repr(fault)


def _when_waiting(usb: Any, action: Any, *args: Any) -> None:
    """Act once the libfprint reader waits for a finger (a command sent to an idle virtual reader is dropped)."""
    deadline = time.monotonic() + 10
    while not usb.reader.finger_needed() and time.monotonic() < deadline:
        time.sleep(0.01)
    action(*args)
