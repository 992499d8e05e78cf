"""Calibration: the score normalisation, the per-group tail fit, and the thresholds drawn from them."""

from __future__ import annotations

import numpy as np
import pytest

from bench.cli import BenchError
from bench.fingerprint import CalibrationData, at_thresholds, binomial_limit_95, held_out_check, leave_one_out
from biometrics.fingerprint import mcc_match, threshold_for_fmr
from biometrics.fingerprint.calibration import GROUPS, MIN_SHAPE_UNITS, fit_group, fit_groups
from biometrics.fingerprint.errors import FingerprintError
from biometrics.tail import ImpostorTail, chi2_lower, fit_impostor_tail, pair_units, spread_upper_bound


def test_normalisation_keeps_full_evidence_scores_and_pulls_thin_evidence_to_the_impostor_centre():
    raw = np.array([0.0, mcc_match.NULL_CENTRE, 0.05, 0.3])
    full = mcc_match.normalise(raw, np.full(4, mcc_match.MAX_NP))
    np.testing.assert_allclose(full, raw)
    thin = mcc_match.normalise(raw, np.full(4, mcc_match.MIN_NP))
    # Above the centre, fewer pairs = a lower score; the centre itself does not move.
    assert thin[1] == pytest.approx(mcc_match.NULL_CENTRE)
    assert np.all(thin[2:] < raw[2:])
    assert np.all(np.diff(thin) > 0)  # still monotonic in the raw score
    assert np.all(thin >= 0.0)


def test_chi2_lower_quantile_matches_known_values():
    # Tables: chi2_{0.05}(58) = 41.49, chi2_{0.05}(200) = 168.28.
    assert chi2_lower(58) == pytest.approx(41.49, rel=0.01)
    assert chi2_lower(200) == pytest.approx(168.28, rel=0.005)


def test_fitted_tail_is_conservative_on_fresh_samples_of_the_same_distribution():
    """An exponential-tailed sample of 3,000 scores: the threshold from its fit, checked on a
    million fresh scores, lets through no more than its target (the bound errs on the safe side)."""
    rng = np.random.default_rng(1)
    draw = lambda n: 0.015 + rng.gamma(2.0, 0.003, n)  # noqa: E731  a light, exponential-like tail
    fit = fit_group("test", draw(3000))
    fresh = draw(1_000_000)
    for target in (1e-3, 1e-4):
        measured = float((fresh >= fit.threshold(target)).mean())
        assert measured <= target * 1.2, (target, measured)
    # The bound is above the maximum-likelihood scale.
    s = draw(3000)
    t99 = np.quantile(s, 0.99)
    assert fit_group("again", s).tail.sigma > float((s[s > t99] - t99).mean())


def test_a_heavy_tail_is_fitted_as_one_and_still_kept():
    """Impostor pairs sharing fingers give a tail heavier than exponential: the fit sees it
    (shape > 0) and its 1e-4 threshold still holds on fresh scores, where an exponential
    fit of the same sample would let through several times its target."""
    rng = np.random.default_rng(2)
    xi, sigma = 0.2, 0.004
    draw = lambda n: 0.015 + sigma / xi * ((1.0 - rng.random(n)) ** -xi - 1.0)  # noqa: E731
    sample = draw(20_000)
    fit = fit_group("heavy", sample)
    assert 0.1 < fit.tail.xi < 0.3
    fresh = draw(2_000_000)
    assert float((fresh >= fit.threshold(1e-4)).mean()) <= 1.2e-4
    t99 = fit.tail.quantiles[-1]
    exponential = ImpostorTail(fit.tail.pairs, fit.tail.quantiles, 0.01, float(np.mean(sample[sample > t99]) - t99))
    assert float((fresh >= exponential.threshold(1e-4)).mean()) > 2e-4


def test_fit_needs_enough_pairs():
    with pytest.raises(FingerprintError, match="1,000"):
        fit_group("tiny", np.linspace(0, 0.1, 200))


def test_threshold_keeps_the_promise_on_every_group():
    for fmr in (1e-2, 1e-3, 1e-4, 1e-5):
        t = threshold_for_fmr(fmr)
        assert all(t >= g.threshold(fmr) - 1e-12 for g in GROUPS)
        assert any(t == pytest.approx(g.threshold(fmr)) for g in GROUPS)  # and no more than the worst needs


