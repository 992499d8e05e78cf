"""Frame quality as feedback codes, each from one measured property of the face.

Codes (DESIGN.md's vocabulary), in the order a person should fix them:

- ``face_not_found``: the detector found no face.
- ``move_closer``: eye distance under MIN_EYE_DISTANCE pixels. SFace's crop puts
  the eyes 35.2 px apart; below 2/3 of that the crop is an upscale by more than
  1.5 and its detail is invented by interpolation.
- ``move_back``: more than MAX_OUTSIDE of the aligned crop's footprint lies
  outside the frame (the face is so close, or so near an edge, that the crop
  would be filled with the replicated border instead of the face).
- ``too_dark`` / ``too_bright``: exposure inside the face box: mean grey under
  MIN_BRIGHTNESS or over MAX_BRIGHTNESS, or more than MAX_CLIPPED of its pixels
  crushed to black (<= 5) or burnt to white (>= 250); a face box with almost no
  contrast (std under MIN_CONTRAST) is too dark or too bright by its mean.
- ``look_at_camera``: the pose from the landmarks beyond MAX_YAW, MAX_PITCH or
  MAX_ROLL degrees (see pose.py): the recogniser was trained on roughly frontal
  faces and its genuine scores fall with the angle.
- ``hold_still``: the landmarks moved more than MAX_MOTION eye distances per
  second since the previous frame, or the face lacks fine detail (sharpness
  under MIN_SHARPNESS: the share of the face box's variance above a one-pixel
  Gaussian blur at a fixed face scale, which does not depend on exposure),
  which at a camera's exposure times is motion blur or a focus hunt.

Thresholds are stated from the measured property's meaning; the one without a
physical anchor, MIN_SHARPNESS, was placed between ORL's camera faces (1st
percentile 0.014, median 0.038) and the same faces blurred by 1.5 px (median
0.010). Each is a module constant so a deployment can see and change it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from biometrics.face.align import TEMPLATE_EYE_DISTANCE, crop_footprint
from biometrics.face.pose import pose_of
from biometrics.face.types import Face

FACE_NOT_FOUND = "face_not_found"
MOVE_CLOSER = "move_closer"
MOVE_BACK = "move_back"
TOO_DARK = "too_dark"
TOO_BRIGHT = "too_bright"
LOOK_AT_CAMERA = "look_at_camera"
HOLD_STILL = "hold_still"
CODES = (FACE_NOT_FOUND, MOVE_CLOSER, MOVE_BACK, TOO_DARK, TOO_BRIGHT, LOOK_AT_CAMERA, HOLD_STILL)

MIN_EYE_DISTANCE = TEMPLATE_EYE_DISTANCE * 2 / 3  # 23.5 px
MAX_OUTSIDE = 0.15
MIN_BRIGHTNESS, MAX_BRIGHTNESS = 50.0, 205.0
MIN_CONTRAST = 12.0
MAX_CLIPPED = 0.25
MAX_YAW, MAX_PITCH, MAX_ROLL = 25.0, 25.0, 25.0
MAX_MOTION = 1.5  # eye distances per second (about 9 cm/s for an adult)
MIN_SHARPNESS = 0.012  # see the module docstring
DEFAULT_FRAME_INTERVAL = 1 / 30


@dataclass(frozen=True, slots=True)
class Measures:
    """The measured properties behind the codes (pixels, grey levels 0..255, degrees, per second)."""

    eye_distance: float
    outside_fraction: float
    brightness: float
    contrast: float
    clipped_dark: float
    clipped_bright: float
    yaw: float
    pitch: float
    roll: float
    sharpness: float
    motion: float | None


@dataclass(frozen=True, slots=True)
class QualityReport:
    """The codes for one frame (most urgent first; empty when the frame is good) and their measures."""

    codes: tuple[str, ...]
    measures: Measures | None

    @property
    def ok(self) -> bool:
        return not self.codes

    @property
    def code(self) -> str | None:
        """The one prompt to show now: the most urgent code, or None."""
        return self.codes[0] if self.codes else None


def outside_fraction(face: Face, width: int, height: int) -> float:
    """Share of the aligned crop's footprint that lies outside a width x height frame."""
    quad = crop_footprint(face)
    inside = cv2.intersectConvexConvex(
        quad.astype(np.float32), np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    )[0]
    area = float(abs(cv2.contourArea(quad.astype(np.float32))))
    return 1.0 - min(1.0, float(inside) / area) if area > 0 else 1.0


