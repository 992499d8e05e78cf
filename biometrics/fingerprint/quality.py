"""Capture quality: a 0..100 score and what the person should do about a low one.

The score is built from what makes minutiae unreliable, measured on the shared
Analysis (no extra image passes):

* contact area: the foreground's share of the image and its size in mm²
  (fewer than ~40 mm² hold too few minutiae to match reliably);
* clarity: mean orientation coherence over the foreground (clean parallel ridges
  give 0.5..0.8, smudges, dry breaks and motion blur much less);
* position: how far the foreground's centre is from the image centre while part
  of the finger is cut off by the image edge;
* ridge structure: a surface without ridges at fingerprint frequencies (a flat
  object, a smooth gradient, a fine regular texture) is not a finger.

Feedback codes are only those of the project's vocabulary (DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from biometrics.fingerprint.enhance import Analysis

MM_PER_INCH = 25.4
GOOD_AREA_MM2 = 80.0  # a flat press on a small sensor; full score from here
MIN_AREA_MM2 = 40.0
MIN_FRACTION = 0.02  # below this nothing is on the sensor
GOOD_COHERENCE, POOR_COHERENCE = 0.55, 0.2
OFF_CENTRE = 0.15  # centroid offset as a fraction of the image side
MIN_RIDGE_SHARE = 0.2  # ridges leave about 0.5 of their energy in the ridge band, flat or fine textures ~0.1


@dataclass(frozen=True, slots=True)
class QualityReport:
    """Quality of one capture."""

    score: int  # 0..100
    feedback: tuple[str, ...]  # DESIGN.md feedback codes, most important first
    reasons: tuple[str, ...]  # causes: no_finger, no_ridges, small_area, off_centre, dry, wet, unclear
    area_mm2: float = 0.0
    clarity: float = 0.0  # mean coherence in the foreground, 0..1


def _position_feedback(analysis: Analysis) -> tuple[str, ...]:
    """Ask to move towards the centre when the finger is off-centre and cut by an edge."""
    mask = analysis.mask
    h, w = mask.shape
    # The centroid from the mask's first moments, as exact integer sums of the row and
    # column counts (the same numbers cv2.moments gives, without its full pass).
    mask8 = mask.view(np.uint8)
    rows = cv2.reduce(mask8, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel().astype(np.int64)
    cols = cv2.reduce(mask8, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel().astype(np.int64)
    m00 = float(rows.sum())
    cy = float(rows @ np.arange(h, dtype=np.int64)) / m00 / h - 0.5
    cx = float(cols @ np.arange(w, dtype=np.int64)) / m00 / w - 0.5
    out: list[str] = []
    edge = 3
    touches = {
        "left": bool(mask[:, :edge].any()),
        "right": bool(mask[:, -edge:].any()),
        "top": bool(mask[:edge].any()),
        "bottom": bool(mask[-edge:].any()),
    }
    # The finger sits right of centre: it should move left, and so on.
    if cx > OFF_CENTRE and touches["right"]:
        out.append("move_left")
    elif cx < -OFF_CENTRE and touches["left"]:
        out.append("move_right")
    if cy > OFF_CENTRE and touches["bottom"]:
        out.append("move_up")
    elif cy < -OFF_CENTRE and touches["top"]:
        out.append("move_down")
    return tuple(out)


def assess(analysis: Analysis) -> QualityReport:
    """Quality of an analysed capture."""
    mask = analysis.mask
    count = cv2.countNonZero(mask.view(np.uint8))
    fraction = count / mask.size
    px_per_mm = 500.0 / MM_PER_INCH
    area_mm2 = count / (px_per_mm * px_per_mm)
    if fraction < MIN_FRACTION or area_mm2 < 0.25 * MIN_AREA_MM2:
        return QualityReport(0, ("place_finger",), ("no_finger",), area_mm2, 0.0)
    if analysis.ridge_share < MIN_RIDGE_SHARE:  # something is there, but it has no ridges
        return QualityReport(0, ("place_finger",), ("no_ridges",), area_mm2, 0.0)
    clarity = float(np.dot(analysis.coherence.ravel(), mask.ravel().astype(np.float32))) / count  # mean over the mask
    area_score = min(1.0, area_mm2 / GOOD_AREA_MM2, fraction / 0.4)
    clarity_score = float(np.clip((clarity - POOR_COHERENCE) / (GOOD_COHERENCE - POOR_COHERENCE), 0.0, 1.0))
    position = _position_feedback(analysis)
    centring = 0.8 if position else 1.0
    # Multiplicative: a clear but tiny print is as useless as a large smudge.
    score = round(100.0 * area_score * (0.3 + 0.7 * clarity_score) * centring)

    feedback: list[str] = []
    reasons: list[str] = []
    if area_mm2 < MIN_AREA_MM2 or fraction < 0.2:
        reasons.append("small_area")
        if not position:
            feedback.append("press_harder")
    if position:
        reasons.append("off_centre")
        feedback.extend(position)
    if clarity_score < 0.5:
        # Dry skin leaves light, broken ridges; wet skin or a dirty sensor dark smears.
        grey = float(analysis.image[mask].mean())
        if grey > 150:
            reasons.append("dry")
            feedback.append("finger_too_dry")
        elif grey < 90:
            reasons.append("wet")
            feedback.append("clean_sensor")
        else:
            reasons.append("unclear")
            feedback.append("hold_still")
    return QualityReport(int(np.clip(score, 0, 100)), tuple(feedback), tuple(reasons), area_mm2, clarity)
