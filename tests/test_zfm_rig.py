"""The test-rig commands: a simulator process, and discovery finding it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from drivers.zfm.driver import ZfmModule


def test_simulator_process_prints_its_port_and_devices_finds_the_module(tmp_path) -> None:
    """`capture-agent simulate` hands over to the simulator, here fed from a folder of F_I.tif images."""
    import cv2

    from simulators.fingers import FingerGenerator

    images = tmp_path / "fvc"
    images.mkdir()
    cv2.imwrite(str(images / "2_1.tif"), FingerGenerator(5).image(2, 1))
    link = tmp_path / "ttyRIG"
    command = ["simulate", "zfm", "--model", "as608", "--link", str(link), "--images", str(images), "--finger", "2"]
    command += ["--baud", "115200"]  # a module an earlier run raised: it answers only at that speed
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", *command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = json.loads(proc.stdout.readline())
        assert line == {"event": "listening", "port": str(link), "model": "as608"}
        with ZfmModule(line["port"], baud=115200) as module:
            assert module.profile.name == "as608"
            assert module.capture(), "the finger left on the sensor by --finger"
            assert module.download_image().shape == (288, 256)
            proc.stdin.write("lift\n")  # the rig scripts the person at the sensor on standard input
            proc.stdin.flush()
            assert module.wait_for_lift(5)
            proc.stdin.write("place 2\n")  # the folder's first impression of finger 2: 2_1.tif
            proc.stdin.flush()
            module.wait_for_finger(5)
        listing = subprocess.run(
            [sys.executable, "-m", "agent.cli", "devices", "--only-named", "--port", str(link), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        found = {f["path"]: f for f in json.loads(listing.stdout)}
        assert "as608" in found[str(link)]["description"]
        assert found[str(link)]["details"]["capacity"] == 300
        assert found[str(link)]["details"]["baud"] == 115200, "discovery finds a module at the speed it runs"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        proc.stdout.close()
        proc.stdin.close()
    assert not link.exists(), "the simulator removes its port link when it stops"


def test_usb_discovery_knows_readers_and_says_how_to_get_access() -> None:
    from drivers.discovery import usb_readers
    from simulators.usb import FakeUsbDevice, SimulatedUsbBackend

    backend = SimulatedUsbBackend(
        [
            FakeUsbDevice(0x1B55, 0x0120, bus=1, address=7),  # ZKTeco: a fingerprint vendor
            FakeUsbDevice(0x046D, 0xC52B, bus=1, address=8),  # a Logitech receiver: not a reader
            FakeUsbDevice(0x06CB, 0x00BD, bus=2, address=3),  # a Synaptics fingerprint sensor
            FakeUsbDevice(0x06CB, 0x0001, bus=2, address=4),
        ]  # a Synaptics touchpad: not a reader
    )
    found = {f.path: f for f in usb_readers(backend)}
    assert set(found) == {"/dev/bus/usb/001/007", "/dev/bus/usb/002/003"}
    zk = found["/dev/bus/usb/001/007"]
    assert "ZKTeco" in zk.description and "1b55:0120" in zk.description
    assert not zk.accessible and "60-capture-agent.rules" in zk.fix  # no such node on this machine


def test_a_slow_line_at_real_speed_is_waited_for(tmp_path) -> None:
    """Real line speed: the driver's stream deadline follows the baud rate, so nothing times out early."""
    from simulators.fingers import FingerGenerator
    from simulators.zfm import SimulatedModule

    sim = SimulatedModule("r503", link=tmp_path / "tty", finger_source=FingerGenerator(2).image, real_speed=True)
    with sim, ZfmModule(sim.port) as module:
        module.set_baud(115200)
        sim.place(finger=0)
        module.wait_for_finger(3)
        image = module.download_image()  # 18,432 bytes: about 1.7 s on the wire
    assert image.shape == (192, 192)
