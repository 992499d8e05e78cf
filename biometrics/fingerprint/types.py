"""The minutiae representation shared by extraction, templates, matching and simulators.

A structure of arrays rather than a list of objects: matching and 1:N search work
on whole arrays at once, so the template is kept in the shape they need.

Conventions (every module that produces or consumes minutiae follows them):

* ``x``, ``y``: pixel coordinates, origin at the top-left corner, y pointing down.
* ``angle``: radians in [0, 2*pi), counter-clockwise from the image x-axis as a
  person sees the image, so the direction vector in pixel coordinates is
  ``(cos(angle), -sin(angle))``. For a ridge ending it points from the ending into
  the ridge; for a bifurcation it points from the fork between the two branches.
  With this choice an ending in an image becomes a bifurcation with the same angle
  in the inverted image (ridge/valley duality).
* ``kind``: the ISO/IEC 19794-2 minutia type code (1 ending, 2 bifurcation, 0 other).
* ``quality``: 0 to 100, as in ISO/IEC 19794-2: the extractor's estimated chance,
  in percent, that the minutia recurs in another impression (templates made
  before this rule carry the older coherence-based value; re-enrol to refresh).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KIND_OTHER = 0
KIND_ENDING = 1
KIND_BIFURCATION = 2


@dataclass(frozen=True, slots=True)
class Minutiae:
    """Minutiae of one impression, as parallel arrays of equal length."""

    x: np.ndarray  # float32
    y: np.ndarray  # float32
    angle: np.ndarray  # float32, radians
    kind: np.ndarray  # uint8
    quality: np.ndarray  # uint8

    def __post_init__(self) -> None:
        n = len(self.x)
        if not (len(self.y) == len(self.angle) == len(self.kind) == len(self.quality) == n):
            raise ValueError("minutiae arrays must all have the same length")

    def __len__(self) -> int:
        return len(self.x)

    @classmethod
    def empty(cls) -> Minutiae:
        return cls(
            x=np.zeros(0, np.float32),
            y=np.zeros(0, np.float32),
            angle=np.zeros(0, np.float32),
            kind=np.zeros(0, np.uint8),
            quality=np.zeros(0, np.uint8),
        )


@dataclass(frozen=True, slots=True)
class OrientationField:
    """The print's coarse ridge orientation: one doubled angle and coherence per block of 500-dpi pixels.

    Minutiae alone cannot tell a genuine mate with few reliable minutiae (a dry,
    speckled or small print) from an impostor whose few look-alike minutiae fooled
    the alignment; the orientation field over the overlap can (genuine prints agree
    nearly everywhere under the right alignment, impostors do not):
    :mod:`biometrics.fingerprint.orientation_field`. Kept coarse and quantised
    (2 bytes per block of ``block`` x ``block`` pixels, about 650 bytes for a
    300 x 300 image) because it travels with every template.

    * ``angle``: uint8 (rows, columns), the doubled gradient direction 2*theta in
      units of 2*pi/256 (theta in [0, pi) measured in image coordinates, y down).
    * ``coherence``: uint8 (rows, columns), 0 on background blocks, else 1..255
      for the coherence-weighted mean over the block's foreground pixels.
    """

    block: int  # block side, pixels at 500 dpi
    angle: np.ndarray  # uint8 (rows, columns)
    coherence: np.ndarray  # uint8 (rows, columns); 0 = background

    def __post_init__(self) -> None:
        if self.angle.shape != self.coherence.shape or self.angle.ndim != 2:
            raise ValueError("orientation angle and coherence must be 2-D arrays of the same shape")
        if self.block <= 0:
            raise ValueError("orientation block size must be positive")


@dataclass(frozen=True, slots=True)
class FingerprintTemplate:
    """What leaves the device for one finger: minutiae plus the image geometry."""

    width: int
    height: int
    resolution_dpi: int
    minutiae: Minutiae
    quality: int = 0  # 0..100, the impression's overall quality
    finger_position: int = 0  # ISO/IEC 19794-2 finger position code, 0 = unknown
    orientation: OrientationField | None = None  # None in templates made before it (they still match)