@pytest.mark.parametrize("shape", [0.0, 0.2])
def test_group_thresholds_are_continuous_and_monotonic(shape):
    g = ImpostorTail(5000, (0.015, 0.017, 0.019, 0.024), 0.01, 0.004, shape)
    rates = np.geomspace(0.9, 1e-6, 400)
    values = [g.threshold(float(r)) for r in rates]
    assert np.all(np.diff(values) > 0)
    assert g.threshold(0.0100001) == pytest.approx(g.threshold(0.0099999), abs=1e-6)


def test_the_committed_groups_count_pairs_of_fingers_not_pairs_of_impressions():
    """Impressions of two fingers rise and fall together: a fit that took each impression pair as
    independent would be far too sure of a 10-finger sensor's tail (its bound would count the 29
    exceedances of 2,880 pairs where a few pairs of fingers hold them)."""
    for g in GROUPS:
        exceedances = 0.01 * g.tail.pairs
        assert 1.0 <= g.tail.units < exceedances, g.name
        assert g.tail.tail_rate >= 0.01
    fvc = [g for g in GROUPS if g.name.startswith("FVC2002 DB")]
    assert fvc and all(g.tail.units < 0.6 * 0.01 * g.tail.pairs for g in fvc)


def test_pairs_of_fingers_widen_the_bounds_of_a_clustered_tail():
    """10 fingers x 8 impressions, scores = a per-pair-of-fingers term + a per-impression-pair term."""
    rng = np.random.default_rng(5)
    fingers = np.repeat(np.arange(10), 8)
    units = pair_units(fingers)
    lo, hi = np.triu_indices(len(fingers), k=1)
    impostor = fingers[lo] != fingers[hi]
    look_alike = rng.gamma(1.0, 0.01, 100)[fingers[lo] * 10 + fingers[hi]]
    scores = (0.02 + look_alike + rng.gamma(2.0, 0.002, len(lo)))[impostor]
    clustered, independent = fit_group("c", scores, units[impostor]), fit_group("i", scores)
    assert clustered.tail.quantiles == independent.tail.quantiles
    assert clustered.tail.units < 0.5 * independent.tail.units
    assert clustered.threshold(1e-4) > independent.threshold(1e-4)


def test_a_small_group_takes_the_shape_the_large_groups_measured():
    """A 10-finger sensor's tail comes from a handful of pairs of fingers: its own moment shape is
    noise, so it takes the unit-weighted shape of the groups large enough to measure one, while its
    position and scale stay its own."""
    rng = np.random.default_rng(11)
    xi, sigma = 0.1, 0.004

    def gpd(n: int) -> np.ndarray:
        return 0.015 + sigma / xi * ((1.0 - rng.random(n)) ** -xi - 1.0)

    fingers = np.repeat(np.arange(10), 8)
    lo, hi = np.triu_indices(len(fingers), k=1)
    impostor = fingers[lo] != fingers[hi]
    small = (rng.gamma(1.0, 0.01, 100)[fingers[lo] * 10 + fingers[hi]] + gpd(len(lo)))[impostor]
    small_units = pair_units(fingers)[impostor]
    large = gpd(200_000)
    lighter = 0.015 + rng.exponential(sigma, 20_000)  # a second large group, smaller and exponential
    fits = fit_groups([("small", small, small_units), ("large", large, None), ("lighter", lighter, None)])
    alone = fit_group("small", small, small_units)
    assert fits[1] == fit_group("large", large) and fits[2] == fit_group("lighter", lighter)  # large: their own
    assert min(fits[1].tail.units, fits[2].tail.units) >= MIN_SHAPE_UNITS > fits[0].tail.units
    assert 0.5 * xi < fits[1].tail.xi < 1.5 * xi and fits[2].tail.xi < 0.5 * xi
    weighted = (fits[1].tail.units * fits[1].tail.xi + fits[2].tail.units * fits[2].tail.xi) / (
        fits[1].tail.units + fits[2].tail.units
    )
    assert fits[0].tail.xi == pytest.approx(weighted)  # by units: the larger group counts ten times more
    assert fits[0].tail.quantiles == alone.tail.quantiles and fits[0].tail.units == alone.tail.units
    # no large group: the exponential
    assert fit_groups([("small", small, small_units)])[0].tail.xi == 0.0


