"""A video file served as a camera (the test rig's recorded clip): each way it can be unusable is a typed error
worded for a file (its path, a copy, its mode, ffprobe), never a camera to plug in or a silent "no frame".

Real files in tmp_path, real OpenCV, the agent's real device supervisor, discovery and doctor; a file the
agent's user may not read is tried as that user (uid 65534 under root), since chmod never denies root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.doctor import run_doctor
from drivers.camera.camera import Camera
from drivers.camera.errors import (
    CameraFileMissingError,
    CameraFileNotVideo,
    CameraFileUnreadable,
    CameraNodeMissingError,
    CameraUnavailable,
)
from drivers.camera.source import CameraSource
from drivers.discovery import cameras
from tests.conftest import REPO, unprivileged_prefix
from tests.test_devices import _opened_once

USB_WORDS = ("USB", "plug the camera", "udevadm", "/dev/video", "capture-readers")


def _doctor_line(config, name: str):
    return next(c for c in run_doctor(config).checks if c.name == f"device {name}")


def _camera_config(tmp_path: Path, source: str):
    return parse_config(
        {
            "agent": {"state_dir": str(tmp_path / "empty")},
            "verifier": {"url": "https://127.0.0.1:9"},
            "keyring": {"backend": "file-insecure-dev"},
            "network": {"retries": 0, "connect_timeout_s": 2.0},
            "device": [{"kind": "camera", "name": "rig", "source": source}],
        },
        source="agent.toml",
    )


def _no_usb_advice(fix: str) -> None:
    assert not any(word in fix for word in USB_WORDS), fix


def _until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    """Whether ``predicate`` came true within ``timeout_s`` (a bound for a hang, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ---------------------------------------------------------------- a file that is not there


def test_a_missing_video_file_is_named_as_a_file_with_the_copy_fix_and_stays_a_missing_camera(tmp_path) -> None:
    """It was "the camera X does not exist" with a fix about the USB cable, `ls /dev/video*` and udevadm."""
    missing = str(tmp_path / "clip.avi")
    with pytest.raises(CameraFileMissingError) as caught:
        CameraSource.parse(missing).check_present()
    error = caught.value
    assert isinstance(error, CameraNodeMissingError) and isinstance(error, CameraUnavailable)  # handlers keep it
    assert error.args[0] == f"the video file {missing} does not exist" and error.path == missing
    assert f"`ls -l {missing}`" in error.fix and "copied" in error.fix and "correct the path" in error.fix
    _no_usb_advice(error.fix)
    placed = error.set_in("[reader] source")  # as the agent's device names its own entry
    assert type(placed) is CameraFileMissingError and "correct [reader] source" in placed.fix
    camera = Camera(missing, reconnect=False)
    try:
        assert not camera.open_once(timeout_s=5) and isinstance(camera.open_error, CameraFileMissingError)
    finally:
        camera.stop()


def test_a_missing_relative_video_file_says_the_daemon_looks_from_its_own_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CameraFileMissingError) as caught:
        CameraSource.parse("clips/door.mp4").check_present()
    assert "clips/door.mp4 is relative" in caught.value.fix and "absolute path" in caught.value.fix


def test_a_missing_video_file_is_retried_and_read_once_the_rig_copies_it_in(tmp_path, video_file) -> None:
    """The reopen loop keeps trying a file that is not there (a rig copies it in after the agent started)."""
    path = tmp_path / "later" / "clip.avi"
    path.parent.mkdir()
    camera = Camera(str(path)).start()
    try:
        assert _until(lambda: isinstance(camera.open_error, CameraFileMissingError)), camera.open_error
        shutil.copy(video_file, path.with_suffix(".part"))
        path.with_suffix(".part").rename(path)
        assert camera.wait_frame(timeout_s=30).pixels.shape[:2] == (48, 64)
    finally:
        camera.stop()


def test_the_agent_device_discovery_and_doctor_say_a_missing_video_file_in_file_words(tmp_path) -> None:
    missing = str(tmp_path / "clip.mp4")
    config = _camera_config(tmp_path, missing)
    fault = next(data for kind, data in _opened_once(config) if kind == "device_fault")
    assert fault["error"] == f"the video file {missing} does not exist", fault
    assert 'correct source in [[device]] name = "rig"' in fault["fix"] and f"`ls -l {missing}`" in fault["fix"]
    _no_usb_advice(fault["fix"])
    found = next(f for f in cameras([missing], max_index=0) if f.path == missing)  # `capture-agent devices`
    assert (found.accessible, found.description) == (False, "does not exist") and "copied" in found.fix
    _no_usb_advice(found.fix)
    line = _doctor_line(config, "rig")
    assert line.ok is False and line.detail == f"camera: the video file {missing} does not exist", line
    assert "copied" in line.fix and '[[device]] name = "rig"' in line.fix
    _no_usb_advice(line.fix)


