"""Public entry points for one capture: analyse once, then quality and template.

A capture loop calls :func:`analyse`, looks at :func:`quality_of`, and only
builds the template (:func:`template_of`) for a good enough capture; the costly
shared steps (segmentation, orientation, coherence) run once.
"""

from __future__ import annotations

import numpy as np

from biometrics.fingerprint.enhance import Analysis, analyse_reference
from biometrics.fingerprint.image import check_image, to_reference_resolution
from biometrics.fingerprint.minutiae import detect
from biometrics.fingerprint.quality import QualityReport, assess
from biometrics.fingerprint.types import FingerprintTemplate, Minutiae


def analyse(image: np.ndarray, resolution_dpi: int = 500, *, allow_blank: bool = False) -> Analysis:
    """Check the image, bring it to 500 dpi and compute the shared intermediate results."""
    img = check_image(image, resolution_dpi, allow_blank=allow_blank)
    ref, scale = to_reference_resolution(img, int(resolution_dpi))
    return analyse_reference(np.ascontiguousarray(ref), scale)


def quality_of(analysis: Analysis) -> QualityReport:
    return assess(analysis)


def template_of(
    analysis: Analysis, width: int, height: int, resolution_dpi: int, quality: QualityReport | None = None
) -> FingerprintTemplate:
    """Template in the input image's pixel coordinates."""
    found = detect(analysis)
    s = analysis.scale
    minutiae = Minutiae(
        x=(found.x / s).astype(np.float32),
        y=(found.y / s).astype(np.float32),
        angle=found.angle,
        kind=found.kind,
        quality=found.quality,
    )
    q = quality if quality is not None else assess(analysis)
    return FingerprintTemplate(
        width=int(width),
        height=int(height),
        resolution_dpi=int(resolution_dpi),
        minutiae=minutiae,
        quality=q.score,
    )


def extract(image: np.ndarray, resolution_dpi: int = 500) -> FingerprintTemplate:
    """Minutiae template of an 8-bit greyscale fingerprint image.

    Raises FingerprintImageError (a ValueError) for an unusable image.
    """
    analysis = analyse(image, resolution_dpi)
    h, w = analysis_shape(image)
    return template_of(analysis, w, h, int(resolution_dpi))


def assess_quality(image: np.ndarray, resolution_dpi: int = 500) -> QualityReport:
    """Quality score and feedback; an empty sensor is a score of 0 with ``place_finger``."""
    return assess(analyse(image, resolution_dpi, allow_blank=True))


def analysis_shape(image: np.ndarray) -> tuple[int, int]:
    return int(image.shape[0]), int(image.shape[1])
