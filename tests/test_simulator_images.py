"""The simulators' image files: read as bytes and decoded by OpenCV, any file name, a typed error naming the fix.

cv2.imread takes a C string: a file whose name is not UTF-8 was not found (or
failed inside OpenCV), and any failure was an anonymous None.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from simulators.camera import SimulatedCamera
from simulators.errors import SimulatorError, UnreadableImage
from simulators.faces import poses
from simulators.fingers import FolderFingerSource
from simulators.images import MAX_IMAGE_FILE_BYTES, read_image
from tests.conftest import run_simulator_script


def non_utf8(folder: Path, name: bytes) -> Path:
    """A path in ``folder`` whose last part is these bytes (not UTF-8), as os.fsdecode hands it to Python."""
    return folder / os.fsdecode(name)


def png(path: Path, image: np.ndarray) -> Path:
    ok, data = cv2.imencode(".png", image)
    assert ok
    path.write_bytes(data.tobytes())  # Python writes the name: cv2.imwrite could not
    return path


def test_an_image_whose_name_is_not_utf8_is_read_grey_or_colour(tmp_path: Path) -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :, 2] = 200  # red
    path = png(non_utf8(tmp_path, b"caf\xe9-\xff.png"), image)
    assert os.fsencode(path.name) == b"caf\xe9-\xff.png"
    colour = read_image(path, color=True)
    assert colour.shape == (40, 60, 3) and int(colour[0, 0, 2]) == 200
    grey = read_image(path)
    assert grey.shape == (40, 60) and grey.dtype == np.uint8


@pytest.mark.parametrize("case", ["missing", "folder", "empty", "garbage", "truncated-png", "too-large"])
def test_files_that_are_no_image_are_a_typed_error_naming_the_file_and_the_fix(tmp_path: Path, case: str) -> None:
    path = non_utf8(tmp_path, b"bad-\xff.png")
    if case == "folder":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(b"not an image at all")
    elif case == "truncated-png":
        data = cv2.imencode(".png", np.full((64, 64), 128, np.uint8))[1]
        path.write_bytes(data.tobytes()[:40])
    elif case == "too-large":
        with open(path, "wb") as sparse:  # a hole: no disk, no time
            sparse.truncate(MAX_IMAGE_FILE_BYTES + 1)
    with pytest.raises(UnreadableImage) as refused:
        read_image(path, fix="give another image")
    message = str(refused.value)
    assert "bad-\\udcff.png" in message, "the name shown, its odd byte escaped"
    assert refused.value.fix and "(fix: " in message
    assert isinstance(refused.value, SimulatorError), "a script line raising it is reported, the simulator serves on"


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_a_device_or_a_pipe_is_refused_before_it_is_read(tmp_path: Path, special: str) -> None:
    """/dev/zero reports 0 bytes and was read until memory ran out; a FIFO with no writer blocked the reader."""
    path = Path(special)
    if special == "fifo":
        path = tmp_path / "frames.png"
        os.mkfifo(path)
    with pytest.raises(UnreadableImage, match="is not a regular file") as refused:
        read_image(path)
    assert refused.value.fix


def test_a_file_name_holding_a_nul_byte_is_an_unreadable_image_not_a_bare_value_error(tmp_path: Path) -> None:
    with pytest.raises(UnreadableImage, match="NUL byte") as refused:
        read_image(str(tmp_path / "a\x00b.png"))
    assert refused.value.fix


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_image_this_user_may_not_read_says_so(tmp_path: Path) -> None:
    path = png(tmp_path / "locked.png", np.zeros((8, 8), np.uint8))
    path.chmod(0)
    with pytest.raises(UnreadableImage, match="may not be read"):
        read_image(path)


def test_the_finger_folder_and_the_camera_read_images_under_names_that_are_not_utf8(tmp_path: Path) -> None:
    folder = non_utf8(tmp_path, b"empreintes-\xe9")
    folder.mkdir()
    png(folder / "1_1.png", np.full((300, 260), 90, np.uint8))
    (folder / "2_1.png").write_bytes(b"broken")
    source = FolderFingerSource(folder)
    assert source.load(1, 1).shape == (300, 260)
    with pytest.raises(UnreadableImage, match="greyscale TIFF, PNG or BMP"):
        source.load(2, 1)
    scenes = non_utf8(tmp_path, b"sc\xe8nes")
    scenes.mkdir()
    png(scenes / os.fsdecode(b"\xff.png"), np.full((120, 160, 3), 30, np.uint8))
    assert SimulatedCamera((160, 120)).show_folder(scenes) == 1


def test_a_missing_face_image_names_the_faces_folder_to_give(tmp_path: Path) -> None:
    with pytest.raises(UnreadableImage, match="ORL / AT&T faces"):
        poses(tmp_path, "1", "3")


def test_still_takes_a_file_name_that_is_not_utf8_from_standard_input(tmp_path: Path) -> None:
    still = png(non_utf8(tmp_path, b"still-\xff.png"), np.full((120, 160, 3), 60, np.uint8))
    script = b"still " + os.fsencode(tmp_path / "missing.png") + b"\n" + b"still " + os.fsencode(still) + b"\n"
    done = run_simulator_script(["camera", "--size", "160x120"], script)
    assert done.first["event"] == "still"
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    (answer,) = done.answers
    assert answer["event"] == "bad_command" and "does not exist" in answer["error"], answer
    assert "fix: give a JPEG or PNG file" in answer["error"], answer
