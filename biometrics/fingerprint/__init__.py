"""Fingerprint algorithms: enhancement, minutiae extraction, quality, matching.

Pure numpy/OpenCV: nothing here does I/O, so the same code runs on the device
(extraction) and on the verifier (matching).

Entry points: :func:`extract`, :func:`assess_quality` (or :func:`analyse` once,
then :func:`quality_of` and :func:`template_of`), :func:`match`,
:func:`threshold_for_fmr` and :class:`GalleryIndex`.
"""

from biometrics.fingerprint.calibration import threshold_for_fmr
from biometrics.fingerprint.errors import FingerprintError, FingerprintImageError, TemplateError
from biometrics.fingerprint.extract import (
    analyse,
    assess_quality,
    extract,
    extract_with_quality,
    quality_of,
    template_of,
)
from biometrics.fingerprint.matcher import GalleryIndex, match
from biometrics.fingerprint.quality import QualityReport
from biometrics.fingerprint.types import FingerprintTemplate, Minutiae

__all__ = [
    "FingerprintError",
    "FingerprintImageError",
    "FingerprintTemplate",
    "GalleryIndex",
    "Minutiae",
    "QualityReport",
    "TemplateError",
    "analyse",
    "assess_quality",
    "extract",
    "extract_with_quality",
    "match",
    "quality_of",
    "template_of",
    "threshold_for_fmr",
]
