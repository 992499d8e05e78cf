"""Matching: rotation/translation invariance, separation, 1:N search, calibration."""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import pytest
from hypothesis import example, given
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


@pytest.mark.parametrize("degrees", [25.0, -40.0])
def test_an_explained_comparison_is_the_score_and_each_of_its_factors(prints, templates, degrees):
    """debug.explain_comparison: match()'s score, rebuilt from its factors, with the alignment that was found."""
    from biometrics.fingerprint import global_pairing
    from biometrics.fingerprint.debug import explain_comparison

    moved = extract(_moved(prints[0].image, degrees, 12.0, -9.0))
    e = explain_comparison(templates[0], moved)
    assert e.score == match(templates[0], moved) > threshold_for_fmr(1e-4)
    assert e.score == pytest.approx(math.sqrt(e.lss_excess * e.paired_fraction) * e.field_factor, rel=1e-9)
    assert e.rotation_degrees == pytest.approx(degrees, abs=3.0)  # counter-clockwise as seen, as cv2 turned it
    assert e.field_measured and e.field_share > 0.9 and e.field_factor == 1.0
    assert 3 <= len(e.paired) <= min(e.overlap)
    assert all(common <= compared for common, compared in zip(e.overlap, e.minutiae, strict=True))
    # Each paired probe minutia, moved by the alignment reported, lies within the pairing distance of its partner.
    turn, shift = np.exp(-1j * np.radians(e.rotation_degrees)), complex(*e.translation)
    probe, partner = e.paired[:, 0] + 1j * e.paired[:, 1], e.paired[:, 2] + 1j * e.paired[:, 3]
    assert np.abs(turn * probe + shift - partner).max() < global_pairing.D_PAIR


def test_an_explained_impostor_comparison_shows_why_it_stays_low(templates):
    from biometrics.fingerprint.debug import explain_comparison

    for other in templates[1:]:
        e = explain_comparison(templates[0], other)
        assert e.score == match(templates[0], other) < threshold_for_fmr(1e-2)
        if e.lss_excess == 0.0:  # no LSS-R evidence: nothing aligned, paired or compared
            assert e.score == 0.0 and e.rotation_degrees is None and len(e.paired) == 0 and e.field_share is None
        else:
            first = math.sqrt(e.lss_excess * e.paired_fraction) * e.field_factor
            assert e.score == pytest.approx(max(first, e.second_pass), rel=1e-9)  # mcc_match's second pass
            assert e.paired_fraction < 0.5 or e.field_share < 0.9  # the minutiae or the field give it away
    empty = explain_comparison(Minutiae.empty(), templates[0].minutiae)
    assert empty.score == 0.0 and empty.minutiae[0] == 0 and empty.rotation_degrees is None


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
@example(
    a=[(0, 0, 0), (0, 0, 1), (0, 12, 0), (45, 0, 0), (90, 3, 0), (93, 0, 0)],
    b=[(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 4, 0), (0, 55, 0), (45, 0, 0), (90, 3, 0), (93, 0, 0)],
)
def test_any_minutiae_sets_give_a_finite_symmetric_score(assert_same_scores, a, b):
    """Either print may be the probe. The two directions put each cylinder on the other side of the
    products, which some BLAS kernels sum in another order: on the Haswell kernels, two sets sharing
    near-identical minutiae scored 0.071353 one way and 0.071364 the other (1.6e-4 relative, found by
    this property), within the layouts' tolerance (tests/conftest.py). A pairing that depends on the
    direction moves a score far more (see the next test: 0.064 against 0.032)."""
    ma, mb = _minutiae(a), _minutiae(b)
    s = match(ma, mb)
    assert 0.0 <= s <= 1.0
    assert_same_scores(s, match(mb, ma))


def test_duplicate_minutiae_pair_the_same_whichever_print_is_the_probe():
    """Found by the property above: duplicates tie exactly in the pairing's costs, and one direction paired
    a template minutia twice (0.064 one way, 0.032 the other)."""
    a = [(0, 0, 0), (0, 0, 0), (0, 3, 0), (0, 13, 3), (24, 0, 0), (0, 0, 1), (13, 234, 6)]
    b = [(12, 0, 0), (2, 4, 0), (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 6, 0), (0, 1, 2), (0, 70, 2), (12, 0, 0)]
    b.append((10, 107, 6))
    forward, backward = match(_minutiae(a), _minutiae(b)), match(_minutiae(b), _minutiae(a))
    assert forward > 0.0 and forward == pytest.approx(backward, abs=1e-6)


@given(_points)
def test_gallery_scores_agree_with_pairwise_scores(assert_same_scores, a):
    probe = _minutiae(a)
    index = GalleryIndex()
    others = [_minutiae([(x + 3 * k, y, t) for x, y, t in a]) for k in range(3)]
    for n, m in enumerate(others):
        index.add(n, m)
    # Float32 products of different shapes round differently (tests/conftest.py).
    assert_same_scores(index.scores(probe), [match(probe, m) for m in others])


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


def _random_finger(rng: np.random.Generator, n: int = 40) -> Minutiae:
    pts = [(rng.uniform(40, 360), rng.uniform(40, 460), rng.uniform(0, 2 * np.pi)) for _ in range(n)]
    return _minutiae(pts)


def _impression(m: Minutiae, rng: np.random.Generator, degrees: float, shift: tuple[float, float]) -> Minutiae:
    """The same finger touched again: rotated, shifted, positions jittered by 2 px, a few minutiae missed."""
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    x = c * m.x - s * m.y + shift[0] + rng.normal(0, 2.0, len(m))
    y = s * m.x + c * m.y + shift[1] + rng.normal(0, 2.0, len(m))
    keep = rng.random(len(m)) > 0.15
    pts = list(zip(x[keep], y[keep], (m.angle[keep] - a) % (2 * np.pi), strict=True))
    return _minutiae(pts)


