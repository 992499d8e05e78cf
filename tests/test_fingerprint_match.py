"""Matching: rotation/translation invariance, separation, 1:N search, calibration."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from biometrics.fingerprint import (
    FingerprintError,
    GalleryIndex,
    TemplateError,
    extract,
    match,
    threshold_for_fmr,
)
from biometrics.fingerprint.matcher import cylinders_of
from biometrics.fingerprint.types import Minutiae


def _moved(image: np.ndarray, degrees: float, dx: float, dy: float) -> np.ndarray:
    h, w = image.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    m[:, 2] += (dx, dy)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=235)


@pytest.fixture(scope="module")
def prints(synthetic_print):
    return [synthetic_print(seed) for seed in range(6)]


@pytest.fixture(scope="module")
def templates(prints):
    return [extract(p.image) for p in prints]


def test_a_rotated_and_translated_copy_matches(prints, templates):
    moved = extract(_moved(prints[0].image, 25.0, 12.0, -9.0))
    score = match(templates[0], moved)
    assert score > threshold_for_fmr(1e-4)
    assert match(templates[0], templates[0]) >= score


def test_different_fingers_do_not_match(templates):
    for i in range(1, len(templates)):
        assert match(templates[0], templates[i]) < threshold_for_fmr(1e-2)


def test_score_is_symmetric(templates):
    a, b = templates[1], templates[2]
    assert match(a, b) == pytest.approx(match(b, a), abs=1e-6)


def test_bare_minutiae_and_empty_sets(templates):
    m = templates[0].minutiae
    assert match(m, m) > threshold_for_fmr(1e-4)
    assert match(Minutiae.empty(), m) == 0.0
    with pytest.raises(TemplateError):
        match("not a template", m)


def test_templates_at_other_resolutions_are_compared_at_500_dpi(prints, templates):
    big = cv2.resize(prints[3].image, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_CUBIC)
    t750 = extract(big, resolution_dpi=750)
    assert match(templates[3], t750) > threshold_for_fmr(1e-4)


def test_gallery_search_ranks_the_right_subject_first(prints, templates):
    index = GalleryIndex()
    for n, tpl in enumerate(templates):
        index.add(f"subject-{n}", tpl)
    assert len(index) == 6
    probe = extract(_moved(prints[4].image, -15.0, -8.0, 10.0))
    results = index.search(probe, top_k=3)
    assert results[0][0] == "subject-4"
    assert len(results) == 3
    assert results[0][1] > results[1][1] >= results[2][1]
    # The gallery agrees with 1:1 matching.
    assert results[0][1] == pytest.approx(match(probe, templates[4]), abs=1e-6)


def test_gallery_remove_and_several_templates_per_subject(prints, templates):
    index = GalleryIndex()
    index.add("alice", templates[0])
    index.add("alice", templates[1])
    index.add("bob", templates[2])
    probe = extract(_moved(prints[1].image, 10.0, 5.0, 5.0))
    results = index.search(probe, top_k=5)
    assert [sid for sid, _ in results] == ["alice", "bob"]
    assert index.remove("alice") == 2
    assert "alice" not in index
    assert [sid for sid, _ in index.search(probe, top_k=5)] == ["bob"]
    assert GalleryIndex().search(probe) == []


@given(st.floats(1e-7, 0.999), st.floats(1e-7, 0.999))
def test_threshold_for_fmr_is_monotonic(a, b):
    lo, hi = min(a, b), max(a, b)
    assert threshold_for_fmr(lo) >= threshold_for_fmr(hi)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 2.0, math.nan, "0.01"])
def test_threshold_for_fmr_rejects_non_rates(bad):
    with pytest.raises(FingerprintError):
        threshold_for_fmr(bad)


def _minutiae(draw_points: list[tuple[float, float, float]]) -> Minutiae:
    n = len(draw_points)
    arr = np.array(draw_points, np.float32).reshape(n, 3)
    return Minutiae(
        x=arr[:, 0],
        y=arr[:, 1],
        angle=np.mod(arr[:, 2], 2 * np.pi).astype(np.float32),
        kind=np.ones(n, np.uint8),
        quality=np.full(n, 50, np.uint8),
    )


_points = st.lists(st.tuples(st.floats(0, 400), st.floats(0, 400), st.floats(0, 6.28)), min_size=0, max_size=60)


@given(_points, _points)
def test_any_minutiae_sets_give_a_finite_symmetric_score(a, b):
    ma, mb = _minutiae(a), _minutiae(b)
    s = match(ma, mb)
    assert 0.0 <= s <= 1.0
    assert s == pytest.approx(match(mb, ma), abs=1e-5)


@given(_points)
def test_gallery_scores_agree_with_pairwise_scores(a):
    probe = _minutiae(a)
    index = GalleryIndex()
    others = [_minutiae([(x + 3 * k, y, t) for x, y, t in a]) for k in range(3)]
    for n, m in enumerate(others):
        index.add(n, m)
    # Float32 products of different shapes round differently; scores agree to 0.1 %.
    np.testing.assert_allclose(index.scores(probe), [match(probe, m) for m in others], rtol=1e-3, atol=1e-5)


def test_parallel_gallery_blocks_give_the_same_scores(templates):
    serial, parallel = GalleryIndex(workers=1), GalleryIndex(workers=2)
    cylinders = [cylinders_of(t) for t in templates]
    for n in range(300):  # more than two blocks
        serial.add(n, cylinders[n % len(cylinders)])
        parallel.add(n, cylinders[n % len(cylinders)])
    try:
        np.testing.assert_array_equal(serial.scores(templates[2]), parallel.scores(templates[2]))
        assert parallel.search(templates[2], top_k=1)[0][0] % len(cylinders) == 2
    finally:
        parallel.close()