# ---------------------------------------------------------------- a file that is there but no video


def _open_error(source: Path, camera: Camera | None = None) -> CameraUnavailable | None:
    """Why one open of ``source`` (by ``camera``, or a camera made for it) gave no frame; the camera stopped."""
    camera = camera or Camera(str(source), reconnect=False)
    try:
        assert not camera.open_once(timeout_s=5)
        return camera.open_error
    finally:
        camera.stop()


def test_a_text_file_named_like_a_video_is_said_to_be_no_video_not_no_frame(tmp_path) -> None:
    """OpenCV only said it did not open: the device said "gives no frame", "check it is plugged in"."""
    clip = tmp_path / "clip.mp4"
    clip.write_text("not a video\n")
    error = _open_error(clip)
    assert isinstance(error, CameraFileNotVideo), error
    assert error.args[0].startswith(f"the video file {clip} is no video OpenCV can open"), error
    assert f"`ffprobe {clip}`" in error.fix and "mv" in error.fix
    _no_usb_advice(error.fix)
    fault = next(data for kind, data in _opened_once(_camera_config(tmp_path, str(clip))) if kind == "device_fault")
    assert fault["error"] == error.args[0] and f"`ffprobe {clip}`" in fault["fix"], fault
    found = next(f for f in cameras([str(clip)], max_index=0) if f.path == str(clip))
    assert found.description == error.args[0] and found.fix == error.fix, found


def test_a_video_file_holding_no_frame_is_said_so(tmp_path) -> None:
    """An AVI written with no frame opens, then reads nothing: it was "gives no frame" with no fix."""
    import cv2

    clip = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    assert writer.isOpened()
    writer.release()
    error = _open_error(clip)
    assert isinstance(error, CameraFileNotVideo) and "holds no frame" in error.args[0], error
    found = next(f for f in cameras([str(clip)], max_index=0) if f.path == str(clip))
    assert "holds no frame" in found.description and "ffprobe" in found.fix, found


@pytest.mark.parametrize("kind", ["folder", "empty", "fifo"])
def test_a_folder_an_empty_file_or_a_fifo_named_like_a_video_is_said_so_without_opening_it(tmp_path,
                                                                                           kind: str) -> None:
    """Doctor only looks, and said each was fine; OpenCV given a FIFO nobody writes to never returned."""
    clip = tmp_path / "clip.mp4"
    {"folder": clip.mkdir, "empty": clip.touch, "fifo": lambda: os.mkfifo(clip)}[kind]()
    said = {"folder": "is a folder", "empty": "is empty", "fifo": "is a FIFO"}[kind]
    with pytest.raises(CameraFileNotVideo, match=f"^the video file {clip} {said}") as caught:
        CameraSource.parse(str(clip)).check_present()
    wanted = "http://.../stream.mjpg" if kind == "fifo" else f"`ffprobe {clip}`"  # a pipe: the live feed's kinds
    assert wanted in caught.value.fix, caught.value.fix
    line = _doctor_line(_camera_config(tmp_path, str(clip)), "rig")
    assert line.ok is False and said in line.detail, line
    found = cameras([str(clip)], max_index=0)[-1]  # `capture-agent devices --camera`: a FIFO held it for good
    assert said in found.description and found.fix == caught.value.fix, found
    camera = Camera(str(clip), reconnect=False)
    try:
        assert not camera.open_once(timeout_s=5) and isinstance(camera.open_error, CameraFileNotVideo)
    finally:
        camera.stop()


def test_a_file_that_is_no_video_yet_is_retried_and_read_once_a_whole_clip_replaces_it(tmp_path,
                                                                                       video_file) -> None:
    """The reopen loop keeps trying it, as before: a rig copying a clip in place has part of it there a while."""
    clip = tmp_path / "rig.avi"
    clip.write_bytes(video_file.read_bytes()[:300])  # the head of a copy still under way
    camera = Camera(str(clip)).start()
    try:
        assert _until(lambda: isinstance(camera.open_error, CameraFileNotVideo)), camera.open_error
        video_file.rename(clip)  # the copy done, moved into place
        assert camera.wait_frame(timeout_s=30).pixels.shape[:2] == (48, 64)
    finally:
        camera.stop()