def test_large_gallery_search_prefilters_and_reports_full_scores(assert_same_scores):
    """Above prefilter.MIN_CANDIDATES templates, only the pre-filter's best are fully scored,
    and the scores reported are the full ones (to the BLAS kernel's rounding: see conftest)."""
    from biometrics.fingerprint import prefilter

    rng = np.random.default_rng(7)
    fingers = [_random_finger(rng) for _ in range(400)]
    index = GalleryIndex()
    for n, m in enumerate(fingers):
        index.add(n, m)
    full_hits = 0
    for target in (3, 150, 399):
        probe = _impression(fingers[target], rng, 20.0, (15.0, -10.0))
        full = index.scores(probe)
        idx, got = index.candidate_scores(probe)
        # max(64, 3 % of 400) = 64 candidates, each with its full score.
        assert len(idx) == max(prefilter.MIN_CANDIDATES, int(np.ceil(prefilter.CANDIDATE_FRACTION * 400)))
        assert_same_scores(got, full[idx])
        results = index.search(probe, top_k=3)
        assert results[0] == (target, pytest.approx(full[target]))
        full_hits += int(np.argmax(full) == target)
    assert full_hits == 3


def test_prefilter_respects_among_and_small_subsets_are_scored_in_full():
    rng = np.random.default_rng(8)
    fingers = [_random_finger(rng) for _ in range(200)]
    index = GalleryIndex()
    for n, m in enumerate(fingers):
        index.add(f"s{n}", m)
    probe = _impression(fingers[10], rng, -10.0, (5.0, 5.0))
    allowed = {f"s{n}" for n in range(0, 200, 4)}  # 50 subjects, s10 not among them
    results = index.search(probe, top_k=50, among=allowed)
    assert {sid for sid, _ in results} == allowed  # 50 <= MIN_CANDIDATES: every one scored
    assert "s10" not in dict(results)
    assert index.search(probe, top_k=1, among={"s10", "s11"})[0][0] == "s10"


def test_candidates_keep_the_best_prescores():
    from biometrics.fingerprint import prefilter

    pre = np.arange(1000, dtype=np.float32)[::-1].copy()  # template i has pre-score 999 - i
    np.testing.assert_array_equal(prefilter.candidates(pre), np.arange(64))
    np.testing.assert_array_equal(prefilter.candidates(pre, keep_at_least=100), np.arange(100))
    big = np.zeros(4000, np.float32)
    big[3990:] = 1.0
    kept = prefilter.candidates(big)
    assert len(kept) == int(np.ceil(prefilter.CANDIDATE_FRACTION * 4000))
    assert set(range(3990, 4000)) <= set(kept.tolist())
    np.testing.assert_array_equal(prefilter.candidates(pre[:50]), np.arange(50))


def test_packed_templates_of_different_sizes_score_as_each_alone():
    """Packing sorts templates by cylinder count and stores rows without padding: scores come back in
    the caller's order and equal each template scored on its own."""
    from biometrics.fingerprint import mcc_match

    rng = np.random.default_rng(11)
    sets = [cylinders_of(_random_finger(rng, n)) for n in (12, 45, 0, 30, 60, 8)]
    probe = cylinders_of(_random_finger(rng, 40))
    together = mcc_match.scores(probe, mcc_match.pack(sets))
    alone = [mcc_match.scores(probe, mcc_match.pack([c]))[0] if len(c) else 0.0 for c in sets]
    np.testing.assert_allclose(together, alone, rtol=1e-3, atol=1e-5)
    some = mcc_match.gather(mcc_match.stack(sets), np.array([4, 1, 3]))
    np.testing.assert_allclose(mcc_match.scores(probe, some), [alone[4], alone[1], alone[3]], rtol=1e-3, atol=1e-5)
    # Into a reused buffer: the same rows and scores; a buffer too small is not written to.
    stacked = mcc_match.stack(sets)
    buffer = mcc_match.gather_buffer(200)
    assert mcc_match.gather_buffer(150, buffer) is buffer and len(mcc_match.gather_buffer(201, buffer)) == 201
    for pick in (np.array([4, 1, 3]), np.array([0, 5])):
        plain, reused = mcc_match.gather(stacked, pick), mcc_match.gather(stacked, pick, buffer)
        assert np.shares_memory(reused.rows, buffer)
        np.testing.assert_array_equal(reused.rows, plain.rows)
        np.testing.assert_array_equal(mcc_match.scores(probe, reused), mcc_match.scores(probe, plain))
    small = np.zeros((10, mcc_match.WIDTH), np.float32)
    assert not np.shares_memory(mcc_match.gather(stacked, np.array([4]), small).rows, small)
    assert not small.any()


def test_prefilter_projection_is_the_gallerys_principal_subspace_and_keeps_the_ranking():
    from biometrics.fingerprint import prefilter

    rng = np.random.default_rng(12)
    fingers = [_random_finger(rng) for _ in range(300)]
    sketches = [prefilter.sketch(cylinders_of(m)) for m in fingers]
    assert prefilter.projection(sketches[: prefilter.MIN_CANDIDATES - 1]) is None  # small: scored in full anyway
    p = prefilter.projection(sketches)
    assert p.shape == (prefilter.SKETCH_WIDTH, prefilter.BASIS_DIM + 2)
    np.testing.assert_allclose(p.T @ p, np.eye(prefilter.BASIS_DIM + 2), atol=1e-5)  # orthonormal columns
    np.testing.assert_array_equal(p[-2:, -2:], np.eye(2))  # the direction columns pass through
    plain, projected = prefilter.pack(sketches), prefilter.pack(sketches, p)
    assert projected.shape[1] == prefilter.BASIS_DIM + 2
    for target in (5, 250):
        probe = prefilter.sketch(cylinders_of(_impression(fingers[target], rng, 15.0, (10.0, 5.0))))
        full, reduced = prefilter.prescores(probe, plain), prefilter.prescores(probe @ p, projected)
        assert np.argmax(reduced) == np.argmax(full) == target
        assert np.corrcoef(full, reduced)[0, 1] > 0.9