def face_box(gray: np.ndarray, face: Face) -> np.ndarray:
    """The face box's pixels (a view), clipped to the frame; may be empty."""
    h, w = gray.shape[:2]
    x, y, bw, bh = (float(v) for v in face.box)
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    x1, y1 = min(w, math.ceil(x + bw)), min(h, math.ceil(y + bh))
    return gray[y0 : max(y0, y1), x0 : max(x0, x1)]


def exposure(gray: np.ndarray, face: Face) -> tuple[float, float, float, float]:
    """Mean, standard deviation, and dark / bright clipped shares of the grey face box (clipped to the frame)."""
    roi = face_box(gray, face)
    if min(roi.shape) < 2:
        return float("nan"), 0.0, 0.0, 0.0
    return float(roi.mean()), float(roi.std()), float((roi <= 5).mean()), float((roi >= 250).mean())


def sharpness(gray: np.ndarray, face: Face) -> float:
    """Share of the face box's grey variance that a one-pixel Gaussian blur removes (0: no fine detail).

    Measured with the face brought down to MIN_EYE_DISTANCE between the eyes
    (area resampling, never an upscale), so a large, well-focused face is not
    called blurred for having smooth skin at its native resolution, and the
    figure means the same at every distance from the camera.
    """
    roi = face_box(gray, face)
    if min(roi.shape) < 8:
        return 0.0
    k = MIN_EYE_DISTANCE / max(face.eye_distance, 1e-6)
    if k < 1.0:
        roi = cv2.resize(roi, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    roi = roi.astype(np.float32)
    total = float(roi.var())
    if total < 1e-6:
        return 0.0
    fine = roi - cv2.GaussianBlur(roi, (0, 0), 1.0)
    return float(fine.var() / total)


def motion(face: Face, previous: Face, interval: float) -> float:
    """Largest landmark displacement since ``previous``, in eye distances per second."""
    step = float(np.max(np.hypot(*(face.landmarks - previous.landmarks).T)))
    return step / max(face.eye_distance, 1e-6) / max(interval, 1e-6)


def assess(
    gray: np.ndarray,
    face: Face | None,
    previous: Face | None = None,
    interval: float = DEFAULT_FRAME_INTERVAL,
) -> QualityReport:
    """The quality of one frame (grey, 2-D) with its chosen face (None: none found).

    ``previous`` (the face of the frame before, ``interval`` seconds earlier)
    enables the motion test.
    """
    if face is None:
        return QualityReport((FACE_NOT_FOUND,), None)
    h, w = gray.shape[:2]
    mean, std, dark, bright = exposure(gray, face)
    p = pose_of(face.landmarks)
    m = Measures(
        eye_distance=face.eye_distance,
        outside_fraction=outside_fraction(face, w, h),
        brightness=mean,
        contrast=std,
        clipped_dark=dark,
        clipped_bright=bright,
        yaw=p.yaw,
        pitch=p.pitch,
        roll=p.roll,
        sharpness=sharpness(gray, face),
        motion=None if previous is None else motion(face, previous, interval),
    )
    return QualityReport(codes_for(m), m)


def codes_for(m: Measures) -> tuple[str, ...]:
    """The codes the measures call for, most urgent first."""
    codes = []
    if m.eye_distance < MIN_EYE_DISTANCE:
        codes.append(MOVE_CLOSER)
    if m.outside_fraction > MAX_OUTSIDE:
        codes.append(MOVE_BACK)
    low_contrast = m.contrast < MIN_CONTRAST
    if m.brightness < MIN_BRIGHTNESS or m.clipped_dark > MAX_CLIPPED or (low_contrast and m.brightness < 128):
        codes.append(TOO_DARK)
    elif m.brightness > MAX_BRIGHTNESS or m.clipped_bright > MAX_CLIPPED or (low_contrast and m.brightness >= 128):
        codes.append(TOO_BRIGHT)
    if not (abs(m.yaw) <= MAX_YAW and abs(m.pitch) <= MAX_PITCH and abs(m.roll) <= MAX_ROLL):  # NaN: not frontal
        codes.append(LOOK_AT_CAMERA)
    if (m.motion is not None and m.motion > MAX_MOTION) or m.sharpness < MIN_SHARPNESS:
        codes.append(HOLD_STILL)
    return tuple(codes)
