"""The face threshold's calibration: tail bounds that count pairs of people, so the promise holds on unseen people.

Pure numpy: scores are simulated as a face set makes them, every image pair of
two people sharing a random "look-alike" term, so the true FMR of any threshold
is known in closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from biometrics.face.calibration import MODEL, fit_impostor_model, threshold_for_fmr
from biometrics.face.errors import FaceError
from biometrics.tail import chi2_lower, effective_count, fit_gpd_tail, rate_upper_bound

MEAN, LOOK_ALIKE, IMAGE = 0.1, 0.08, 0.04  # impostor score = MEAN + per-pair-of-people term + per-image-pair term


def face_set(rng: np.random.Generator, people: int = 20, images: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Impostor scores of ``people`` x ``images`` and the pair of people (unit) of each."""
    pairs = people * (people - 1) // 2
    shared = np.repeat(rng.normal(0.0, LOOK_ALIKE, pairs), images * images)
    scores = MEAN + shared + rng.normal(0.0, IMAGE, pairs * images * images)
    return scores, np.repeat(np.arange(pairs), images * images)


def true_fmr(threshold: float) -> float:
    return 0.5 * math.erfc((threshold - MEAN) / math.sqrt(2.0 * (LOOK_ALIKE**2 + IMAGE**2)))


def test_the_promise_holds_on_unseen_people_only_when_pairs_of_people_are_the_units() -> None:
    """Fitted on 20 people, the 0.1 % threshold must keep 0.1 % on the population in at least 95 % of draws;
    counting image pairs as independent (what the first model did) breaks it far more often."""
    rng = np.random.default_rng(7)
    by_units, by_images = [], []
    for _ in range(40):
        scores, units = face_set(rng)
        by_units.append(true_fmr(fit_impostor_model(scores, units).threshold(1e-3)) / 1e-3)
        by_images.append(true_fmr(fit_impostor_model(scores).threshold(1e-3)) / 1e-3)
    assert np.mean(np.array(by_units) > 1.0) <= 0.05
    assert np.mean(np.array(by_images) > 1.0) >= 0.2 and max(by_images) > 2.0


def test_clustered_exceedances_widen_both_bounds() -> None:
    scores, units = face_set(np.random.default_rng(3))
    clustered, independent = fit_impostor_model(scores, units), fit_impostor_model(scores)
    assert clustered.quantiles == independent.quantiles  # the same sample; only the bounds differ
    assert clustered.units < 0.1 * independent.units  # a few look-alike pairs of people hold the tail
    assert clustered.sigma > independent.sigma and clustered.tail_rate > independent.tail_rate
    assert clustered.threshold(1e-3) > independent.threshold(1e-3)


def test_kish_effective_count() -> None:
    assert effective_count(np.repeat(np.arange(10), 5)) == pytest.approx(10.0)  # equal units: their number
    assert effective_count(np.array([0] * 97 + [1, 2, 3])) == pytest.approx(100**2 / (97**2 + 3), rel=1e-9)
    assert effective_count(np.arange(40)) == 40.0 and effective_count(np.array([])) == 0.0


def test_the_scale_bound_widens_as_the_independent_exceedances_get_fewer() -> None:
    s = np.random.default_rng(5).exponential(1.0, 20_000)  # 200 exceedances above t99
    fits = [fit_gpd_tail(s, None if m is None else np.arange(len(s)) % m) for m in (None, 50, 10)]
    k = [f[3] for f in fits]  # Kish's count: at most the units the exceedances fall in, less when uneven
    assert k[0] == 200 and 30 < k[1] <= 50 and 7 < k[2] <= 10
    assert len({(f[0], f[2]) for f in fits}) == 1  # same t99 and shape: only the bound differs
    assert fits[0][1] < fits[1][1] < fits[2][1]
    assert chi2_lower(100) == pytest.approx(77.93, rel=0.01)  # exact 5 % quantile of chi2(100): 77.929


def test_the_rate_bound_counts_units() -> None:
    rng = np.random.default_rng(2)
    x = rng.random(10_000) < 0.01
    independent = rate_upper_bound(x)
    lumped = np.zeros(10_000, bool)
    lumped[: int(x.sum())] = True  # as many exceedances, all in the first pairs of people
    units = np.arange(10_000) // 100
    assert x.mean() < independent < rate_upper_bound(lumped, units)
    assert rate_upper_bound(x, units) == pytest.approx(independent, rel=0.25)  # scattered: about binomial


def test_the_shipped_model_and_its_errors() -> None:
    assert MODEL.tail_rate >= 0.01 and MODEL.sigma > 0 and MODEL.xi >= 0
    assert threshold_for_fmr(MODEL.tail_rate) == pytest.approx(MODEL.quantiles[-1])  # the tail starts at t99
    above, below = threshold_for_fmr(MODEL.tail_rate * 1.001), threshold_for_fmr(MODEL.tail_rate * 0.999)
    assert below > above and below - above < 1e-3  # one continuous curve where the quantiles meet the tail
    assert threshold_for_fmr(0.1) == pytest.approx(MODEL.quantiles[2])
    assert threshold_for_fmr(1e-3) < threshold_for_fmr(1e-4) < 1.0
    with pytest.raises(FaceError, match="at least 1,000"):
        fit_impostor_model(np.zeros(999))