# ---------------------------------------------------------------- a file the agent's user may not read


_AS_AGENT = """
import json, sys
from drivers.camera.camera import Camera
camera = Camera(sys.argv[1], reconnect=False)
try:
    camera.open_once(timeout_s=5)
finally:
    camera.stop()
error = camera.open_error
print(json.dumps([type(error).__name__, str(error.args[0]) if error else "", getattr(error, "fix", "")]))
"""


def _opened_as_agent_user(path: Path) -> tuple[str, str, str]:
    """(error class, message, fix) of the open of the camera ``path`` by the agent's unprivileged user."""
    prefix = unprivileged_prefix()
    if isinstance(prefix, str):
        pytest.skip(prefix)
    done = subprocess.run([*prefix, sys.executable, "-c", _AS_AGENT, str(path)], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    kind, message, fix = json.loads(done.stdout.splitlines()[-1])
    return kind, message, fix


def test_a_video_file_the_agent_user_may_not_read_names_chmod(open_tmp, shut, video_file) -> None:
    """OpenCV only said it did not open: "gives no frame", retried with no reason given."""
    clip = open_tmp / "clip.avi"
    shutil.copy(video_file, clip)
    shut(clip, 0o000)
    kind, message, fix = _opened_as_agent_user(clip)
    assert kind == CameraFileUnreadable.__name__, (kind, message)
    assert message.startswith(f"the video file {clip} exists but ") and "may not read it" in message
    assert f"`chmod o+r {clip}`" in fix
    _no_usb_advice(fix)


def test_a_video_file_in_a_folder_the_agent_user_may_not_enter_names_the_folder(open_tmp, shut,
                                                                                video_file) -> None:
    """It was "the camera X does not exist", with a fix about the USB cable."""
    folder = open_tmp / "clips"
    folder.mkdir()
    shutil.copy(video_file, folder / "clip.avi")
    shut(folder, 0o000)
    kind, message, fix = _opened_as_agent_user(folder / "clip.avi")
    assert kind == CameraFileUnreadable.__name__, (kind, message)
    assert "a folder above it is closed" in message and "does not exist" not in message
    assert "`chmod o+x FOLDER`" in fix
    _no_usb_advice(fix)


def test_doctor_as_the_agent_user_names_chmod_for_a_video_file_it_may_not_read(agent_user_cli, open_tmp, shut,
                                                                               video_file) -> None:
    """Doctor said "may not open it" with the fix of a device node: the capture-readers group and udev rules."""
    clip = open_tmp / "clip.avi"
    shutil.copy(video_file, clip)
    shut(clip, 0o000)
    config = open_tmp / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{open_tmp / "state"}"\n[verifier]\nurl = "https://127.0.0.1:9"\n'
        f'[keyring]\nbackend = "file-insecure-dev"\n[logging]\nlevel = "error"\n'
        f'[[device]]\nkind = "camera"\nname = "rig"\nsource = "{clip}"\n'
    )
    doctor = agent_user_cli("doctor", "--config", str(config))
    assert "Traceback" not in doctor.stdout + doctor.stderr, doctor.stdout + doctor.stderr
    lines = doctor.stdout.splitlines()
    index = next(i for i, line in enumerate(lines) if "] device rig:" in line)
    assert "[FAIL]" in lines[index] and f"the video file {clip} exists but " in lines[index], lines[index]
    assert f"`chmod o+r {clip}`" in lines[index + 1], lines[index + 1]
    _no_usb_advice(lines[index + 1])


def test_a_video_file_whose_frames_are_all_of_a_refused_size_says_the_size(video_file) -> None:
    """Every frame refused for its size left the file called one that "holds no frame OpenCV can decode"."""
    from drivers.camera.errors import CameraFrameSize

    camera = Camera(str(video_file), reconnect=False, min_side=100)  # the clip is 64x48
    error = _open_error(video_file, camera)
    fault = camera.fault
    assert isinstance(fault, CameraFrameSize), fault
    assert not isinstance(error, CameraFileNotVideo), error
