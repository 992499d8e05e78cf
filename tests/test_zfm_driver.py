"""Our driver against the simulator: every fault gives the right typed error or a recovery, never a hang."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from drivers.zfm.constants import LedColor
from drivers.zfm.driver import ZfmModule
from drivers.zfm.errors import (
    CorruptReplyError,
    FingerTimeoutError,
    NoReplyError,
    PortMissingError,
    UnpluggedError,
    WrongPasswordError,
)
from simulators.fingers import FingerGenerator
from simulators.zfm import Fault, SimulatedModule


@pytest.fixture
def module(zfm_sim):
    driver = ZfmModule(zfm_sim.port, reply_timeout_s=0.3)
    driver.open()
    yield driver
    driver.close()


@pytest.mark.parametrize("model", ["r307", "r503", "as608"])
def test_profile_capture_and_image_at_the_right_size(model, tmp_path) -> None:
    sim = SimulatedModule(model, link=tmp_path / "tty", finger_source=FingerGenerator(5).image)
    with sim, ZfmModule(sim.port) as driver:
        assert driver.profile.name == model
        sim.place(finger=0)
        driver.wait_for_finger(2)
        image = driver.download_image()
    assert image.shape == (sim.profile.image_height, sim.profile.image_width) and image.dtype == np.uint8
    assert np.array_equal(image >> 4, sim.image >> 4)  # 4 bits a pixel on the wire


def test_a_corrupt_reply_is_retried_once(module, zfm_sim) -> None:
    zfm_sim.inject(Fault.BAD_CHECKSUM)
    assert module.template_count() == 0
    assert zfm_sim.commands[-2:] == [0x1D, 0x1D]


def test_two_corrupt_replies_are_a_clear_error(module, zfm_sim) -> None:
    zfm_sim.inject(Fault.BAD_CHECKSUM, Fault.BAD_CHECKSUM)
    with pytest.raises(CorruptReplyError) as info:
        module.template_count()
    assert "cable" in info.value.fix


@pytest.mark.parametrize("fault", [Fault.SPLIT, Fault.GARBAGE, Fault.DROP])
def test_split_garbage_and_a_dropped_reply_recover(module, zfm_sim, fault) -> None:
    zfm_sim.inject(fault)
    assert module.template_count() == 0


def test_silence_is_no_reply_naming_wiring_baud_and_console(module, zfm_sim) -> None:
    zfm_sim.silence()
    started = time.monotonic()
    with pytest.raises(NoReplyError) as info:
        module.template_count()
    assert time.monotonic() - started < 2, "bounded: two attempts of 0.3 s"
    assert "wiring" in info.value.fix and "baud" in info.value.fix and "console" in info.value.fix


def test_no_finger_times_out_boundedly(module) -> None:
    with pytest.raises(FingerTimeoutError):
        module.wait_for_finger(0.5)


def test_unplug_is_reported_and_the_module_reopened_when_back(zfm_sim) -> None:
    driver = ZfmModule(zfm_sim.port, reply_timeout_s=0.3)
    driver.open()
    zfm_sim.unplug()
    with pytest.raises((UnpluggedError, NoReplyError)):
        driver.template_count()
    with pytest.raises(PortMissingError):
        driver.reopen(within_s=0.3)
    zfm_sim.replug()
    info = driver.reopen(within_s=5)
    assert info.profile.name == "r307" and driver.template_count() == 0
    driver.close()


def test_power_up_byte_after_replug_is_ignored(tmp_path) -> None:
    with SimulatedModule("r503", link=tmp_path / "tty") as sim:
        driver = ZfmModule(sim.port, reply_timeout_s=0.3)
        sim.unplug()
        sim.replug()  # R503 sends 55 when it comes up
        driver.open()
        assert driver.template_count() == 0
        assert driver.led(LedColor.BLUE) and sim.led is not None and sim.led[2] == LedColor.BLUE
        driver.close()


def test_wrong_password(tmp_path) -> None:
    with SimulatedModule("r307", link=tmp_path / "tty", password=0x1234) as sim:
        with pytest.raises(WrongPasswordError):
            ZfmModule(sim.port).open()
        assert ZfmModule(sim.port, password=0x1234).open().profile.name == "r307"


def test_missing_port(tmp_path) -> None:
    with pytest.raises(PortMissingError):
        ZfmModule(str(tmp_path / "nothing")).open()


def test_permission_denied_names_dialout_and_udev(zfm_sim) -> None:
    """Opened as an unprivileged user, as the daemon runs: the pty is root's, mode 0620."""
    probe = (
        "import sys\nfrom drivers.zfm.driver import ZfmModule\nfrom drivers.zfm.errors import PortPermissionError\n"
        f"try:\n    ZfmModule({os.path.realpath(zfm_sim.port)!r}).open()\nexcept PortPermissionError as e:\n"
        "    print(e.fix); sys.exit(3)\n"
    )
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is part of every Debian"
    result = subprocess.run(
        [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert result.returncode == 3, result.stderr
    assert ("dialout" in result.stdout and "udev" in result.stdout.lower()) or "60-capture-agent.rules" in result.stdout


def test_baud_rate_raised_and_templates_moved(module, zfm_sim) -> None:
    module.set_baud(115200)
    assert zfm_sim.baud == 115200 and module.baud == 115200
    zfm_sim.place(finger=2)
    module.wait_for_finger(2)
    module.image_to_template(1)
    module.store(4)
    template = module.upload_template(1)
    assert len(template) == zfm_sim.profile.template_bytes
    module.download_template(template, 2)
    deadline = time.monotonic() + 2
    while zfm_sim.chars[1] is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert zfm_sim.chars[1] == template
    assert module.search(1).page == 4
    zfm_sim.place(finger=3)
    module.wait_for_finger(2)
    module.image_to_template(1)
    assert module.search(1) is None
