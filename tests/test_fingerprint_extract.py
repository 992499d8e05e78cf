"""Minutiae extraction on synthetic prints with planted minutiae, and input checks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from biometrics.fingerprint import (
    FingerprintImageError,
    analyse,
    extract,
    extract_with_quality,
    quality_of,
    template_of,
)
from biometrics.fingerprint.types import KIND_BIFURCATION, KIND_ENDING


def _recall_precision(found, planted: np.ndarray, tol: float) -> tuple[float, float]:
    d = np.hypot(found.x[:, None] - planted[:, 0], found.y[:, None] - planted[:, 1])
    return float((d.min(axis=0) < tol).mean()), float((d.min(axis=1) < tol).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_extraction_finds_the_planted_minutiae(synthetic_print, seed):
    sp = synthetic_print(seed)
    tpl = extract(sp.image)
    m = tpl.minutiae
    assert (tpl.width, tpl.height, tpl.resolution_dpi) == (300, 320, 500)
    assert 8 <= len(m) <= 40
    assert np.all((m.x >= 0) & (m.x < 300) & (m.y >= 0) & (m.y < 320))
    assert np.all((m.angle >= 0) & (m.angle < 2 * np.pi))
    assert set(np.unique(m.kind)) <= {KIND_ENDING, KIND_BIFURCATION}
    assert np.all((m.quality >= 1) & (m.quality <= 100))
    # Reached on these prints: recall 1.0, precision 0.78..1.0 within 10 pixels.
    recall, precision = _recall_precision(m, sp.minutiae, tol=10.0)
    assert recall >= 0.85
    assert precision >= 0.7


def test_no_minutiae_on_a_plain_ridge_pattern(synthetic_print):
    sp = synthetic_print(5, defects=0)
    assert len(extract(sp.image).minutiae) <= 2


def test_other_resolutions_give_coordinates_in_input_pixels(synthetic_print):
    sp = synthetic_print(1)
    big = cv2.resize(sp.image, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
    tpl = extract(big, resolution_dpi=1000)
    assert (tpl.width, tpl.height, tpl.resolution_dpi) == (600, 640, 1000)
    recall, _ = _recall_precision(tpl.minutiae, sp.minutiae * 2.0, tol=20.0)
    assert recall >= 0.85


def test_minutia_angle_follows_the_ridges(synthetic_print):
    """A ridge ending points along its ridge: rotating the image rotates the angles."""
    sp = synthetic_print(0)
    base = extract(sp.image).minutiae
    rotated = extract(np.ascontiguousarray(np.rot90(sp.image))).minutiae  # 90 degrees counter-clockwise
    # Map each rotated minutia back: (x, y) -> (w - 1 - y', x') for rot90 of an h x w image.
    w = sp.image.shape[1]
    bx, by = w - 1 - rotated.y, rotated.x
    d = np.hypot(base.x[:, None] - bx[None, :], base.y[:, None] - by[None, :])
    i, j = np.nonzero(d < 4)
    assert len(i) >= 8
    diff = np.angle(np.exp(1j * (rotated.angle[j] - np.pi / 2 - base.angle[i])))
    assert np.median(np.abs(diff)) < np.deg2rad(20)


def test_analysis_is_shared_between_quality_and_template(synthetic_print):
    sp = synthetic_print(2)
    a = analyse(sp.image)
    q = quality_of(a)
    tpl = template_of(a, quality=q)
    assert tpl.quality == q.score
    assert (tpl.width, tpl.height, tpl.resolution_dpi) == (300, 320, 500)
    assert len(tpl.minutiae) == len(extract(sp.image).minutiae)
    both, q2 = extract_with_quality(sp.image)
    assert q2 == q
    np.testing.assert_array_equal(both.minutiae.x, tpl.minutiae.x)


@pytest.mark.parametrize(
    ("image", "dpi", "fix"),
    [
        ([[0, 1], [2, 3]], 500, "numpy array"),
        (np.zeros((300, 300), np.float32), 500, "uint8"),
        (np.zeros((300, 300, 3), np.uint8), 500, "grey"),
        (np.zeros((40, 300), np.uint8), 500, "larger area"),
        (np.full((300, 300), 200, np.uint8), 500, "place a finger"),
        (np.zeros((300, 300), np.uint8), 50, "resolution"),
    ],
)
def test_bad_images_raise_a_typed_error_naming_the_fix(image, dpi, fix):
    with pytest.raises(FingerprintImageError, match=fix) as info:
        extract(image, dpi)
    assert isinstance(info.value, ValueError)
