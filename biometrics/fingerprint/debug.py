"""Every intermediate result of one extraction, for a person tuning the pipeline.

As SourceAFIS's transparency API does: the same code path as :func:`extract`
(the template is identical), but keeping what each step produced: the image at
500 dpi, the segmentation mask, the orientation field and its coherence, the
contextually enhanced image, the binary ridges, the skeleton, and the minutiae
before and after each cleanup. ``python -m bench.fingerprint --explain IMAGE
--out DIR`` writes them as PNG images. Nothing here logs or stores anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from biometrics.fingerprint.extract import analyse, template_from_minutiae
from biometrics.fingerprint.minutiae import detect_stages
from biometrics.fingerprint.quality import QualityReport, assess
from biometrics.fingerprint.types import FingerprintTemplate, Minutiae

STAGES = ("candidates", "inside", "cleaned", "final")


@dataclass(frozen=True)
class Explanation:
    """Intermediate results of one extraction, all at 500 dpi (``scale`` input pixels to 500-dpi pixels)."""

    image: np.ndarray  # uint8, the input resampled to 500 dpi
    scale: float
    mask: np.ndarray  # bool, foreground
    orientation: np.ndarray  # float32, ridge direction in [0, pi), image coordinates (y down)
    coherence: np.ndarray  # float32 0..1
    period: float  # ridge period, pixels
    normalised: np.ndarray  # float32, zero local mean, unit local deviation
    enhanced: np.ndarray  # float32, contextual (Gabor) filter output, negative on ridges
    ridges: np.ndarray  # uint8 0/1
    skeleton: np.ndarray  # uint8 0/1
    minutiae: dict[str, Minutiae]  # by stage name, see STAGES
    quality: QualityReport
    template: FingerprintTemplate  # exactly what extract() returns


def explain(image: np.ndarray, resolution_dpi: int = 500) -> Explanation:
    """Extract ``image`` and keep every intermediate result (see :class:`Explanation`)."""
    analysis = analyse(image, resolution_dpi)
    detection = detect_stages(analysis, trace=True)
    quality = assess(analysis)
    return Explanation(
        image=analysis.image,
        scale=analysis.scale,
        mask=analysis.mask,
        orientation=analysis.ridge_direction,
        coherence=analysis.coherence,
        period=float(analysis.period),
        normalised=analysis.normalised,
        enhanced=detection.enhanced,
        ridges=detection.ridges,
        skeleton=detection.skeleton,
        minutiae={name: detection.stages[name] for name in STAGES},
        quality=quality,
        template=template_from_minutiae(analysis, detection.minutiae, quality),
    )