def test_prefilter_centres_are_each_templates_impostor_median_without_the_probe_itself():
    from biometrics.fingerprint import prefilter

    assert len(prefilter.hub_sample(prefilter.MIN_CANDIDATES - 1)) == 0  # small galleries are scored in full
    sample = prefilter.hub_sample(1000)
    assert len(sample) == prefilter.HUB_SAMPLE and sample[0] == 0 and sample[-1] == 999
    assert np.all(np.diff(sample) > 0)
    rng = np.random.default_rng(13)
    raw = rng.random((len(sample), 1000)).astype(np.float32)
    raw[np.arange(len(sample)), sample] = 50.0  # a probe against itself: must not count
    raw[:, 7] += 3.0  # a hub: close to every probe
    centres = prefilter.centres(raw, sample)
    for t in (7, 500, int(sample[3])):
        others = np.delete(raw[:, t], np.nonzero(sample == t)[0])
        assert centres[t] == pytest.approx(float(np.median(others)))
    assert centres[7] > 3.0 and np.all(np.delete(centres, 7) < 1.0)


def test_gallery_prescores_are_centred_on_each_templates_own_impostor_level():
    from biometrics.fingerprint import prefilter

    rng = np.random.default_rng(14)
    fingers = [_random_finger(rng) for _ in range(120)]
    index = GalleryIndex()
    for n, m in enumerate(fingers):
        index.add(n, m)
    cyl = [cylinders_of(m) for m in fingers]
    p = prefilter.projection([prefilter.sketch(c, prefilter.GALLERY_ROWS) for c in cyl])
    packed = prefilter.pack([prefilter.sketch(c, prefilter.GALLERY_ROWS) for c in cyl], p)
    sample = prefilter.hub_sample(len(cyl))
    raw = np.stack([prefilter.prescores(prefilter.sketch(cyl[i]) @ p, packed) for i in sample])
    centres = prefilter.centres(raw, sample)
    assert np.ptp(centres) > 0.01  # templates differ in their impostor level
    probe = _impression(fingers[42], rng, 15.0, (10.0, 5.0))
    expected = prefilter.prescores(prefilter.sketch(cylinders_of(probe)) @ p, packed) - centres
    np.testing.assert_allclose(index.prescores(probe), expected, atol=1e-5)
    assert np.argmax(index.prescores(probe)) == 42


def test_incremental_gallery_gives_the_same_full_scores_and_mates_as_one_built_at_once(assert_same_scores):
    """Adds after a search are laid out incrementally (no refit below a quarter's growth), removals
    compact: the candidates keep their full scores (to the BLAS kernel's rounding) and every probe finds
    the same top mate."""
    from biometrics.fingerprint import prefilter

    rng = np.random.default_rng(21)
    fingers = [_random_finger(rng) for _ in range(190)]
    probes = {t: _impression(fingers[t], rng, 12.0, (8.0, -6.0)) for t in (3, 100, 170, 185)}
    grown = GalleryIndex()
    for n in range(160):
        grown.add(n, fingers[n])
    grown.search(probes[3], top_k=1)  # packs 160 templates
    for n in range(160, 190):  # 30 more, each followed by a search: 190 < 1.25 x 160, no refit
        grown.add(n, fingers[n])
        assert grown.search(probes[3], top_k=1)[0][0] == 3
    grown.add("gone", fingers[7])
    grown.add("gone", fingers[8])
    grown.search(probes[3], top_k=1)
    assert grown.remove("gone") == 2
    at_once = GalleryIndex()
    for n in range(190):
        at_once.add(n, fingers[n])
    for target, probe in probes.items():
        idx, got = grown.candidate_scores(probe)
        assert_same_scores(got, at_once.scores(probe)[idx])  # the same full score per template
        assert len(idx) == max(prefilter.MIN_CANDIDATES, int(np.ceil(prefilter.CANDIDATE_FRACTION * 190)))
        assert grown.search(probe, top_k=1)[0][0] == at_once.search(probe, top_k=1)[0][0] == target
    assert_same_scores(grown.scores(probes[100]), at_once.scores(probes[100]))
    for n in range(60):  # a third of the rows unreferenced: the stack compacts them
        assert grown.remove(n) == 1
    rest = GalleryIndex()
    for n in range(60, 190):
        rest.add(n, fingers[n])
    assert_same_scores(grown.scores(probes[100]), rest.scores(probes[100]))
    assert grown.search(probes[170], top_k=1)[0][0] == 170 and 3 not in dict(grown.search(probes[3], top_k=3))


def _raw_of(index):
    """Each row of a projected probe sketch's best match in every packed template of a SketchIndex, (n, T)."""
    from biometrics.fingerprint import prefilter

    return lambda sp: np.concatenate(
        [prefilter.block_best(np.ascontiguousarray(sp.T), b) for b in index.blocks()], axis=1
    )


