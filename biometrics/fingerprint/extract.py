"""Public entry points for one capture: analyse once, then quality and template.

A capture loop calls :func:`analyse`, looks at :func:`quality_of`, and only
builds the template (:func:`template_of`) for a good enough capture; the costly
shared steps (segmentation, orientation, coherence) run once.
"""

from __future__ import annotations

import ctypes
import platform
import sys
from dataclasses import replace

import numpy as np

from biometrics.fingerprint.enhance import Analysis, analyse_reference
from biometrics.fingerprint.image import check_image, to_reference_resolution
from biometrics.fingerprint.minutiae import detect
from biometrics.fingerprint.quality import QualityReport, assess
from biometrics.fingerprint.types import FingerprintTemplate, Minutiae

# glibc's mallopt parameters (malloc.h) and the values set once per process.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_BLOCKS_BELOW = 4 << 20  # arrays under 4 MB come from the heap, not from fresh mappings
HEAP_KEPT = 32 << 20  # up to 32 MB of freed heap is kept for the next capture
_allocator_tuned = False


def keep_freed_memory() -> bool:
    """Let glibc reuse the memory one extraction frees for the next one; True if it was set.

    An extraction allocates and frees a few dozen image-sized arrays (about 10 MB
    at 500 dpi). With glibc's defaults the top of the heap is handed back to the
    kernel after each capture and taken again by the next, and every new page
    costs a fault: about 1,200 faults and 15 % of the extraction time on a
    388x374 image. Blocks under HEAP_BLOCKS_BELOW from the heap and up to
    HEAP_KEPT of it kept make them go away. Runs once per process (on the first
    analysis) and only where glibc is the C library; it changes no result.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return False
    _allocator_tuned = True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCKS_BELOW)) and bool(mallopt(_M_TRIM_THRESHOLD, HEAP_KEPT))


def analyse(image: np.ndarray, resolution_dpi: int = 500, *, allow_blank: bool = False) -> Analysis:
    """Check the image, bring it to 500 dpi and compute the shared intermediate results."""
    keep_freed_memory()
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
