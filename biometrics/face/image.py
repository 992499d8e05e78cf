"""Frame validation: what the face algorithms accept, refused early with a typed error."""

from __future__ import annotations

import cv2
import numpy as np

from biometrics.face.errors import FaceImageError

MIN_SIDE = 32  # below this no face the detector finds can be embedded usefully
MAX_SIDE = 4096  # a 4K camera frame; larger is a misconfigured source, not a face


def as_bgr(frame: object) -> np.ndarray:
    """The frame as a contiguous 8-bit BGR array (grey and BGRA are converted; anything else is refused)."""
    if not isinstance(frame, np.ndarray):
        raise FaceImageError(f"a frame must be a numpy array, got {type(frame).__name__}; decode the image first")
    if frame.dtype != np.uint8:
        raise FaceImageError(f"a frame must be 8-bit (uint8), got {frame.dtype}; convert it with cv2.convertScaleAbs")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        out = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.ndim == 3 and frame.shape[2] == 3:
        out = np.ascontiguousarray(frame)
    elif frame.ndim == 3 and frame.shape[2] == 4:
        out = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    else:
        raise FaceImageError(f"a frame must be HxW, HxWx3 (BGR) or HxWx4, got shape {frame.shape}")
    h, w = out.shape[:2]
    if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE:
        raise FaceImageError(
            f"frame of {w}x{h} pixels is outside {MIN_SIDE}..{MAX_SIDE} per side; set the camera to a size in range"
        )
    return out


def as_gray(frame: np.ndarray) -> np.ndarray:
    """A validated BGR frame as 8-bit grey."""
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
