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
than it. Camera frames (short side >= 224) are detected as they are.

Large frames. The detector's cost grows with the frame's area (16-19 ms for
640x480 on one core). A frame whose short side is at least 448 px is first
searched at half size: the smallest face the quality gate accepts (23.5 px
between the eyes, a box of about 55 px) is then still about 28 px, above
YuNet's reliable minimum of about 20 px (its finest anchors have a stride of 8).
Landmarks found at half size would be half as precise, so each of the largest
faces is located again on a full-resolution region twice its size around it
(scaled down by an integer factor only when that region's short side exceeds
448 px, where the face's landmarks are already far larger than the 112 px crop
needs). The half-size pass keeps candidates down to half the detector's
threshold, since a small face loses evidence at half size; the full-resolution
pass on its region then accepts or drops each with the ordinary threshold.
Landmarks and boxes are always returned in the coordinates of the frame given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from biometrics.face import models
from biometrics.face.image import MIN_SIDE, as_bgr
from biometrics.face.types import Face

RECOGNISER_INPUT = 112  # SFace's aligned crop is 112x112
CROP_MODE_BELOW = 2 * RECOGNISER_INPUT  # short side under which a frame is a face crop, not a scene
CROP_PAD = 0.25  # replicated border added to each side of a face crop, as a fraction of that side
SCORE_THRESHOLD = 0.6  # YuNet's own default confidence for a face
NMS_THRESHOLD = 0.3
TOP_K = 50
COARSE_FROM = 2 * CROP_MODE_BELOW  # short side from which a frame is first searched at half size
MAX_REFINED = 3  # faces located again at full resolution (the session uses the largest)
COARSE_SCORE = 0.5  # the half-size pass keeps candidates down to half the threshold; full resolution decides


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
        # OpenCV 5's new engine warns on stderr that it ignores the target FaceDetectorYN sets (CPU, the
        # default anyway): a line every kiosk log and terminal would show for nothing. Quiet for the load only.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(min(level, cv2.utils.logging.LOG_LEVEL_ERROR))
        try:
            self._net = cv2.FaceDetectorYN.create(
                "onnx", np.frombuffer(checked.data, np.uint8), np.empty(0, np.uint8), (320, 320), score_threshold,
                NMS_THRESHOLD, TOP_K,
            )
        finally:
            cv2.utils.logging.setLogLevel(level)
        self._size: tuple[int, int] = (320, 320)
        self._score = float(score_threshold)

    def detect(self, frame: np.ndarray) -> list[Face]:
        """Every face in the frame, largest first, in the frame's own coordinates.

        A large frame (short side >= COARSE_FROM) is searched at half size, and
        the largest MAX_REFINED faces found are located again at full resolution
        on a region around each (see the module docstring).
        """
        bgr = as_bgr(frame)
        if min(bgr.shape[:2]) < COARSE_FROM:
            return self._detect(bgr)
        half = cv2.resize(bgr, (bgr.shape[1] // 2, bgr.shape[0] // 2), interpolation=cv2.INTER_AREA)
        self._net.setScoreThreshold(self._score * COARSE_SCORE)
        try:
            coarse = [_mapped(f, 2.0, (0.0, 0.0)) for f in self._run(half, Geometry(0, 0, 1))]
        finally:
            self._net.setScoreThreshold(self._score)
        coarse.sort(key=lambda f: f.area, reverse=True)
        refined = [self._refine(bgr, f) for f in coarse[:MAX_REFINED]]
        rest = [f for f in coarse[MAX_REFINED:] if f.score >= self._score]
        faces = [f for f in refined if f is not None] + rest
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces

    def _refine(self, bgr: np.ndarray, face: Face) -> Face | None:
        """The face located again on a full-resolution region twice its size.

        Not found there: the coarse face if its score passes the full threshold, else None.
        """
        x, y, w, h = (float(v) for v in face.box)
        side = 2.0 * max(w, h)
        cx, cy = x + w / 2, y + h / 2
        x0, y0 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
        x1, y1 = min(bgr.shape[1], int(cx + side / 2)), min(bgr.shape[0], int(cy + side / 2))
        fallback = face if face.score >= self._score else None
        if min(x1 - x0, y1 - y0) < MIN_SIDE:
            return fallback
        region = bgr[y0:y1, x0:x1]
        step = max(1, min(region.shape[:2]) // CROP_MODE_BELOW)  # keep the region's short side under 448 px
        if step > 1:
            size = (region.shape[1] // step, region.shape[0] // step)
            region = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
        found = [_mapped(f, float(step), (float(x0), float(y0))) for f in self._detect(region)]
        if not found:
            return fallback
        best = min(found, key=lambda f: float(np.hypot(*(_centre(f) - _centre(face)))))
        near = float(np.hypot(*(_centre(best) - _centre(face)))) < 0.5 * max(w, h)
        return best if near else fallback

    def _detect(self, bgr: np.ndarray) -> list[Face]:
        """One detector pass over a validated frame, prepared by geometry_for."""
        faces = self._run(prepare(bgr, geometry := geometry_for(bgr.shape[1], bgr.shape[0])), geometry)
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces

    def _run(self, image: np.ndarray, geometry: Geometry) -> list[Face]:
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
        return [
            Face(box=boxes[i].reshape(4).astype(np.float32), landmarks=marks[i].astype(np.float32),
                 score=float(raw[i, 14]))
            for i in range(len(raw))
        ]


def _centre(face: Face) -> np.ndarray:
    return face.box[:2] + face.box[2:] / 2


def _mapped(face: Face, factor: float, offset: tuple[float, float]) -> Face:
    """The face in the coordinates of a frame where its own frame is scaled by ``factor`` and placed at ``offset``."""
    off = np.array(offset, np.float32)
    box = np.concatenate([face.box[:2] * factor + off, face.box[2:] * factor]).astype(np.float32)
    return Face(box=box, landmarks=(face.landmarks * factor + off).astype(np.float32), score=face.score)
