"""Public entry points for one capture: analyse once, then quality and template.

A capture loop calls :func:`analyse`, looks at :func:`quality_of`, and only
builds the template (:func:`template_of`) for a good enough capture; the costly
shared steps (segmentation, orientation, coherence) run once.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from biometrics.fingerprint.enhance import Analysis, analyse_reference
from biometrics.fingerprint.image import check_image, to_reference_resolution
from biometrics.fingerprint.minutiae import detect
from biometrics.fingerprint.orientation_field import from_maps
from biometrics.fingerprint.quality import QualityReport, assess
from biometrics.fingerprint.types import FingerprintTemplate, Minutiae


def analyse(image: np.ndarray, resolution_dpi: int = 500, *, allow_blank: bool = False) -> Analysis:
    """Check the image, bring it to 500 dpi and compute the shared intermediate results."""
    img = check_image(image, resolution_dpi, allow_blank=allow_blank)
    ref, scale = to_reference_resolution(img, int(resolution_dpi))
    analysis = analyse_reference(np.ascontiguousarray(ref), scale)
    h, w = img.shape
    return replace(analysis, source_width=int(w), source_height=int(h), source_dpi=int(resolution_dpi))


def quality_of(analysis: Analysis) -> QualityReport:
    """Quality score and feedback of an analysed capture."""
    return assess(analysis)


def template_of(analysis: Analysis, quality: QualityReport | None = None) -> FingerprintTemplate:
    """Template in the input image's pixel coordinates (pass ``quality`` if already computed)."""
    return template_from_minutiae(analysis, detect(analysis), quality)


def template_from_minutiae(
    analysis: Analysis, found: Minutiae, quality: QualityReport | None = None
) -> FingerprintTemplate:
    """Template of minutiae found at 500 dpi, brought back to the input image's pixel coordinates."""
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
        width=analysis.source_width,
        height=analysis.source_height,
        resolution_dpi=analysis.source_dpi,
        minutiae=minutiae,
        quality=q.score,
        orientation=from_maps(analysis.orientation, analysis.coherence, analysis.mask),
    )


def extract(image: np.ndarray, resolution_dpi: int = 500) -> FingerprintTemplate:
    """Minutiae template of an 8-bit greyscale fingerprint image.

    Raises FingerprintImageError (a ValueError) for an unusable image.
    """
    return template_of(analyse(image, resolution_dpi))


def extract_with_quality(image: np.ndarray, resolution_dpi: int = 500) -> tuple[FingerprintTemplate, QualityReport]:
    """Template and quality of one capture from a single analysis."""
    analysis = analyse(image, resolution_dpi)
    quality = assess(analysis)
    return template_of(analysis, quality), quality


def assess_quality(image: np.ndarray, resolution_dpi: int = 500) -> QualityReport:
    """Quality score and feedback; an empty sensor is a score of 0 with ``place_finger``."""
    return assess(analyse(image, resolution_dpi, allow_blank=True))