def _clustered_folder(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Impostor scores of a 10-finger x 8-impression folder whose pairs of fingers each have their own level."""
    fingers = np.repeat(np.arange(10), 8)
    lo, hi = np.triu_indices(len(fingers), k=1)
    impostor = fingers[lo] != fingers[hi]
    level = rng.gamma(2.0, 0.004, 100)[fingers[lo] * 10 + fingers[hi]][impostor]
    return level + rng.gamma(2.0, 0.004, impostor.sum()), pair_units(fingers)[impostor]


def test_a_small_group_borrows_the_large_groups_relative_excess_unless_its_own_tail_is_wider():
    """Five pairs of fingers cannot bound a scale (here the bound alone is 2.6 times the estimate), so a
    small group takes the large groups' largest mean excess per unit of t90-t99 spread, applied to the
    upper bound of its own spread. A small group whose own tail is wider keeps its own bound."""
    rng = np.random.default_rng(5)
    small, units = _clustered_folder(rng)
    wide = small.copy()
    top = np.argsort(small)[-20:]
    wide[top] += rng.exponential(0.05, 20)  # the same bulk, a far longer tail
    large = [rng.gamma(2.0, 0.006, 100_000), 0.004 + 0.01 * rng.pareto(8.0, 50_000)]  # exponential-like, heavier
    fits = fit_groups([("small", small, units), ("wide", wide, units), ("a", large[0], None), ("b", large[1], None)])
    assert max(f.tail.units for f in fits[:2]) < MIN_SHAPE_UNITS <= min(f.tail.units for f in fits[2:])
    assert fits[3].tail.xi > 0.05  # the borrowed shape is not the exponential's
    ratio = max(fits[2].tail.relative_excess, fits[3].tail.relative_excess)
    own_small = fit_group("small", small, units, fits[0].tail.xi)
    own_wide = fit_group("wide", wide, units, fits[1].tail.xi)
    spread = fits[0].tail.quantiles[-1] - fits[0].tail.quantiles[-2]
    borrowed = ratio * spread_upper_bound(small, units) * (1.0 - fits[0].tail.xi)
    assert fits[0].tail.sigma == pytest.approx(borrowed)
    assert spread_upper_bound(small, units) > spread  # the spread's own uncertainty is counted
    assert fits[0].tail.sigma < own_small.tail.sigma  # tighter than its own bound
    assert fits[0].tail.quantiles == own_small.tail.quantiles and fits[0].tail.tail_rate == own_small.tail.tail_rate
    assert fits[1].tail.sigma == own_wide.tail.sigma  # its own tail is wider: its own bound
    assert fits[2] == fit_group("a", large[0]) and fits[3] == fit_group("b", large[1])  # large: their own


def test_borrowing_stops_exactly_where_the_groups_own_scale_estimate_exceeds_the_borrowed_one():
    small, units = _clustered_folder(np.random.default_rng(9))
    own = fit_impostor_tail(small, units, 0.05)
    point = fit_impostor_tail(small, units, 0.05, relative_excess=0.0)  # borrowed 0: the own bound
    assert point == own
    # The relative excess at which the borrowed scale equals the point estimate.
    t99 = own.quantiles[-1]
    excess = small[small > t99] - t99
    at = excess.mean() / spread_upper_bound(small, units)
    below = fit_impostor_tail(small, units, 0.05, relative_excess=at * 0.999)
    above = fit_impostor_tail(small, units, 0.05, relative_excess=at * 1.001)
    assert below.sigma == own.sigma  # borrowed < its own point estimate: its own bound
    assert above.sigma == pytest.approx(at * 1.001 * spread_upper_bound(small, units) * 0.95)
    assert above.sigma < own.sigma
    with pytest.raises(ValueError, match="finite"):
        fit_impostor_tail(small, units, 0.05, relative_excess=float("inf"))


def test_a_large_group_without_spread_lends_nothing():
    small, units = _clustered_folder(np.random.default_rng(3))
    flat = np.zeros(20_000)  # every impostor at 0: no t90-t99 spread, an infinite relative excess
    fits = fit_groups(
        [
            ("small", small, units),
            ("flat", flat, None),
            ("large", np.random.default_rng(4).gamma(2.0, 0.006, 50_000), None),
        ]
    )
    assert np.isfinite(fits[0].tail.sigma) and np.isfinite(fits[0].threshold(1e-6))


def test_the_spread_bound_widens_with_clustering():
    rng = np.random.default_rng(2)
    clustered, units = _clustered_folder(rng)
    spread = float(np.quantile(clustered, 0.99) - np.quantile(clustered, 0.9))
    independent = spread_upper_bound(clustered)  # every score its own unit
    assert spread < independent < spread_upper_bound(clustered, units)


def test_binomial_limit():
    # 2,880 pairs: a true rate of 1e-4 gives 0 or 1 false match 95 % of the time; 1e-3 up to 6.
    assert binomial_limit_95(2880, 1e-4) == 1
    assert binomial_limit_95(2880, 1e-3) == 6
    assert binomial_limit_95(100, 0.5) == 58


def test_bench_reports_rates_at_the_calibrated_thresholds():
    t3, t4 = threshold_for_fmr(1e-3), threshold_for_fmr(1e-4)
    impostor = np.r_[np.zeros(997), t3, t4, t4 + 0.1]
    genuine = np.r_[np.full(3, t3), np.full(7, 1.0)]
    r = at_thresholds(genuine, impostor)
    assert r["false_matches"] == {"1e-03": 3, "1e-04": 2}
    assert r["fmr_at_threshold"]["1e-03"] == pytest.approx(0.3)
    assert r["fnmr_at_threshold"]["1e-04"] == pytest.approx(30.0)  # the three at t3 < t4
    assert r["fnmr_at_threshold"]["1e-03"] == 0.0


def _gamma(seed: int, scale: float, n: int = 20_000) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, scale, n)


def test_a_held_out_sensor_is_counted_at_thresholds_fitted_without_it():
    groups = [("light", _gamma(1, 0.006), None), ("heavy", _gamma(2, 0.009), None)]
    genuine = np.r_[np.zeros(50), np.ones(50)]
    like = held_out_check(groups, _gamma(3, 0.006, 3000), genuine)
    assert like["set_by"] == {"1e-03": "heavy", "1e-04": "heavy"}  # the worst group sets each threshold
    assert like["thresholds"]["1e-04"] > like["thresholds"]["1e-03"]
    assert like["false_match_limit_95"] == {"1e-03": binomial_limit_95(3000, 1e-3), "1e-04": 1}
    for key in ("1e-03", "1e-04"):  # a sensor like the calibration's keeps the promise
        assert like["false_matches"][key] <= like["false_match_limit_95"][key]
    assert like["fnmr_at_threshold"] == {"1e-03": 50.0, "1e-04": 50.0}
    # A sensor whose impostors score far higher breaks it, and the check says so.
    unlike = held_out_check(groups, _gamma(3, 0.006, 3000) + like["thresholds"]["1e-04"], genuine)
    assert unlike["false_matches"]["1e-04"] == 3000 > unlike["false_match_limit_95"]["1e-04"]


def test_leave_one_out_drops_the_held_out_folders_pairs_across_folders():
    folders = [(f"DB{k}", _gamma(10 + k, 0.006, 3000), None) for k in range(3)]
    genuine = [np.ones(10)] * 3
    pairs = np.array([(a, b) for a in range(3) for b in range(a + 1, 3)] * 2000)  # 6,000 pairs across folders
    across_scores = np.where((pairs == 0).any(axis=1), 0.5, 0.0) + _gamma(20, 0.006, len(pairs))
    checks = leave_one_out(CalibrationData(folders, genuine, ("across folders", across_scores, None), None, pairs))
    assert [c["held_out"] for c in checks] == ["DB0", "DB1", "DB2"]
    # Only DB0's pairs across folders score high: held out, it takes them along, and the thresholds drop.
    assert checks[0]["thresholds"]["1e-04"] < 0.2 < checks[1]["thresholds"]["1e-04"]
    assert checks[1]["set_by"]["1e-04"] == "across folders"
    with pytest.raises(BenchError, match="second folder"):
        leave_one_out(CalibrationData(folders[:1], genuine[:1], None, None, np.zeros((0, 2), np.int64)))
