"""Face algorithms: detection with five landmarks, quality, alignment, embedding, liveness logic.

Pure numpy/OpenCV plus two model files read (and checked) from an installed
wheel by :mod:`biometrics.face.models`; nothing here logs, writes or keeps a
frame. The same embedding is made on the device and compared on the verifier.

Entry points: :class:`FacePipeline` (``analyse(frame)`` runs detect, select,
quality, align, embed and keeps each result), :func:`assess` for quality codes
alone, :func:`challenge_for` and :class:`LivenessTracker` for the active
liveness challenge, :func:`cosine_scores` and :func:`threshold_for_fmr` for
matching.
"""

from biometrics.face.calibration import threshold_for_fmr
from biometrics.face.errors import EmbeddingError, FaceError, FaceImageError, FaceModelError, LivenessError
from biometrics.face.liveness import Challenge, LivenessState, LivenessTracker, challenge_for
from biometrics.face.match import check_embedding, cosine, cosine_scores
from biometrics.face.pipeline import STEPS, FaceAnalysis, FacePipeline
from biometrics.face.pose import Pose, pose_of
from biometrics.face.quality import CODES, QualityReport, assess
from biometrics.face.types import Face

__all__ = [
    "CODES",
    "STEPS",
    "Challenge",
    "EmbeddingError",
    "Face",
    "FaceAnalysis",
    "FaceError",
    "FaceImageError",
    "FaceModelError",
    "FacePipeline",
    "LivenessError",
    "LivenessState",
    "LivenessTracker",
    "Pose",
    "QualityReport",
    "assess",
    "challenge_for",
    "check_embedding",
    "cosine",
    "cosine_scores",
    "pose_of",
    "threshold_for_fmr",
]
