"""The face pipeline as named steps, each result kept for inspection.

    detect -> select -> quality -> align -> embed

``FacePipeline.analyse(frame)`` runs them in order and returns a
:class:`FaceAnalysis` holding every intermediate result (the faces found, the one
chosen, its quality report, the aligned crop, the embedding), so a session can
show the prompt of a frame and keep the embedding of a good one, and a test or a
benchmark can look at any step. Nothing here keeps a frame beyond the call or
writes anything anywhere: the caller owns what it gets back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from biometrics.face import quality as q
from biometrics.face.align import align
from biometrics.face.detect import Detector
from biometrics.face.embed import Embedder
from biometrics.face.image import as_bgr, as_gray
from biometrics.face.models import CheckedModel
from biometrics.face.types import Face

STEPS = ("detect", "select", "quality", "align", "embed")


@dataclass(frozen=True, slots=True)
class FaceAnalysis:
    """What each step made of one frame. ``embedding`` is None when not asked for or no face was found."""

    faces: list[Face]
    face: Face | None
    quality: q.QualityReport
    aligned: np.ndarray | None
    embedding: np.ndarray | None

    @property
    def code(self) -> str | None:
        """The prompt for this frame (None when it is good)."""
        return self.quality.code


def select(faces: list[Face]) -> Face | None:
    """The face the session is about: the largest (the person at the camera, not someone passing behind)."""
    return max(faces, key=lambda f: f.area) if faces else None


class FacePipeline:
    """Both models loaded once (checked on load); one instance per thread, like the OpenCV nets it holds."""

    def __init__(self, detector_model: CheckedModel | None = None, embedder_model: CheckedModel | None = None):
        self.detector = Detector(detector_model)
        self.embedder = Embedder(embedder_model)

    def analyse(
        self,
        frame: np.ndarray,
        previous: Face | None = None,
        interval: float = q.DEFAULT_FRAME_INTERVAL,
        embed: bool = True,
    ) -> FaceAnalysis:
        """Run the steps on one frame; ``embed=False`` stops after quality (feedback-only frames are cheaper)."""
        bgr = as_bgr(frame)
        faces = self.detector.detect(bgr)
        face = select(faces)
        report = q.assess(as_gray(bgr), face, previous=previous, interval=interval)
        if face is None or not embed:
            return FaceAnalysis(faces, face, report, None, None)
        aligned = align(bgr, face)
        return FaceAnalysis(faces, face, report, aligned, self.embedder.embed(aligned))
