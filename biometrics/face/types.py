"""Value types shared by the face steps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Order of YuNet's five landmarks (image left/right as seen in the frame, not the person's own side).
LANDMARKS = ("eye_left", "eye_right", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True, slots=True)
class Face:
    """One detected face, in the coordinates of the frame given to the detector.

    ``box`` is (x, y, width, height); ``landmarks`` is a (5, 2) float32 array in
    the order of :data:`LANDMARKS`; ``score`` is the detector's confidence in [0, 1].
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    @property
    def eye_distance(self) -> float:
        """Pixels between the two eye landmarks: the scale of the face for every size test."""
        return float(np.hypot(*(self.landmarks[1] - self.landmarks[0])))

    @property
    def area(self) -> float:
        return float(self.box[2] * self.box[3])
