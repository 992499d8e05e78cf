"""Every intermediate result of one extraction, and every factor of one comparison, for a person tuning the pipeline.

As SourceAFIS's transparency API does: the same code path as :func:`extract`
(the template is identical), but keeping what each step produced: the image at
500 dpi, the segmentation mask, the orientation field and its coherence, the
contextually enhanced image, the binary ridges, the skeleton, and the minutiae
before and after each cleanup. ``python -m bench.fingerprint --explain IMAGE
--out DIR`` writes them as PNG images.

:func:`explain_comparison` does the same for the matcher: the score of
:func:`biometrics.fingerprint.match` and what it is made of (the LSS-R evidence,
the alignment, the minutiae paired under it and the common region, the
orientation-field agreement and its factor), so that a pair that fails can be
told apart from one that should (``python -m bench.fingerprint ... --hardest K``
lists them for a benchmark's weakest genuine and strongest impostor pairs).
Nothing here logs or stores anything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from biometrics.fingerprint import mcc_match, orientation_field
from biometrics.fingerprint.extract import analyse, template_from_minutiae
from biometrics.fingerprint.matcher import cylinders_of
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


@dataclass(frozen=True)
class ComparisonExplanation:
    """Each factor of one comparison's score, probe ``a`` against gallery ``b`` (see :mod:`mcc_match`).

    ``score`` is ``max(sqrt(lss_excess * paired_fraction) * field_factor, second_pass)``,
    exactly what :func:`biometrics.fingerprint.match` returns (the factors are the
    first pass's). Positions are 500-dpi pixels.
    """

    score: float
    minutiae: tuple[int, int]  # minutiae compared (those with a cylinder), probe and gallery
    lss_excess: float  # LSS-R evidence above the impostor centre; at 0 the comparison stops there (score 0)
    paired_fraction: float  # minutiae paired under the alignment, over the common region (global_pairing)
    paired: np.ndarray  # float32 (k, 4): probe x, y and gallery x, y of each paired minutia
    overlap: tuple[int, int]  # minutiae of the probe and of the gallery print in the common region
    rotation_degrees: float | None  # the alignment turns the probe by this, counter-clockwise as seen; None if none
    translation: tuple[float, float] | None  # where the probe's origin lands in the gallery print
    # Weighted share of agreeing orientation-field blocks; None when LSS-R found no evidence (nothing compared),
    # orientation_field.MISSING_AGREEMENT when either print has no field (see field_measured).
    field_share: float | None
    field_factor: float  # the score's multiplier for it (orientation_field.factor; 1 when not compared)
    field_measured: bool  # both prints carry a field (otherwise MISSING_AGREEMENT stood in for the share)
    # mcc_match's second pass: SECOND_PASS_WEIGHT x the score of the aligned pairs alone (0 when not run)
    second_pass: float = 0.0


def explain_comparison(a: FingerprintTemplate | Minutiae, b: FingerprintTemplate | Minutiae) -> ComparisonExplanation:
    """Compare ``a`` (probe) with ``b`` (gallery), keeping each factor of the score (:class:`ComparisonExplanation`)."""
    ca, cb = cylinders_of(a), cylinders_of(b)
    counts = (len(ca), len(cb))
    nothing = ComparisonExplanation(
        0.0, counts, 0.0, 0.0, np.zeros((0, 4), np.float32), (0, 0), None, None, None, 1.0, False
    )
    if len(ca) == 0 or len(cb) == 0:
        return nothing
    gallery = mcc_match.pack([cb])
    found: dict[str, np.ndarray] = {}
    score = float(mcc_match.consolidate(mcc_match.local_similarity(ca, gallery), ca, gallery, found)[0])
    excess = float(found["excess"][0])
    if excess <= 0.0:  # no LSS-R evidence: no alignment, no pairing, no field (score 0)
        return replace(nothing, score=score)
    rotation = complex(found["rotation"][0])
    rotation /= abs(rotation)
    # A probe point z lands on rotation * (z - probe_anchor) + gallery_anchor; with y down, a rotation
    # factor of angle phi turns the print clockwise as seen: counter-clockwise is -phi.
    origin = -rotation * complex(found["probe_anchor"][0]) + complex(found["gallery_anchor"][0])
    paired = found["paired_probe"][0]
    partner = found["partner"][0][paired]
    gallery_pos = gallery.pos[0][partner]
    pairs = np.stack([ca.x[paired], ca.y[paired], gallery_pos.real, gallery_pos.imag], axis=1).astype(np.float32)
    share = float(found["share"][0])
    measured = ca.field is not None and bool(gallery.has_field[0])
    return ComparisonExplanation(
        score=score,
        minutiae=counts,
        lss_excess=excess,
        paired_fraction=float(found["fraction"][0]),
        paired=pairs,
        overlap=(int(found["overlap_probe"][0]), int(found["overlap_gallery"][0])),
        rotation_degrees=float(-np.degrees(np.angle(rotation))),
        translation=(origin.real, origin.imag),
        field_share=share,
        field_factor=float(orientation_field.factor(np.array([share]))[0]),
        field_measured=measured,
        second_pass=float(found["second"][0]),
    )
