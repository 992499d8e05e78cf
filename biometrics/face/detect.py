"""Face detection with five landmarks (YuNet through ``cv2.FaceDetectorYN``).

Small frames. A frame whose short side is under two recogniser inputs (224 px)
is taken to be a face crop (an ID photo, a data-set image such as ORL's 92x112)
rather than a scene: its face fills most of it and touches its borders, which
the detector, trained on faces with context around them, localises poorly. Such
a frame is padded by a quarter of each side with its replicated border (so a
face filling the crop fills at most two thirds of the padded frame) and then
upscaled by the smallest integer factor that brings its short side to at least
the recogniser's input (112 px): the landmarks that drive alignment are then
located on a face at least as large as the crop SFace sees, not on one smaller
than it. Camera frames (short side >= 224) are detected as they are. Landmarks
and boxes are always returned in the coordinates of the frame given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from biometrics.face import models
from biometrics.face.image import as_bgr
from biometrics.face.types import Face

RECOGNISER_INPUT = 112  # SFace's aligned crop is 112x112
CROP_MODE_BELOW = 2 * RECOGNISER_INPUT  # short side under which a frame is a face crop, not a scene
CROP_PAD = 0.25  # replicated border added to each side of a face crop, as a fraction of that side
SCORE_THRESHOLD = 0.6  # YuNet's own default confidence for a face
NMS_THRESHOLD = 0.3
TOP_K = 50


@dataclass(frozen=True, slots=True)
class Geometry:
    """How a frame was prepared for the detector: prepared = (frame + pad) * scale."""

    pad_x: int
    pad_y: int
    scale: int

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        """Map (..., 2) points of the prepared frame back to the original frame."""
        return points / self.scale - np.array([self.pad_x, self.pad_y], np.float32)


def geometry_for(width: int, height: int) -> Geometry:
    """The padding and integer upscale a frame of this size gets before detection (see module docstring)."""
    short = min(width, height)
    if short >= CROP_MODE_BELOW:
        return Geometry(0, 0, 1)
    return Geometry(
        pad_x=round(CROP_PAD * width),
        pad_y=round(CROP_PAD * height),
        scale=max(1, math.ceil(RECOGNISER_INPUT / short)),
    )


def prepare(frame: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The frame the detector sees: padded with its replicated border, then upscaled (bilinear)."""
    out = frame
    if geometry.pad_x or geometry.pad_y:
        out = cv2.copyMakeBorder(
            out, geometry.pad_y, geometry.pad_y, geometry.pad_x, geometry.pad_x, cv2.BORDER_REPLICATE
        )
    if geometry.scale != 1:
        out = cv2.resize(out, None, fx=geometry.scale, fy=geometry.scale, interpolation=cv2.INTER_LINEAR)
    return out


class Detector:
    """YuNet loaded once from its checked bytes; one instance per thread (OpenCV nets are not thread-safe)."""

    def __init__(self, model: models.CheckedModel | None = None, score_threshold: float = SCORE_THRESHOLD) -> None:
        checked = models.check(models.YUNET) if model is None else model
        if checked.spec != models.YUNET:
            raise models.FaceModelError(f"the detector runs {models.YUNET.name}, not {checked.spec.name}")
        self._net = cv2.FaceDetectorYN.create(
            "onnx", np.frombuffer(checked.data, np.uint8), np.empty(0, np.uint8), (320, 320), score_threshold,
            NMS_THRESHOLD, TOP_K,
        )
        self._size: tuple[int, int] = (320, 320)

    def detect(self, frame: np.ndarray) -> list[Face]:
        """Every face in the frame, largest first, in the frame's own coordinates."""
        bgr = as_bgr(frame)
        geometry = geometry_for(bgr.shape[1], bgr.shape[0])
        image = prepare(bgr, geometry)
        size = (image.shape[1], image.shape[0])
        if size != self._size:
            self._net.setInputSize(size)
            self._size = size
        _, raw = self._net.detect(image)
        if raw is None:
            return []
        raw = np.asarray(raw, np.float32).reshape(-1, 15)
        boxes = geometry.to_frame(raw[:, 0:4].reshape(-1, 2, 2))
        boxes[:, 1] = raw[:, 2:4] / geometry.scale  # width and height only scale, they do not shift
        marks = geometry.to_frame(raw[:, 4:14].reshape(-1, 5, 2))
        faces = [
            Face(box=boxes[i].reshape(4).astype(np.float32), landmarks=marks[i].astype(np.float32),
                 score=float(raw[i, 14]))
            for i in range(len(raw))
        ]
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces
