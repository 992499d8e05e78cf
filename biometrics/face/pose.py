"""Head pose from the five landmarks: yaw, pitch and roll in degrees, approximately.

Roll is the angle of the line through the eyes. With the landmarks rotated so
that line is level, a turn of the head moves the nose tip, which stands in front
of the eyes' plane, sideways against the eyes' midpoint (yaw) and up or down
against the eyes-to-mouth line (pitch), while the eye distance and the
eyes-to-mouth distance shrink by the cosine of the angle. With the nose tip's
depth taken as half the eye distance (adult anthropometry: ~30 mm against ~63 mm
between the pupils), the offset over the eye distance is 0.5 * tan(yaw); the
same depth over the eyes-to-mouth distance (1.155 eye distances on SFace's
template) gives pitch. These are estimates for prompts and for the liveness
challenge (a turn of the head, left or right), not a measurement of the head.

Signs, for a camera that does not mirror: yaw > 0 when the nose moves towards
the image's right, i.e. the person turns to their own left; pitch > 0 when the
person looks down; roll > 0 when the head tilts clockwise in the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from biometrics.face.align import TEMPLATE

NOSE_DEPTH_OVER_EYES = 0.5
_EYE_MID = (TEMPLATE[0] + TEMPLATE[1]) / 2
_MOUTH_MID = (TEMPLATE[3] + TEMPLATE[4]) / 2
_FRONTAL_NOSE_ROW = float((TEMPLATE[2, 1] - _EYE_MID[1]) / (_MOUTH_MID[1] - _EYE_MID[1]))  # 0.495
_EYES_TO_MOUTH_OVER_EYES = float((_MOUTH_MID[1] - _EYE_MID[1]) / np.hypot(*(TEMPLATE[1] - TEMPLATE[0])))


@dataclass(frozen=True, slots=True)
class Pose:
    """Head orientation in degrees (see the module docstring for signs)."""

    yaw: float
    pitch: float
    roll: float


def pose_of(landmarks: np.ndarray) -> Pose:
    """Estimate the pose from a (5, 2) landmark array in YuNet's order."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    eye_vec = lm[1] - lm[0]
    eye_dist = float(np.hypot(*eye_vec))
    if not math.isfinite(eye_dist) or eye_dist < 1e-6:
        return Pose(float("nan"), float("nan"), float("nan"))
    roll = math.atan2(eye_vec[1], eye_vec[0])
    c, s = math.cos(-roll), math.sin(-roll)
    level = (lm - lm[:2].mean(0)) @ np.array([[c, s], [-s, c]])  # rotated by -roll about the eyes' midpoint
    nose = level[2]
    mouth_row = float((level[3, 1] + level[4, 1]) / 2)
    yaw = math.degrees(math.atan2(nose[0] / eye_dist, NOSE_DEPTH_OVER_EYES))
    if mouth_row > 1e-6:
        offset = nose[1] / mouth_row - _FRONTAL_NOSE_ROW
        pitch = math.degrees(math.atan2(offset, NOSE_DEPTH_OVER_EYES / _EYES_TO_MOUTH_OVER_EYES))
    else:
        pitch = float("nan")
    return Pose(yaw=yaw, pitch=pitch, roll=math.degrees(roll))
