"""`capture-simulator` as a test rig runs it: a bad option is one error line naming the fix, a signal a clean exit.

Options are checked in-process through ``main()`` (it returns before serving);
signals and standard-input scripts need the real process. Also the simulators'
classes as a developer uses them in a test: a mistake is a SimulatorError naming the fix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.camera import SimulatedCamera
from simulators.cli import camera_command, main, module_command
from simulators.errors import SimulatorError, UnknownCommand
from simulators.fingers import FolderFingerSource
from simulators.fprint import VirtualDeviceFeeder, VirtualImageFeeder
from simulators.zfm import SimulatedModule
from tests.conftest import run_simulator_script

pytestmark = pytest.mark.usefixtures("keep_process_settings")


def refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The one line `main(args)` printed on stderr, asserting it refused (exit 2) with a fix and no traceback."""
    assert main(list(args)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("capture-simulator: error: ") and "(fix: " in lines[0], lines[0]
    assert captured.out == "", "nothing announced: it never served"
    return lines[0]


def test_a_link_path_holding_a_file_is_refused_and_the_file_kept(tmp_path: Path, capsys) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("a rig's own file")
    assert "exists and is not a port link" in refused(capsys, "zfm", "--link", str(notes))
    assert notes.read_text() == "a rig's own file"
    assert not notes.with_name("notes.txt.tmp").exists()


def test_a_link_in_a_missing_folder_is_refused(tmp_path: Path, capsys) -> None:
    line = refused(capsys, "zfm", "--link", str(tmp_path / "no-such-dir" / "ttyZFM0"))
    assert "does not exist" in line and f"create {tmp_path / 'no-such-dir'}" in line


def test_a_second_simulator_on_a_served_link_is_refused_and_the_first_keeps_it(tmp_path: Path, capsys) -> None:
    link = tmp_path / "ttyZFM0"
    with SimulatedModule("r307", link=link) as first:
        assert "a port in use" in refused(capsys, "zfm", "--link", str(link))
        assert os.readlink(link) == os.ttyname(first._slave)
    assert not os.path.lexists(link), "removed by the simulator that made it"


def test_a_stopping_module_leaves_a_link_another_has_taken(tmp_path: Path) -> None:
    link = tmp_path / "ttyZFM0"
    with SimulatedModule("r307") as other:
        with SimulatedModule("r307", link=link):
            os.remove(link)
            os.symlink(other.port, link)  # taken over, as by a rig that restarted a module there
        assert os.readlink(link) == other.port


def test_a_dangling_link_left_by_a_killed_simulator_is_taken(tmp_path: Path) -> None:
    link = tmp_path / "ttyZFM0"
    os.symlink(tmp_path / "pts-gone", link)
    with SimulatedModule("r307", link=link) as sim:
        assert os.path.realpath(link) == sim._slave_name


REFUSED_OPTIONS = {
    "baud-not-a-multiple-of-9600": (["zfm", "--baud", "12345"], "not a speed a module runs at"),
    "baud-0": (["zfm", "--baud", "0"], "not a speed a module runs at"),
    "baud-above-115200": (["zfm", "--baud", "230400"], "not a speed a module runs at"),
    "password-negative": (["zfm", "--password", "-1"], "32 bits"),
    "password-33-bits": (["zfm", "--password", "0x1FFFFFFFF"], "32 bits"),
    "count-0": (["zfm", "--list-fingers", "--count", "0"], "no count of fingers"),
    "count-negative": (["zfm", "--list-fingers", "--count", "-3"], "no count of fingers"),
    "finger-negative": (["zfm", "--finger", "-1"], "negative"),
    "impression-negative": (["zfm", "--finger", "0", "--impression", "-2"], "negative"),
    "images-missing": (["zfm", "--images", "no-such-folder"], "not a folder"),
    "size-not-WxH": (["camera", "--size", "640"], "not WIDTHxHEIGHT"),
    "size-too-small-for-the-bar-code": (["camera", "--size", "10x10"], "outside what the camera serves"),
    "size-zero": (["camera", "--size", "0x0"], "outside what the camera serves"),
    "size-too-large": (["camera", "--size", "100000x100000"], "outside what the camera serves"),
    "fps-0": (["camera", "--fps", "0"], "no camera's rate"),
    "fps-negative": (["camera", "--fps", "-1"], "no camera's rate"),
    "fps-nan": (["camera", "--fps", "nan"], "no camera's rate"),
    "fps-too-high": (["camera", "--fps", "1e9"], "no camera's rate"),
    "camera-images-missing": (["camera", "--images", "no-such-folder"], "not a folder"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_OPTIONS))
def test_options_no_module_or_camera_has_are_refused(case: str, capsys) -> None:
    args, said = REFUSED_OPTIONS[case]
    assert said in refused(capsys, *args)


def test_folders_without_what_the_simulator_shows_are_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    assert "no F_I.tif images" in refused(capsys, "zfm", "--images", str(tmp_path))
    assert "no images in" in refused(capsys, "camera", "--images", str(tmp_path))


def test_a_folder_of_data_set_folders_names_one_to_give(tmp_path: Path, capsys) -> None:
    """The data sets come as folders of folders (att_faces/s1.., fvc2002/DB1_B..): --images given the top one
    said "no images in it: put images in it", as if it were empty."""
    for name in ("DB2_B", "DB1_B", ".git"):
        (tmp_path / name).mkdir()
    hint = f"it holds folders (DB1_B, DB2_B): give one of them, e.g. {tmp_path / 'DB1_B'})"
    assert refused(capsys, "zfm", "--images", str(tmp_path)).endswith(hint)
    assert refused(capsys, "camera", "--images", str(tmp_path)).endswith(hint)


def test_an_unreadable_image_left_on_the_sensor_is_refused_and_the_port_closed(tmp_path: Path, capsys) -> None:
    (tmp_path / "1_1.tif").write_bytes(b"not an image")
    link = tmp_path / "ttyZFM0"
    args = ("zfm", "--images", str(tmp_path), "--finger", "1", "--link", str(link))
    assert "not a readable image" in refused(capsys, *args)
    assert not os.path.lexists(link)


def test_replug_of_a_plugged_module_changes_nothing() -> None:
    with SimulatedModule("r307") as sim:
        port, fds = sim.port, len(os.listdir("/proc/self/fd"))
        sim.replug()
        now = (sim.port, len(os.listdir("/proc/self/fd")))
        assert now == (port, fds), "no second pty hiding (and leaking) the first"


def test_a_camera_refuses_a_rate_that_would_not_pace_its_stream() -> None:
    camera = SimulatedCamera((160, 120), fps=20)
    for rate in (0, -1, float("nan"), float("inf")):
        with pytest.raises(SimulatorError, match="no camera's rate"):
            camera.fps = rate
    assert camera.fps == 20


def simulator(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_script_lines_it_cannot_do_are_answered_and_sigterm_ends_it_cleanly(tmp_path: Path) -> None:
    link = tmp_path / "ttyZFM0"
    done = run_simulator_script(["zfm", "--link", str(link)], b"list 0\nlist -1\nplace -1\nplace 0 x\nlist 1\n")
    assert done.first["finger"] == 0, "the lines before it were handled, in order"
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert [a["event"] for a in done.answers] == ["bad_command", "bad_command", "bad_place", "bad_place"], done.stderr
    assert all("fix:" in a["error"] for a in done.answers), done.answers
    assert not os.path.lexists(link), "the port link is removed on SIGTERM"


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_a_signal_while_listing_fingers_exits_without_a_traceback(stop: str) -> None:
    proc = simulator("zfm", "--list-fingers", "--count", "1000")
    try:
        assert json.loads(proc.stdout.readline())["finger"] == 0
        proc.send_signal(getattr(signal, stop))
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "capture-simulator: interrupted", err


def test_a_feeder_without_its_virtual_reader_says_to_open_the_reader_first(tmp_path: Path) -> None:
    with pytest.raises(SimulatorError, match="open the reader first"):
        VirtualDeviceFeeder(tmp_path / "device.sock", timeout_s=0.05).scan("ana")
    with pytest.raises(SimulatorError, match="short folder"):
        VirtualImageFeeder(tmp_path / ("x" * 120), timeout_s=0.05).finger(True)


# ---------------------------------------------------------------- script lines, in process and on standard input
@pytest.fixture
def folder_module(finger_folder: Path) -> tuple[SimulatedModule, FolderFingerSource]:
    """A module (not serving: the script lines only set its state) with the finger folder as its source."""
    source = FolderFingerSource(finger_folder)
    return SimulatedModule("r307", finger_source=source.image), source


REFUSED_MODULE_LINES = {
    "finger-2**64-aliased-finger-0": ("place 18446744073709551616", "at most 9 ASCII digits"),
    "finger-ten-digits": ("place 1234567890", "at most 9 ASCII digits"),
    "impression-ten-digits": ("place 1 1000000001", "at most 9 ASCII digits"),
    "finger-superscript-two": ("place \u00b2", "ASCII digits"),
    "finger-arabic-indic-three": ("place \u0663", "ASCII digits"),
    "finger-underscore": ("place 1_0", "ASCII digits"),
    "finger-negative": ("place -1", "negative"),
    "place-three-numbers": ("place 1 1 1", "place FINGER [IMPRESSION]"),
    "list-0": ("list 0", "from 1 to 1000"),
    "list-1001": ("list 1001", "from 1 to 1000"),
    "list-superscript": ("list \u00b2", "from 1 to 1000"),
    "list-two-counts": ("list 1 2", "list COUNT"),
    "pace-maybe": ("pace maybe", "pace on, or pace off"),
    "lift-with-words": ("lift now", "lift alone"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_MODULE_LINES))
def test_module_lines_with_numbers_it_cannot_take_are_refused_naming_the_fix(folder_module, case: str) -> None:
    sim, source = folder_module
    line, said = REFUSED_MODULE_LINES[case]
    with pytest.raises(SimulatorError) as refused:
        module_command(sim, source, line)
    assert not isinstance(refused.value, UnknownCommand)
    assert said in str(refused.value) and refused.value.fix, str(refused.value)
    assert sim._finger is None and not sim.real_speed, "a refused line changes nothing"


def test_module_lines_place_list_and_pace_do_what_they_say(folder_module) -> None:
    sim, source = folder_module
    module_command(sim, source, "place 2")  # its first impression there: 2_1
    assert sim._finger is not None and sim._finger.shape == (288, 256)
    module_command(sim, source, "lift")
    assert sim._finger is None
    module_command(sim, source, "pace on")
    assert sim.real_speed
    listed: list[dict[str, object]] = []
    module_command(sim, source, "list 1", emit=listed.append)
    assert listed == [{"event": "finger", "finger": 1, "impressions": [1, 2]},
                      {"event": "finger", "finger": 2, "impressions": [1]}]
    with pytest.raises(SimulatorError) as no_finger:
        module_command(sim, source, "place 3")
    assert "no image of finger 3" in str(no_finger.value) and "1 to 2" in no_finger.value.fix


@pytest.mark.parametrize(("line", "fix"), [
    ("place 1 0", "its impressions there are 1, 2: write place 1 1"),  # the generator's numbering, on FVC's
    ("place 2 2", "its impressions there are 1: write place 2 1"),
    ("place 101", "place one of its fingers, 1 to 2 (`list` shows each with its impressions)"),
])
def test_a_placement_the_folder_lacks_names_what_it_holds(folder_module, line: str, fix: str) -> None:
    """FVC numbers impressions from 1 (fingers from 101), the generator from 0: "no image 1_0" named no fix."""
    sim, source = folder_module
    with pytest.raises(SimulatorError) as refused_line:
        module_command(sim, source, line)
    assert refused_line.value.fix == fix, str(refused_line.value)
    assert sim._finger is None, "a refused line changes nothing"


def test_a_finger_left_on_the_sensor_that_the_folder_lacks_names_what_it_holds(finger_folder: Path, capsys) -> None:
    line = refused(capsys, "zfm", "--images", str(finger_folder), "--finger", "1", "--impression", "0")
    assert "write place 1 1" in line


def test_unknown_commands_are_their_own_typed_error_listing_the_commands(folder_module) -> None:
    sim, source = folder_module
    with pytest.raises(UnknownCommand) as module_refused:
        module_command(sim, source, "plaec 1")
    assert "plaec" in str(module_refused.value) and "place FINGER [IMPRESSION]" in module_refused.value.fix
    camera = SimulatedCamera((160, 120), fps=20)
    with pytest.raises(UnknownCommand) as camera_refused:
        camera_command(camera, "zoom 2")
    assert "zoom" in str(camera_refused.value) and "fps N" in camera_refused.value.fix
    with pytest.raises(UnknownCommand):
        module_command(sim, source, "fps 10")  # a camera's line sent to a module


@pytest.mark.parametrize("rate", ["nan", "inf", "-inf", "0", "-1", "0.05", "120.5", "1e2", "1_0", "\u0661\u0665", ""])
def test_camera_rates_outside_a_tenth_to_120_or_not_plain_decimals_are_refused(rate: str) -> None:
    camera = SimulatedCamera((160, 120), fps=20)
    with pytest.raises(SimulatorError) as refused:
        camera_command(camera, f"fps {rate}")
    assert "0.1 to 120" in refused.value.fix, str(refused.value)
    assert camera.fps == 20


def test_camera_rates_from_a_tenth_to_120_are_taken_and_answered() -> None:
    camera = SimulatedCamera((160, 120), fps=20)
    for rate, expected in (("0.1", 0.1), ("120", 120.0), (".5", 0.5), ("15", 15.0)):
        answer = camera_command(camera, f"fps {rate}")
        assert answer == {"event": "fps", "url": camera.url, "plugged": False} and camera.fps == expected
    assert camera_command(camera, "   ") is None


def test_standard_input_bytes_that_are_not_utf8_are_a_bad_line_not_the_end_of_the_script() -> None:
    done = run_simulator_script(["camera", "--size", "160x120"], b"fps \xff\xfe\nzoom \xc3\n\xff\nfps 30\n")
    assert done.first["event"] == "fps", "the lines after the bad bytes are still read"
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert [a["event"] for a in done.answers] == ["bad_command", "unknown_command", "unknown_command"], done.stderr
    assert all("fix:" in a["error"] for a in done.answers), done.answers
    from protocol.wire import loads  # strict JSON: a lone surrogate escape ("\\udcff") is refused

    answers = [loads(line.encode()) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [a["line"] for a in answers] == ["fps \\xff\\xfe", "zoom \\xc3", "\\xff"], answers


@pytest.mark.parametrize(("args", "said", "fix"), [
    ([], "required: {zfm,camera}", "`capture-simulator --help` lists its devices"),
    (["bogus"], "invalid choice: 'bogus'", "`capture-simulator --help` lists its devices"),
    (["zfm", "--bogus"], "unrecognized arguments: --bogus", "`capture-simulator zfm --help` shows its options"),
    (["zfm", "--model", "r308"], "invalid choice: 'r308'", "`capture-simulator zfm --help` shows its options"),
    (["camera", "--fps", "x"], "invalid float value: 'x'", "`capture-simulator camera --help` shows its options"),
])
def test_a_usage_mistake_is_one_error_line_naming_the_commands_help(args: list[str], said: str, fix: str,
                                                                     capsys) -> None:
    """argparse printed its usage block and an error with no fix; the README promises one line with the fix."""
    line = refused(capsys, *args)
    assert said in line and line.endswith(f"(fix: {fix})"), line


def test_the_rigs_enrollment_recipe_places_each_finger_as_often_as_enroll_captures_it() -> None:
    """The help's (and README's) recipe must match `capture-agent enroll`'s default, or its verify impression
    is one the enrollment already took, and the enrollment waits for a finger the recipe never places."""
    import re

    from agent.cli import build_parser
    from simulators import cli as simulator_cli

    captures = build_parser().parse_args(["enroll", "--subject", "ana"]).captures
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rig = readme[readme.index("**People and fingers in a rig.**"):]
    for text in (" ".join(simulator_cli.__doc__.split()), " ".join(rig[: rig.index("\n\n")].split())):
        placed = re.findall(r"`place (\d+) (\d+)`", text)
        enrolled = [(f, i) for f, i in placed if f in ("0", "1")][: 2 * captures]
        assert sorted(enrolled) == [(f, str(i)) for f in ("0", "1") for i in range(captures)], text
        verify = placed[2 * captures]
        assert verify == ("0", str(captures)), f"verifying takes a fresh impression: {text}"


def test_finger_impression_and_count_options_take_ascii_digits_only(capsys) -> None:
    assert "at most 9 ASCII digits" in refused(capsys, "zfm", "--finger", "18446744073709551616")
    assert "ASCII digits" in refused(capsys, "zfm", "--finger", "0", "--impression", "\u0663")
    assert "from 1 to 1000" in refused(capsys, "zfm", "--list-fingers", "--count", "1001")