def test_sketch_index_refits_only_after_a_quarter_growth_and_then_equals_a_fresh_fit():
    from biometrics.fingerprint import prefilter

    rng = np.random.default_rng(22)
    sketches = [prefilter.sketch(cylinders_of(_random_finger(rng))) for _ in range(220)]
    probe = prefilter.sketch(cylinders_of(_random_finger(rng)))

    def centred(index: prefilter.SketchIndex) -> np.ndarray:
        best = _raw_of(index)(index.probe(probe))
        return prefilter.aggregate(best, prefilter.row_stats(best)) - index.centres

    grown = prefilter.SketchIndex()
    for s in sketches[:160]:
        grown.add(s)
    grown.sync(_raw_of(grown))
    assert grown.fitted_at == 160
    for s in sketches[160:200]:  # 200 = 1.25 x 160: laid out, not refitted
        grown.add(s)
        grown.sync(_raw_of(grown))
    assert grown.fitted_at == 160 and len(grown.centres) == 200
    fresh = prefilter.SketchIndex()
    for s in sketches[:200]:
        fresh.add(s)
    fresh.sync(_raw_of(fresh))
    assert np.corrcoef(centred(grown), centred(fresh))[0, 1] > 0.95  # an older subspace ranks alike
    grown.add(sketches[200])  # 201 > 1.25 x 160: a full refit, identical to a fresh one
    grown.sync(_raw_of(grown))
    fresh = prefilter.SketchIndex()
    for s in sketches[:201]:
        fresh.add(s)
    fresh.sync(_raw_of(fresh))
    assert grown.fitted_at == fresh.fitted_at == 201
    # Multithreaded BLAS may round a product's last bit differently between runs.
    np.testing.assert_allclose(centred(grown), centred(fresh), rtol=0, atol=1e-6)
    keep = np.ones(201, bool)
    keep[[0, 5, 77]] = False  # a removal compacts, no refit: every other template keeps its matches and centre
    before, centres = _raw_of(grown)(grown.probe(probe)), grown.centres.copy()
    grown.remove(keep)
    assert grown.fitted_at == 201 and len(grown) == 198
    np.testing.assert_allclose(_raw_of(grown)(grown.probe(probe)), before[:, keep], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(grown.centres, centres[keep])


def test_sketch_index_refits_after_churn_even_when_its_size_stays_the_same():
    """People leaving as fast as others join still refit: the subspace and hub sample must not describe people gone."""
    from biometrics.fingerprint import prefilter

    rng = np.random.default_rng(23)
    sketches = [prefilter.sketch(cylinders_of(_random_finger(rng))) for _ in range(120)]

    index = prefilter.SketchIndex()
    for s in sketches[:80]:
        index.add(s)
    index.sync(_raw_of(index))
    assert index.fitted_at == 80
    due = []
    for n, s in enumerate(sketches[80:101]):  # 21 leave, 21 join: 42 changes, a quarter of 80 is 20
        keep = np.ones(len(index), bool)
        keep[n % len(index)] = False
        index.remove(keep)
        index.add(s)
        due.append(index.needs_refit())
        index.sync(_raw_of(index))
        assert len(index) == 80 and not index.needs_refit()
    assert due == [False] * 10 + [True] + [False] * 10  # the 11th swap makes 22 changes: refitted, counted afresh


def test_prefilter_row_normalisation_lets_a_distinctive_row_outrank_a_generic_one():
    """A probe row that matches every template well (a dense, generic cylinder) says nothing; the rows
    that stand out against their own spread over the gallery identify the mate."""
    from biometrics.fingerprint import prefilter

    rng = np.random.default_rng(31)
    n, t = 12, 300
    best = rng.normal(0.30, 0.05, (n, t)).astype(np.float32)
    best[:6] = rng.normal(0.85, 0.03, (6, t))  # six generic rows: high against everyone
    best[:6, 11] += 0.06  # template 11 (a hub) does a little better on them
    best[6:, 42] += 0.25  # the mate stands out on the distinctive rows
    z = prefilter.aggregate(best, prefilter.row_stats(best))
    plain = np.sort(best, axis=0)[-prefilter.TOP_ROWS :].mean(axis=0)
    assert np.argmax(plain) == 11  # without normalisation the hub wins
    assert np.argmax(z) == 42
    mean, spread = prefilter.row_stats(best)
    rest = np.sort(best, axis=1)[:, :-1]  # each row's best match left out
    np.testing.assert_allclose(mean[:, 0], rest.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(spread[:, 0], rest.std(axis=1), rtol=1e-4)
    # The probe scored against a gallery holding itself (a refit's hub sample, the benchmark): its
    # own perfect column is the one left out, and the others' z-scores are measured against the
    # gallery without it (they would drop by a fifth if the perfect column entered the spread).
    with_self = np.hstack([best, np.ones((n, 1), np.float32)])
    without = (best.mean(axis=1, keepdims=True), best.std(axis=1, keepdims=True))
    scored = prefilter.aggregate(with_self, prefilter.row_stats(with_self))[:t]
    np.testing.assert_allclose(scored, prefilter.aggregate(best, without), rtol=1e-4)
    flat = prefilter.row_stats(np.full((3, 5), 0.5, np.float32))[1]  # no spread: floored, no division by zero
    assert np.all(flat == np.float32(prefilter.MIN_SPREAD))


def test_sketch_index_lays_templates_across_the_block_boundary():
    """Templates added after a fit fill the last block and open a new one (BLOCK_TEMPLATES each): every
    template's rows stay in its column, and the newcomers' centres come from the probes' fitted spreads."""
    from biometrics.fingerprint import prefilter

    rng = np.random.default_rng(32)
    size = prefilter.BLOCK_TEMPLATES
    sketches = [
        rng.standard_normal((prefilter.SKETCH_ROWS, prefilter.SKETCH_WIDTH)).astype(np.float32)
        for _ in range(size + 40)
    ]
    index = prefilter.SketchIndex()
    for s in sketches[: size - 20]:
        index.add(s)
    index.sync(_raw_of(index))
    fitted = [_raw_of(index)(index.probe(sketches[int(i)])) for i in prefilter.hub_sample(size - 20)]
    for s in sketches[size - 20 :]:  # 20 fill the first block, 40 open the second: no refit
        index.add(s)
    index.sync(_raw_of(index))
    assert index.fitted_at == size - 20 and len(index.centres) == size + 40
    assert [b.shape[1] for b in index.blocks()] == [size, 40] and index.blocks()[0].flags.c_contiguous
    flat = prefilter.pack([s[: prefilter.GALLERY_ROWS] for s in sketches], index._projection)
    whole = flat.reshape(prefilter.GALLERY_ROWS, len(sketches), -1)
    probe = index.probe(sketches[3])
    got = _raw_of(index)(probe)
    # Sums of about a hundred float32 products near 30: the kernel's summation order moves them by up to 7e-7
    # relative (OpenBLAS's Haswell kernels; see conftest); a column laid out in the wrong block is off by units.
    np.testing.assert_allclose(got, prefilter.block_best(np.ascontiguousarray(probe.T), whole), rtol=4e-6, atol=1e-5)
    stats = [prefilter.row_stats(f) for f in fitted]
    new = [
        prefilter.aggregate(_raw_of(index)(index.probe(sketches[int(i)]))[:, size - 20 :], st)
        for i, st in zip(prefilter.hub_sample(size - 20), stats, strict=True)
    ]
    np.testing.assert_allclose(index.centres[size - 20 :], np.median(np.stack(new), axis=0), rtol=4e-6, atol=1e-5)
    keep = np.ones(len(sketches), bool)
    keep[[1, 200, size + 5]] = False  # compaction moves the second block's first templates into the first
    index.remove(keep)
    assert [b.shape[1] for b in index.blocks()] == [size, 37]
    np.testing.assert_allclose(_raw_of(index)(probe), got[:, keep], rtol=4e-6, atol=1e-6)  # moved: other block sums


def test_gallery_search_spans_prefilter_blocks_on_worker_threads():
    """A gallery larger than one pre-filter block, scored on two threads: mates in either block are found
    and the pre-scores are those of the whole gallery's rows (one set of row statistics)."""
    from biometrics.fingerprint import prefilter

    rng = np.random.default_rng(33)
    fingers = [_random_finger(rng) for _ in range(prefilter.BLOCK_TEMPLATES + 30)]
    index = GalleryIndex(workers=2)
    try:
        for n, m in enumerate(fingers):
            index.add(n, m)
        for target in (5, prefilter.BLOCK_TEMPLATES + 17):
            probe = _impression(fingers[target], rng, 12.0, (6.0, -4.0))
            pre = index.prescores(probe)
            sketches = index._sketches
            best = _raw_of(sketches)(sketches.probe(prefilter.sketch(cylinders_of(probe))))
            expected = prefilter.aggregate(best, prefilter.row_stats(best)) - sketches.centres
            np.testing.assert_allclose(pre, expected, rtol=0, atol=1e-5)
            assert np.argmax(pre) == target
            assert index.search(probe, top_k=1)[0][0] == target
    finally:
        index.close()


@pytest.mark.parametrize("count", [0, 1, 2])
def test_under_three_minutiae_score_zero_on_every_path(templates, count):
    """Without three minutiae there is no relative geometry to check: 0, whichever side and path, never an error.

    (The verifier refuses such templates before matching: protocol.templates needs
    8 per view. The library must still be total on them, in 1:1 and in 1:N.)
    """
    full = templates[0].minutiae
    keep = np.arange(count)
    few = Minutiae(full.x[keep], full.y[keep], full.angle[keep], full.kind[keep], full.quality[keep])
    assert match(few, few) == match(few, full) == match(full, few) == 0.0
    index = GalleryIndex()
    index.add("few", few)
    index.add("full", full)
    index.add("other", templates[1])
    scores = index.scores(few)
    assert scores.shape == (3,) and not scores.any()
    assert index.scores(full)[1] > threshold_for_fmr(1e-4)  # the others are still scored
    assert index.scores(full)[0] == 0.0


@pytest.mark.parametrize("extra", [-1, 0, 1, 37])
def test_prefilter_block_best_is_each_probe_rows_best_match_across_sub_block_edges(extra):
    """The products are taken SUB_BLOCK templates at a time: templates on either side of a
    sub-block's edge (and a block view with fewer filled columns) get their own rows' best match."""
    from biometrics.fingerprint import prefilter

    rng = np.random.default_rng(30 + extra)
    t = 2 * prefilter.SUB_BLOCK + extra
    block = rng.normal(size=(prefilter.GALLERY_ROWS, t + 5, 20)).astype(np.float32)
    rows = block[:, :t]  # a partly filled block is a view of its first columns
    probe_t = np.ascontiguousarray(rng.normal(size=(20, 7)).astype(np.float32))
    expected = np.einsum("gtd,dn->gtn", rows.astype(np.float64), probe_t.astype(np.float64)).max(axis=0).T
    got = prefilter.block_best(probe_t, rows)
    assert got.shape == (7, t) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    rows[:, prefilter.SUB_BLOCK] = 0.0  # a template past the edge whose rows change: only its column moves
    changed = prefilter.block_best(probe_t, rows)
    np.testing.assert_array_equal(
        np.delete(changed, prefilter.SUB_BLOCK, axis=1), np.delete(got, prefilter.SUB_BLOCK, axis=1)
    )
    np.testing.assert_array_equal(changed[:, prefilter.SUB_BLOCK], 0.0)
    assert prefilter.block_best(probe_t, rows[:, :0]).shape == (7, 0)


def _local_similarity_reference(probe, gallery) -> np.ndarray:
    """Local similarities as first written: probe-first products, (n, K, T) regridded rank by rank."""
    from biometrics.fingerprint import mcc_match
    from biometrics.fingerprint.cylinders import N_SPATIAL

    t, k, n = gallery.templates, gallery.width, len(probe)
    energy = np.einsum("nsd,nsd->ns", *(2 * [probe.values.reshape(n, N_SPATIAL, -1)])).astype(np.float32)
    cross = probe.values @ gallery.values.T
    norm_a, common = np.split(np.vstack([energy, probe.valid]) @ gallery.valid.T, 2)
    norm_b = probe.valid @ gallery.energy.T
    direction = np.stack([np.cos(probe.angle), np.sin(probe.angle)], axis=1).astype(np.float32)
    ok = (common >= mcc_match.MIN_COMMON * N_SPATIAL) & (direction @ gallery.direction.T >= mcc_match._COS_MAX)
    cross *= -2.0
    cross += norm_a
    cross += norm_b
    cross = 1.0 - np.sqrt(np.maximum(cross, 0.0)) / np.maximum(np.sqrt(norm_a) + np.sqrt(norm_b), 1e-12)
    cross *= ok
    out = np.zeros((n, k, t), np.float32)
    for p in range(k):
        lo, hi = int(gallery.offsets[p]), int(gallery.offsets[p + 1])
        out[:, p, : hi - lo] = cross[:, lo:hi]
    return out


@pytest.mark.parametrize("sizes", [(48, 12, 0, 30, 48, 8, 47, 3), (40, 40, 40, 40)])
def test_local_similarity_gallery_first_products_equal_the_probe_first_ones(sizes):
    """The products taken gallery rows first give the similarities of the probe-first formulation, for
    crowded sets of mixed sizes (rank-by-rank regrid) and of equal sizes (one reshape): bit for bit on the
    build measured, within float32 rounding on any BLAS; a one-cylinder probe (a matrix-vector product,
    summed in another order) within the square root's cancellation.

    That cancellation bounds the tolerance near 1 as well: ``|a|^2 + |b|^2 - 2 a.b`` of two nearly equal
    cylinders is a difference of nearly equal sums, so a rounding e of the sums moves the similarity by about
    e / (1 - s). Where another kernel sums in another order (OpenBLAS's Haswell kernels: a cylinder against
    its own copy came out 1.0 against 0.9990), the tolerance grows so, from 2e-6 far from 1."""
    from biometrics.fingerprint import mcc_match

    rng = np.random.default_rng(sum(sizes))
    sets = [cylinders_of(_random_finger(rng, m)) for m in sizes]
    for probe in (cylinders_of(_random_finger(rng, 45)), sets[0]):
        packed = mcc_match.pack(sets)
        got = mcc_match.local_similarity(probe, packed)
        assert got.shape == (len(probe), packed.width, len(sets)) and got.dtype == np.float32
        want = _local_similarity_reference(probe, packed)
        near_one = 2e-6 / np.maximum(1.0 - want, 1e-3)  # the square root's cancellation (docstring)
        assert (np.abs(got - want) <= 2e-6 + near_one).all(), np.abs(got - want).max()
        assert (got > 0).sum() > 100
    lone = cylinders_of(_random_finger(rng, 45))
    # The first cylinder alone (``field``, the template's orientation field, is not per cylinder).
    lone = type(lone)(**{f: getattr(lone, f)[:1] for f in lone.__dataclass_fields__ if f != "field"})
    got = mcc_match.local_similarity(lone, packed)
    assert got.shape == (1, packed.width, len(sets))
    np.testing.assert_allclose(got, _local_similarity_reference(lone, packed), rtol=0, atol=5e-4)


def test_prefilter_pooling_by_addition_equals_the_pooling_product():
    """Summing each cell's adjacent direction bins gives exactly the product with the pooling matrix."""
    from biometrics.fingerprint import prefilter

    rng = np.random.default_rng(31)
    c = cylinders_of(_random_finger(rng, 48))
    np.testing.assert_array_equal(prefilter._pool(c.values), c.values @ prefilter.POOL)
    noisy = rng.random((40, prefilter.POOL.shape[0])).astype(np.float32)
    np.testing.assert_array_equal(prefilter._pool(noisy), noisy @ prefilter.POOL)


def test_prefilter_read_ahead_touches_every_cache_line_and_changes_no_best_match():
    """block_best's read-ahead view holds one float of every 64-byte line of a block's rows (also for a
    partly filled block), layouts it cannot view are read without it, and the best matches are the same."""
    from biometrics.fingerprint import prefilter

    rng = np.random.default_rng(32)
    g, d = prefilter.GALLERY_ROWS, 114
    block = rng.normal(size=(g, 3 * prefilter.SUB_BLOCK + 7, d)).astype(np.float32)
    for rows in (block, block[:, : 2 * prefilter.SUB_BLOCK + 3]):
        lines = prefilter._lines(rows)
        t = rows.shape[1]
        assert lines is not None and np.shares_memory(lines, block)
        assert lines.shape == (g, -(-t * d // prefilter.LINE_FLOATS))
        assert lines.strides == (rows.strides[0], prefilter.LINE_FLOATS * rows.itemsize)
        np.testing.assert_array_equal(lines, rows.reshape(g, -1)[:, :: prefilter.LINE_FLOATS])
    assert prefilter._lines(block.transpose(0, 2, 1)) is None
    probe_t = np.ascontiguousarray(rng.normal(size=(d, 32)).astype(np.float32))
    rows = block[:, : 2 * prefilter.SUB_BLOCK + 3]
    plain = np.matmul(rows, probe_t).max(axis=0).T  # one product per gallery row: no batches at all
    ahead = prefilter.block_best(probe_t, rows)
    np.testing.assert_allclose(ahead, plain, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(prefilter.block_best(probe_t, rows, read_ahead=False), ahead)


@pytest.mark.parametrize("t", [1, 2, 47, 48, 49, 50, 97, 145, 481, 512, 513, 561])
def test_prefilter_slabs_give_block_best_bit_for_bit(t):
    """The stored slabs (each batch contiguous) are scanned with block_best's batches: the same products of
    the same widths, so the same best matches bit for bit, also where a lone last template joins the batch
    before it across two slabs (t = 49, 97, 145, 481, 561) and in a second block (t > BLOCK_TEMPLATES)."""
    from biometrics.fingerprint import prefilter

    rng = np.random.default_rng(t)
    index = prefilter.SketchIndex()
    for _ in range(t):
        index.add(rng.standard_normal((prefilter.SKETCH_ROWS, prefilter.SKETCH_WIDTH)).astype(np.float32))
    index.sync(_raw_of(index))
    probe_t = np.ascontiguousarray(index.probe(rng.standard_normal((32, prefilter.SKETCH_WIDTH)).astype(np.float32)).T)
    assert [n for _, n in index.slabs()] == [b.shape[1] for b in index.blocks()]
    assert sum(n for _, n in index.slabs()) == t
    for (slabs, n), rows in zip(index.slabs(), index.blocks(), strict=True):
        assert slabs.shape[:3] == (prefilter.SLABS, prefilter.GALLERY_ROWS, prefilter.SUB_BLOCK)
        for ahead in (True, False):
            np.testing.assert_array_equal(
                prefilter.slab_best(probe_t, slabs, n, ahead), prefilter.block_best(probe_t, rows)
            )


@pytest.mark.parametrize("t", [1, 2, 47, 48, 49, 50, 96, 97, 145, 512])
def test_prefilter_batches_cover_every_template_once_and_never_one_alone(t):
    """block_best's batches tile the templates in order, at most SUB_BLOCK + 1 wide, and none holds a
    single template (a matrix-vector product, summed in another order) unless the block has only one."""
    from biometrics.fingerprint import prefilter

    bounds = prefilter.batches(t)
    assert bounds[0][0] == 0 and bounds[-1][1] == t
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    widths = [hi - lo for lo, hi in bounds]
    assert max(widths) <= prefilter.SUB_BLOCK + 1
    assert min(widths) >= 2 or t == 1


def test_pre_filter_reads_ahead_only_when_its_scan_has_the_memory_to_itself(monkeypatch):
    """One search on one thread reads ahead; a search whose blocks run on two threads, or one that starts
    while another search scans (the verifier's match workers), does not: they would share the bandwidth."""
    from biometrics.fingerprint import matcher, prefilter

    rng = np.random.default_rng(40)
    sets = [_random_finger(rng, 30) for _ in range(prefilter.BLOCK_TEMPLATES + 40)]  # two blocks
    flags: list[bool] = []
    real = prefilter.slab_best

    def spy(probe_t, slabs, t, read_ahead=True):
        flags.append(read_ahead)
        return real(probe_t, slabs, t, read_ahead)

    monkeypatch.setattr(prefilter, "slab_best", spy)
    single, spread = GalleryIndex(workers=1), GalleryIndex(workers=2)
    for index in (single, spread):
        for n, m in enumerate(sets):
            index.add(n, m)
        index.search(sets[0], top_k=1)  # packs the blocks (and refits: its own scans)
    flags.clear()
    single.prescores(sets[1])
    assert flags == [True, True]
    flags.clear()
    try:
        spread.prescores(sets[1])
    finally:
        spread.close()
    assert flags == [False, False]
    flags.clear()
    with matcher._scan_slot():  # another search scanning meanwhile
        single.prescores(sets[1])
    assert flags == [False, False]
    assert matcher._scans == 0, "every scan gives its slot back"


def test_local_similarity_passes_over_uncopied_rows_equal_the_gathered_rows():
    """A set gathered without copying its rows (the search's candidates) gets the same similarities and scores
    as one gathered by copy, its rows copied pass by pass into a reused scratch buffer; several passes give the
    similarities of one pass over all rows within float32 rounding (bit for bit on the build measured for
    passes of full size; the 7-row passes below differ in the last bits there too); every
    pass is at least PASS_PRODUCTS / n rows, and together they cover the rows once."""
    from biometrics.fingerprint import mcc_match

    rng = np.random.default_rng(29)
    sets = [cylinders_of(_random_finger(rng, m)) for m in (48, 12, 0, 30, 48, 8, 47, 3, 40, 41, 44)]
    stacked = mcc_match.stack(sets)
    probe = cylinders_of(_random_finger(rng, 45))
    pick = np.array([9, 4, 1, 7, 0, 6, 10, 3])
    copied, uncopied = mcc_match.gather(stacked, pick), mcc_match.gather(stacked, pick, copy=False)
    assert uncopied.rows is stacked.rows and uncopied.real_rows == copied.real_rows == len(copied.rows)
    np.testing.assert_array_equal(uncopied.values, copied.values)
    whole = mcc_match.local_similarity(probe, copied)
    assert (whole > 0).sum() > 100
    n = len(probe)
    for products, count in ((mcc_match.PASS_PRODUCTS, 1), (40 * n, 6), (7 * n, 37)):
        mcc_match.PASS_PRODUCTS, saved = products, mcc_match.PASS_PRODUCTS
        try:
            got = mcc_match.passes(copied.real_rows, n)
            assert len(got) == count + 1 and got[0] == 0 and got[-1] == copied.real_rows
            assert (np.diff(got) >= min(copied.real_rows, -(-products // n))).all()
            scratch = mcc_match.scratch_for(uncopied, n)
            assert len(scratch) == np.diff(got).max()
            from_stack = mcc_match.local_similarity(probe, uncopied, scratch)
            np.testing.assert_array_equal(from_stack, mcc_match.local_similarity(probe, copied))
            np.testing.assert_allclose(from_stack, whole, rtol=0, atol=2e-6)
            np.testing.assert_array_equal(mcc_match.scores(probe, uncopied), mcc_match.scores(probe, copied))
        finally:
            mcc_match.PASS_PRODUCTS = saved
    assert len(mcc_match.passes(10, n)) == 2 and mcc_match.passes(0, n).tolist() == [0, 0]


def test_relaxation_without_subnormal_compatibilities_gives_the_same_scores(monkeypatch):
    """Compatibilities under float32's smallest normal number (subnormal products of three sigmoids, slow in
    every relaxation product) are dropped: the scores are those of the relaxation that keeps them, bit for bit;
    a floor that drops real compatibilities would change them."""
    from biometrics.fingerprint import mcc_match

    rng = np.random.default_rng(31)
    sets = [cylinders_of(_random_finger(rng, m)) for m in (45, 48, 30, 40, 47, 44, 38, 48)]
    probes = [sets[0], cylinders_of(_random_finger(rng, 46))]
    packed = mcc_match.pack(sets)
    floored = [mcc_match.scores(p, packed) for p in probes]
    assert max(s.max() for s in floored) > 0.1
    monkeypatch.setattr(mcc_match, "RHO_FLOOR", 0.0)
    for p, got in zip(probes, floored, strict=True):
        np.testing.assert_array_equal(got, mcc_match.scores(p, packed))
    monkeypatch.setattr(mcc_match, "RHO_FLOOR", 0.99)
    assert any(not np.array_equal(got, mcc_match.scores(p, packed)) for p, got in zip(probes, floored, strict=True))


def _with_qualities(m: Minutiae, quality: np.ndarray) -> Minutiae:
    return Minutiae(m.x, m.y, m.angle, m.kind, np.asarray(quality, np.uint8))


def test_cylinders_carry_their_minutias_reliability_and_unreported_quality_weighs_one():
    rng = np.random.default_rng(3)
    finger = _random_finger(rng, 30)
    # Distinct (identifies each minutia), and from the extractor's floor (minutiae.MIN_RELIABILITY) up.
    quality = rng.choice(np.arange(45, 100), 30, replace=False).astype(np.uint8)
    c = cylinders_of(_with_qualities(finger, quality))
    assert 0 < len(c) <= len(finger)
    for x, y, r in zip(c.x, c.y, c.reliability, strict=True):
        at = np.flatnonzero((finger.x == x) & (finger.y == y))
        assert len(at) == 1 and r == pytest.approx(quality[at[0]] / 100.0)
    unknown = cylinders_of(_with_qualities(finger, np.zeros(len(finger))))  # ISO/IEC 19794-2: not reported
    np.testing.assert_array_equal(unknown.reliability, np.ones(len(unknown), np.float32))


def test_reliability_weights_average_one_over_the_live_pairs_and_favour_reliable_pairs():
    from biometrics.fingerprint import mcc_match

    ra = np.array([[0.9, 0.5, 0.9, 0.7], [0.6, 0.6, 0.6, 0.6]], np.float32)
    rb = np.array([[0.9, 0.5, 0.4, 0.7], [0.8, 0.8, 0.8, 0.8]], np.float32)
    live = np.array([[True, True, True, False], [True, True, False, False]])
    w = mcc_match.reliability_weights(ra, rb, live)
    assert w[0, 3] == 0.0 and w[1, 2] == w[1, 3] == 0.0
    np.testing.assert_allclose(w.sum(axis=1) / live.sum(axis=1), 1.0, rtol=1e-6)
    assert w[0, 0] > w[0, 2] > w[0, 1]  # ordered by r_a * r_b: 0.81 > 0.36 > 0.25
    assert w[0, 0] / w[0, 1] == pytest.approx((0.81 / 0.25) ** mcc_match.RELIABILITY_POWER, rel=1e-5)
    np.testing.assert_allclose(w[1, :2], 1.0, rtol=1e-6)  # equal reliabilities weigh alike


def test_informative_qualities_lift_a_genuine_score_spoiled_by_spurious_minutiae():
    """Spurious minutiae (quality 40) added to an impression of a finger (true minutiae 90): weighting
    the relaxed pairs by reliability never lowers the genuine score here, and raises it where look-alike
    spurious pairs had entered the relaxation (12 of 40 touches); any uniform quality leaves every score
    as it was."""
    raised = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        fx, fy, ft = rng.uniform(40, 360, 30), rng.uniform(40, 460, 30), rng.uniform(0, 2 * np.pi, 30)
        finger = _with_qualities(_minutiae(list(zip(fx, fy, ft, strict=True))), np.full(30, 90))
        a = np.radians(15.0)  # touched again: rotated, shifted, jittered by 3 px, a fifth missed
        x = np.cos(a) * fx - np.sin(a) * fy + 10.0 + rng.normal(0, 3.0, 30)
        y = np.sin(a) * fx + np.cos(a) * fy - 5.0 + rng.normal(0, 3.0, 30)
        keep = rng.random(30) > 0.2
        k = 25
        spurious = [(rng.uniform(40, 380), rng.uniform(40, 480), rng.uniform(0, 6.28)) for _ in range(k)]
        probe = _minutiae(list(zip(x[keep], y[keep], ft[keep] - a, strict=True)) + spurious)
        informative = match(finger, _with_qualities(probe, [90] * int(keep.sum()) + [40] * k))
        uniform = match(finger, _with_qualities(probe, np.full(len(probe), 70)))
        assert match(_with_qualities(finger, np.full(30, 40)), _with_qualities(probe, np.full(len(probe), 55))) == (
            pytest.approx(uniform, rel=1e-5, abs=1e-7)
        )
        assert informative >= uniform - 1e-6
        raised += informative > uniform + 1e-3
    assert raised >= 6  # 12 of the 40 measured


def test_gallery_carries_reliabilities_through_adds_and_compacting_removals(assert_same_scores):
    """The per-cylinder reliabilities travel with the 1:N stack: full scores equal the 1:1 ones, and
    stay equal to a fresh gallery's after removals compact the rows."""
    rng = np.random.default_rng(11)
    fingers = [_with_qualities(m, rng.integers(36, 100, len(m))) for m in (_random_finger(rng) for _ in range(24))]
    touch = _impression(fingers[20], rng, 10.0, (5.0, 4.0))
    probe = _with_qualities(touch, rng.integers(36, 100, len(touch)))
    grown = GalleryIndex()
    for n, m in enumerate(fingers):
        grown.add(n, m)
    np.testing.assert_allclose(grown.scores(probe), [match(probe, m) for m in fingers], rtol=1e-3, atol=1e-5)
    for n in range(10):  # over a quarter of the rows unreferenced: the stack compacts them
        assert grown.remove(n) == 1
    rest = GalleryIndex()
    for n in range(10, 24):
        rest.add(n, fingers[n])
    assert_same_scores(grown.scores(probe), rest.scores(probe))
    uniform = GalleryIndex()
    for n in range(10, 24):
        uniform.add(n, _with_qualities(fingers[n], np.full(len(fingers[n]), 80)))
    assert not np.allclose(uniform.scores(probe), rest.scores(probe))  # the qualities were used


def test_second_pass_lifts_mates_whose_spurious_minutiae_spoil_the_mutually_best_pairs(monkeypatch):
    """Both touches of a finger carry 16 to 29 spurious minutiae: the true pairs' cylinders hold spurious
    neighbours, so fewer of them are mutually best and the LSS-R evidence is weak although the alignment
    pairs many. The second pass (the relaxation redone on the aligned pairs, weighed) never lowers a score
    and lifts several of these mates (8 of the 80 touches here, one from 0.0085 to 0.020); with it
    switched off (nothing under SECOND_PASS_BELOW) the first pass's scores come back."""
    from biometrics.fingerprint import mcc_match

    pairs = []
    for seed in range(80):
        rng = np.random.default_rng(seed)
        fx, fy, ft = rng.uniform(40, 360, 30), rng.uniform(40, 460, 30), rng.uniform(0, 2 * np.pi, 30)
        spurious = int(rng.integers(10, 30))
        finger = list(zip(fx, fy, ft, strict=True)) + [
            (rng.uniform(40, 360), rng.uniform(40, 460), rng.uniform(0, 6.28)) for _ in range(spurious)
        ]
        a = np.radians(10.0)
        x = np.cos(a) * fx - np.sin(a) * fy + 10 + rng.normal(0, 4, 30)
        y = np.sin(a) * fx + np.cos(a) * fy - 5 + rng.normal(0, 4, 30)
        keep = rng.random(30) > 0.3
        turned = ft[keep] - a + rng.normal(0, 0.1, int(keep.sum()))
        probe = list(zip(x[keep], y[keep], turned, strict=True)) + [
            (rng.uniform(40, 380), rng.uniform(40, 480), rng.uniform(0, 6.28)) for _ in range(spurious)
        ]
        pairs.append((_minutiae(finger), _minutiae(probe)))
    with_second = [match(a, b) for a, b in pairs]
    monkeypatch.setattr(mcc_match, "SECOND_PASS_BELOW", 0.0, raising=False)
    first_only = [match(a, b) for a, b in pairs]
    assert all(s >= f - 1e-9 for s, f in zip(with_second, first_only, strict=True))
    raised = [s / max(f, 1e-9) for s, f in zip(with_second, first_only, strict=True) if s > f + 1e-6]
    assert len(raised) >= 5
    assert max(raised) > 1.5
