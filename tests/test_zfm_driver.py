"""Our driver against the simulator: every fault gives the right typed error or a recovery, never a hang."""

from __future__ import annotations

import functools
import os
import pwd
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import serial

from drivers.errors import RetryCapture
from drivers.zfm.constants import LedColor
from drivers.zfm.driver import ZfmModule
from drivers.zfm.errors import (
    CorruptReplyError,
    FingerTimeoutError,
    ImagingFailedError,
    InvalidArgumentError,
    NoReplyError,
    OversizedReplyError,
    PortBusyError,
    PortClosedError,
    PortMissingError,
    PortPermissionError,
    PortSettingsError,
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


def _as_nobody(action: Callable[[], tuple[int, str]]) -> tuple[int, str]:
    """Run ``action`` in a forked child that has dropped to the user nobody; (exit code, its text).

    Why fork rather than exec a new Python as nobody: the checkout (and often the
    interpreter, e.g. pyenv under /root) may sit in a folder only its owner can
    read, mode 0700, so nobody could neither import the project nor start Python.
    The child inherits the modules already in memory and touches no file but the port.
    """
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            code, text = action()
            os.write(write_end, text.encode())
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


def test_permission_denied_names_dialout_and_udev(zfm_sim) -> None:
    """Opened as an unprivileged user, as the daemon runs: the pty is root's, mode 0620."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    port = os.path.realpath(zfm_sim.port)

    def open_as_nobody() -> tuple[int, str]:
        try:
            ZfmModule(port).open()
        except PortPermissionError as exc:
            return 3, exc.fix
        return 0, "opened"

    code, fix = _as_nobody(open_as_nobody)
    assert code == 3, fix
    assert ("dialout" in fix and "udev" in fix.lower()) or "60-capture-agent.rules" in fix


def test_baud_rate_raised_and_templates_moved(module, zfm_sim) -> None:
    # The fixture's 0.3 s reply timeout is for the tests of silence; here a loaded machine's stall past it retried
    # the UpChar, whose first (late) reply then ran into the retry's: a corrupt stream, not what is tested here.
    module.reply_timeout_s = 2.0
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


# ---------------------------------------------------------------- a line that never goes quiet


def _outcome_within(seconds: float, call: Callable[[], object], sim: SimulatedModule) -> BaseException | object:
    """What ``call`` returned or raised, failing the test if it is still running after ``seconds``.

    A hang is ended before failing (the line goes quiet, so even a driver that waits for
    a quiet line returns) and its thread joined: no test leaves a thread behind.
    """
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test
            outcome["value"] = exc

    thread = threading.Thread(target=run, name="driver call", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        sim.quiet()
        sim.silence()
        thread.join(30)
        pytest.fail(f"the driver was still waiting after {seconds} s on a line that never went quiet")
    return outcome["value"]


def test_a_noisy_line_is_no_reply_naming_the_noise(module, zfm_sim) -> None:
    zfm_sim.inject(Fault.NOISE)
    error = _outcome_within(5, module.template_count, zfm_sim)  # two attempts of 0.3 s
    assert isinstance(error, NoReplyError), error
    assert "no packet" in str(error) and "console" in error.fix
    zfm_sim.quiet()
    assert module.template_count() == 0, "the module answers again once the line is quiet"


def test_open_on_a_line_of_noise_returns(zfm_sim) -> None:
    """A port with something else on it (a GPS, a console): open and the baud search end, typed."""
    zfm_sim.inject(Fault.NOISE)  # the first reply (the password check) never comes, noise does
    driver = ZfmModule(zfm_sim.port, reply_timeout_s=0.3)
    try:
        assert isinstance(_outcome_within(5, driver.open, zfm_sim), NoReplyError)
        searched = _outcome_within(30, lambda: driver.open_at_any_baud(probe_timeout_s=0.2), zfm_sim)
        assert isinstance(searched, NoReplyError), searched
    finally:
        driver.close()


def test_waiting_for_a_finger_on_a_noisy_line_returns(module, zfm_sim) -> None:
    zfm_sim.inject(Fault.NOISE)
    assert isinstance(_outcome_within(5, lambda: module.wait_for_finger(1.0), zfm_sim), NoReplyError)


def test_a_stream_that_turns_to_noise_ends_at_its_deadline(module, zfm_sim) -> None:
    zfm_sim.place(finger=0)
    module.wait_for_finger(2)
    module.image_to_template(1)
    zfm_sim.inject(Fault.NOISE)  # UpChar is acknowledged, its data never comes: noise instead
    error = _outcome_within(15, module.upload_template, zfm_sim)  # the stream's deadline: about 2.3 s
    assert isinstance(error, NoReplyError), error


@pytest.mark.parametrize("what", ["image", "template"])
def test_an_endless_stream_is_refused_past_the_expected_size(module, zfm_sim, what: str) -> None:
    zfm_sim.place(finger=0)
    module.wait_for_finger(2)
    module.image_to_template(1)
    zfm_sim.inject(Fault.ENDLESS_STREAM)  # DATA packets, never END_DATA
    call = module.download_image if what == "image" else module.upload_template
    error = _outcome_within(20, call, zfm_sim)
    assert isinstance(error, OversizedReplyError), error
    assert "model" in error.fix
    zfm_sim.quiet()
    assert module.template_count() == 0, "the next command is answered once the stream stops"


# ---------------------------------------------------------------- a finger the module cannot image


def test_a_finger_that_cannot_be_imaged_is_a_retry_with_a_feedback_code(module, zfm_sim) -> None:
    from agent.sessions import MESSAGES

    zfm_sim.place(finger=0)
    zfm_sim.inject(Fault.IMAGING_FAILED)  # GenImg answers 0x03 once
    with pytest.raises(ImagingFailedError) as info:
        module.wait_for_finger(2)
    assert isinstance(info.value, RetryCapture) and info.value.feedback == "clean_sensor"
    assert info.value.feedback in MESSAGES and "wipe" in info.value.fix
    module.wait_for_finger(2)  # the next GenImg images it
    assert module.download_image().shape == (zfm_sim.profile.image_height, zfm_sim.profile.image_width)


def test_a_finger_that_cannot_be_imaged_is_still_on_the_sensor(module, zfm_sim) -> None:
    zfm_sim.place(finger=0)
    zfm_sim.inject(Fault.IMAGING_FAILED)
    assert module.wait_for_lift(0.3) is False, "an unimaged finger is still a finger: no lift"
    zfm_sim.lift()
    assert module.wait_for_lift(2) is True


def test_a_closed_port_is_port_closed_and_an_unplugged_one_stays_unplugged(zfm_sim) -> None:
    """Closed by its owner (or never opened): PortClosedError, an UnpluggedError that says so instead of blaming
    the cable. Gone under the driver: UnpluggedError itself, on every call until it is reopened."""
    never = ZfmModule(zfm_sim.port, reply_timeout_s=0.3)
    for call in (never.template_count, lambda: never.profile):
        with pytest.raises(PortClosedError, match="not open") as closed:
            call()
        assert isinstance(closed.value, UnpluggedError) and "open the module first" in closed.value.fix
    ports: list[serial.Serial] = []
    driver = ZfmModule(zfm_sim.port, reply_timeout_s=0.3, serial_factory=lambda *a, **k: ports.append(
        serial.Serial(*a, **k)) or ports[-1])
    driver.open()
    ports[-1].close()  # the pyserial port closed under the driver: PortNotOpenError inside
    with pytest.raises(PortClosedError):
        driver.template_count()
    driver.open()
    driver.close()
    with pytest.raises(PortClosedError):
        driver.capture()
    driver.open()
    zfm_sim.unplug()
    for _ in range(2):
        with pytest.raises((UnpluggedError, NoReplyError)) as gone:
            driver.template_count()
        assert not isinstance(gone.value, PortClosedError)
    zfm_sim.replug()
    driver.close()


def test_port_settings_no_module_or_port_takes_are_port_settings_errors(zfm_sim) -> None:
    for baud in (12345, 0, -9600, 230400, "fast", True):
        with pytest.raises(PortSettingsError, match="no speed a module runs at") as refused:
            ZfmModule(zfm_sim.port, baud=baud).open()
        assert "multiple of 9600" in refused.value.fix
    with pytest.raises(PortSettingsError, match="byte size"):  # pyserial's own ValueError for a setting
        ZfmModule(zfm_sim.port, serial_factory=functools.partial(serial.Serial, bytesize=9)).open()
    with pytest.raises(PortSettingsError, match="refused 57600 baud") as not_a_tty:
        ZfmModule("/dev/null").open()
    assert "not a file or another kind of device" in not_a_tty.value.fix
    driver = ZfmModule(zfm_sim.port, baud=12345, reply_timeout_s=0.3)
    assert driver.open_at_any_baud().profile.name == "r307" and driver.baud == 57600, "no probe at 12345"
    driver.close()


def test_arguments_no_module_takes_are_invalid_argument_errors_and_nothing_is_sent(module, zfm_sim) -> None:
    size = zfm_sim.profile.template_bytes
    calls = {
        "store-page-negative": lambda: module.store(-1),
        "store-page-past-capacity": lambda: module.store(1000),
        "store-page-of-5000-digits": lambda: module.store(10**5000),  # repr() itself raised ValueError
        "store-buffer-3": lambda: module.store(0, buffer=3),
        "load-page-2**16": lambda: module.load(2**16),
        "load-page-str": lambda: module.load("7"),
        "delete-none": lambda: module.delete(0, 0),
        "delete-past-the-end": lambda: module.delete(999, 2),
        "search-buffer-0": lambda: module.search(buffer=0),
        "upload-template-buffer-bool": lambda: module.upload_template(buffer=True),
        "template-to-buffer-256": lambda: module.image_to_template(256),
        "download-template-short": lambda: module.download_template(b"\x01" * 10),
        "download-template-long": lambda: module.download_template(b"\x01" * (size + 1)),
        "download-template-str": lambda: module.download_template("x" * size),
        "upload-image-wrong-shape": lambda: module.upload_image(np.zeros((10, 10), np.uint8)),
        "upload-image-float": lambda: module.upload_image(np.zeros((288, 256), np.float32)),
        "set-baud-12345": lambda: module.set_baud(12345),
        "finger-timeout-nan": lambda: module.wait_for_finger(float("nan")),
        "finger-poll-0": lambda: module.wait_for_finger(1, poll_s=0),
        "lift-timeout-negative": lambda: module.wait_for_lift(-1),
        "reopen-within-inf": lambda: module.reopen(within_s=float("inf")),
    }
    sent = list(zfm_sim.commands)
    for case, call in calls.items():
        with pytest.raises(InvalidArgumentError) as refused:
            call()
        assert isinstance(refused.value, ValueError) and refused.value.fix.startswith("pass "), case
        assert zfm_sim.commands == sent, f"{case}: nothing reaches the module"
    assert module.template_count() == 0, "the port is still open and the module answers"


def test_a_driver_made_with_a_timeout_or_password_no_module_takes_says_so(zfm_sim) -> None:
    with pytest.raises(InvalidArgumentError, match="reply timeout"):
        ZfmModule(zfm_sim.port, reply_timeout_s=float("nan"))
    with pytest.raises(InvalidArgumentError, match="module password"):
        ZfmModule(zfm_sim.port, password=2**32).open()
    assert zfm_sim.commands == []


def test_a_second_driver_on_the_same_port_is_refused_naming_the_holder(zfm_sim) -> None:
    """Two daemons (other state directories, the same [[device]] port) both opened the module and interleaved
    their packets; `capture-agent devices` probing while the daemon ran did the same."""
    first = ZfmModule(zfm_sim.port, reply_timeout_s=0.3)
    first.open()
    try:
        with pytest.raises(PortBusyError) as info:  # the same process (two [[device]] entries on one port)
            ZfmModule(zfm_sim.port, reply_timeout_s=0.3).open()
        assert "already open in this process" in info.value.args[0] and "[reader] port" in info.value.fix
        assert "kill" not in info.value.fix, "the fix must not tell the daemon's user to kill the daemon itself"
        assert first.template_count() >= 0, "the holder keeps driving the module"
    finally:
        first.close()
    second = ZfmModule(zfm_sim.port, reply_timeout_s=0.3)
    assert second.open().profile.name == zfm_sim.profile.name, "free once the holder closed it"
    second.close()


def test_a_port_another_process_holds_is_refused_naming_that_process(zfm_sim) -> None:
    """Another process (a second daemon, `capture-agent devices`) holding the module: named, with how to stop it."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n",
            zfm_sim.port,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(PortBusyError) as info:
            ZfmModule(zfm_sim.port, reply_timeout_s=0.3).open()
        assert f"in use by process {holder.pid}" in info.value.args[0]
        assert f"kill {holder.pid}" in info.value.fix and f"fuser -v {zfm_sim.port}" in info.value.fix
    finally:
        holder.communicate("", timeout=30)
