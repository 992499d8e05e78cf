"""Quality codes of biometrics.face, each from its measured property, on real ORL faces placed in camera-sized
frames (and synthetic landmarks for pose and motion)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from biometrics.face import quality as q
from biometrics.face.pose import pose_of

VGA = (640, 480)


def camera_frame(img: np.ndarray, scale: float = 3.0) -> np.ndarray:
    """An ORL face upscaled and centred in a 640x480 frame (replicated border, like a wall behind the person)."""
    big = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    h, w = big.shape[:2]
    if h >= VGA[1] or w >= VGA[0]:  # larger than the frame: the camera sees its middle
        top, left = (h - VGA[1]) // 2, (w - VGA[0]) // 2
        return np.ascontiguousarray(big[top : top + VGA[1], left : left + VGA[0]])
    top, left = (VGA[1] - h) // 2, (VGA[0] - w) // 2
    return cv2.copyMakeBorder(big, top, VGA[1] - h - top, left, VGA[0] - w - left, cv2.BORDER_REPLICATE)


@pytest.fixture(scope="module")
def frontal(att_faces) -> np.ndarray:
    return cv2.imread(str(att_faces / "s3" / "1.pgm"), cv2.IMREAD_GRAYSCALE)


def test_a_good_frame_has_no_code(face_pipeline, frontal) -> None:
    analysis = face_pipeline.analyse(camera_frame(frontal))
    assert analysis.quality.ok and analysis.code is None, analysis.quality
    m = analysis.quality.measures
    assert q.MIN_BRIGHTNESS < m.brightness < q.MAX_BRIGHTNESS and m.sharpness > q.MIN_SHARPNESS
    assert abs(m.yaw) < q.MAX_YAW and m.eye_distance > q.MIN_EYE_DISTANCE and m.outside_fraction < 1e-3


def test_no_face_is_face_not_found(face_pipeline) -> None:
    rng = np.random.default_rng(0)
    analysis = face_pipeline.analyse(rng.integers(100, 156, (480, 640), dtype=np.uint8))
    assert analysis.faces == [] and analysis.code == q.FACE_NOT_FOUND and analysis.embedding is None


def test_a_distant_face_is_asked_to_come_closer(face_pipeline, frontal) -> None:
    analysis = face_pipeline.analyse(camera_frame(frontal, scale=0.7))
    assert analysis.code == q.MOVE_CLOSER
    assert analysis.quality.measures.eye_distance < q.MIN_EYE_DISTANCE


def test_a_face_filling_the_frame_is_asked_to_move_back(face_pipeline, frontal) -> None:
    analysis = face_pipeline.analyse(camera_frame(frontal, scale=7.0))
    assert q.MOVE_BACK in analysis.quality.codes, analysis.quality
    assert analysis.quality.measures.outside_fraction > q.MAX_OUTSIDE


def test_exposure_in_the_face_box_gives_too_dark_and_too_bright(face_pipeline, frontal) -> None:
    frame = camera_frame(frontal)
    dark = face_pipeline.analyse((frame * 0.15).astype(np.uint8))
    assert dark.code == q.TOO_DARK and dark.quality.measures.brightness < q.MIN_BRIGHTNESS
    bright = face_pipeline.analyse((frame * 0.3 + 185).astype(np.uint8))
    assert bright.code == q.TOO_BRIGHT and bright.quality.measures.brightness > q.MAX_BRIGHTNESS


def test_a_dark_face_in_a_bright_room_is_too_dark() -> None:
    """Exposure is measured in the face box, not the frame: a backlit face is too dark."""
    m = q.Measures(40.0, 0.0, brightness=35.0, contrast=20.0, clipped_dark=0.1, clipped_bright=0.0,
                   yaw=0.0, pitch=0.0, roll=0.0, sharpness=0.05, motion=None)
    assert q.codes_for(m) == (q.TOO_DARK,)
    flat = q.Measures(40.0, 0.0, brightness=150.0, contrast=5.0, clipped_dark=0.0, clipped_bright=0.0,
                      yaw=0.0, pitch=0.0, roll=0.0, sharpness=0.05, motion=None)
    assert q.codes_for(flat) == (q.TOO_BRIGHT,), "a washed-out face with no contrast is too bright"


def test_a_turned_head_is_asked_to_look_at_the_camera(face_pipeline, att_faces) -> None:
    profile = cv2.imread(str(att_faces / "s1" / "3.pgm"), cv2.IMREAD_GRAYSCALE)
    analysis = face_pipeline.analyse(camera_frame(profile))
    assert analysis.code == q.LOOK_AT_CAMERA and analysis.quality.measures.yaw < -q.MAX_YAW


@pytest.mark.parametrize(("yaw", "pitch", "roll"), [(35, 0, 0), (-35, 0, 0), (0, 35, 0), (0, 0, 30)])
def test_pose_beyond_the_limits_asks_to_look_at_the_camera(make_face, yaw, pitch, roll) -> None:
    face = make_face(yaw=yaw, pitch=pitch, roll=roll)
    gray = np.full((480, 640), 128, np.uint8)
    gray[::2] = 100  # some texture so exposure and sharpness pass
    report = q.assess(gray, face)
    assert q.LOOK_AT_CAMERA in report.codes


@pytest.mark.parametrize(("yaw", "pitch", "roll"), [(0, 0, 0), (20, 0, 0), (-20, 0, 0), (0, 15, 0), (0, 0, 20)])
def test_pose_is_estimated_from_the_landmarks(make_face, yaw, pitch, roll) -> None:
    p = pose_of(make_face(yaw=yaw, pitch=pitch, roll=roll).landmarks)
    assert abs(p.yaw - yaw) < 3 and abs(p.pitch - pitch) < 4 and abs(p.roll - roll) < 1.5


def test_a_blurred_face_is_asked_to_hold_still(face_pipeline, frontal) -> None:
    analysis = face_pipeline.analyse(cv2.GaussianBlur(camera_frame(frontal), (0, 0), 6))
    assert analysis.code == q.HOLD_STILL and analysis.quality.measures.sharpness < q.MIN_SHARPNESS


def test_sharpness_does_not_depend_on_the_faces_distance(face_pipeline, frontal) -> None:
    near = face_pipeline.analyse(camera_frame(frontal, 3.5)).quality.measures.sharpness
    far = face_pipeline.analyse(camera_frame(frontal, 1.5)).quality.measures.sharpness
    assert near > q.MIN_SHARPNESS and far > q.MIN_SHARPNESS
    assert 0.5 < near / far < 2.0


def test_motion_between_frames_asks_to_hold_still(face_pipeline, frontal) -> None:
    frame = camera_frame(frontal)
    before = face_pipeline.analyse(frame).face
    moved = np.roll(frame, 12, axis=1)  # 12 px in 1/30 s: several eye distances per second
    fast = face_pipeline.analyse(moved, previous=before, interval=1 / 30)
    assert fast.code == q.HOLD_STILL and fast.quality.measures.motion > q.MAX_MOTION
    slow = face_pipeline.analyse(moved, previous=before, interval=1.0)  # the same step over a second
    assert slow.quality.ok, slow.quality


def test_codes_come_most_urgent_first() -> None:
    m = q.Measures(10.0, 0.5, brightness=20.0, contrast=3.0, clipped_dark=0.5, clipped_bright=0.0,
                   yaw=60.0, pitch=0.0, roll=0.0, sharpness=0.0, motion=9.0)
    assert q.codes_for(m) == (q.MOVE_CLOSER, q.MOVE_BACK, q.TOO_DARK, q.LOOK_AT_CAMERA, q.HOLD_STILL)
    assert set(q.codes_for(m)) <= set(q.CODES)
