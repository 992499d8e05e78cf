"""The upper tail of an impostor score sample: a generalised Pareto fit whose rate and scale are 95 % upper bounds.

Pure numpy, shared by any modality whose threshold is a promise about a false
match rate far below what its calibration sample can show directly.

Above the sample's 99th percentile t99 the tail is a generalised Pareto
distribution,

    FMR(t) = tail_rate * (1 + xi * (t - t99) / sigma) ** (-1 / xi)   for t >= t99

(the exponential tail ``tail_rate * exp(-(t - t99) / sigma)`` when xi = 0), and
:class:`ImpostorTail` joins it to the sample's quantiles above. The shape xi
comes from the moments of the exceedances (or is given, for a sample too small
to measure one) and is never taken below 0: a tail lighter than exponential is
not extrapolated, a heavier one is. ``tail_rate``, the share of impostors above
t99, is the one-sided 95 % upper bound of that share (at least 1 %), and the
scale is not the point estimate but its one-sided 95 % upper confidence bound,
``sigma_hat * 2k / chi2_{0.05}(2k)`` (as for the mean of k exponentials).

Correlated exceedances. That bound assumes k independent exceedances. Impostor
pairs are often not independent: in a face set every image pair of two given
people shares those two people, so a look-alike pair of people puts dozens of
image pairs above t99 at once, and those say little more than one of them. The
caller therefore names each score's *unit* (for faces, the unordered pair of
people), and k is the effective number of independent exceedances, Kish's
``(sum n_u)^2 / sum n_u^2`` over the units' exceedance counts n_u: the count of
units when they contribute equally, fewer when a few dominate, and never more
than the number of exceedances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TAIL_FMR = 0.01
QUANTILE_FMRS = (0.5, 0.25, 0.1, TAIL_FMR)  # the bulk of an impostor model: its quantiles at these rates
_Z95 = 1.6448536269514722  # standard normal 95 % quantile


def chi2_lower(dof: float, z: float = _Z95) -> float:
    """Lower 5 % quantile of a chi-square with ``dof`` degrees of freedom (Wilson-Hilferty).

    Within 1 % of the exact quantile from 20 degrees of freedom; below that it
    errs low (0.079 against 0.103 at 2), which only widens the bound.
    """
    k = float(dof)
    return k * max(1.0 - 2.0 / (9.0 * k) - z * math.sqrt(2.0 / (9.0 * k)), 0.0) ** 3


def effective_count(units: np.ndarray) -> float:
    """Kish's effective number of independent observations of a sample grouped by ``units``."""
    _, counts = np.unique(np.asarray(units), return_counts=True)
    if not len(counts):
        return 0.0
    c = counts.astype(np.float64)
    return float(c.sum() ** 2 / (c * c).sum())


def fit_gpd_tail(
    scores: np.ndarray, units: np.ndarray | None = None, shape: float | None = None
) -> tuple[float, float, float, float]:
    """(t99, sigma_upper, xi, k_effective) of a score sample's tail above its 99th percentile.

    ``units`` (one label per score) groups scores that are not independent; None
    takes every score as its own unit. ``shape`` fixes xi instead of estimating it
    (for a sample too small to estimate a shape: see ``fit_impostor_tail``).
    """
    t99, sigma, xi, k_eff = _fit_gpd_point(scores, units, shape)
    return t99, _scale_upper_bound(sigma, k_eff), xi, k_eff


def _scale_upper_bound(sigma: float, k_eff: float) -> float:
    """One-sided 95 % upper bound of a tail scale estimated from ``k_eff`` independent exceedances."""
    bound = chi2_lower(2.0 * k_eff) if k_eff >= 1.0 else 0.0
    return sigma * 2.0 * k_eff / bound if bound > 0.0 else 2.0 * sigma


def _fit_gpd_point(
    scores: np.ndarray, units: np.ndarray | None, shape: float | None
) -> tuple[float, float, float, float]:
    """(t99, sigma, xi, k_effective): the tail's moment estimates, the scale as a point estimate."""
    s = np.asarray(scores, np.float64)
    t99 = float(np.quantile(s, 1.0 - TAIL_FMR))
    above = s > t99
    excess = s[above] - t99
    k = len(excess)
    k_eff = float(k) if units is None else effective_count(np.asarray(units)[above])
    mean = float(excess.mean()) if k else 0.0
    var = float(excess.var(ddof=1)) if k > 1 else 0.0
    if shape is not None:  # a known shape: the generalised Pareto mean is sigma / (1 - xi)
        if not 0.0 <= float(shape) < 1.0:
            raise ValueError(f"a tail shape is in [0, 1) (a mean excess exists); got {shape!r}")
        xi = float(shape)
        sigma = mean * (1.0 - xi)
    elif var > 0.0:  # method of moments for the generalised Pareto distribution
        xi = max(0.0, 0.5 * (1.0 - mean * mean / var))
        sigma = 0.5 * mean * (1.0 + mean * mean / var) if xi > 0.0 else mean
    else:
        xi, sigma = 0.0, mean
    return t99, sigma, xi, k_eff


def tail_threshold(fmr: float, t99: float, sigma: float, xi: float) -> float:
    """The score above which the fitted tail leaves ``fmr`` (<= TAIL_FMR) of the impostors."""
    ratio = TAIL_FMR / fmr
    if xi < 1e-6:
        return t99 + sigma * math.log(ratio)
    return t99 + sigma / xi * (ratio**xi - 1.0)


def rate_upper_bound(exceeds: np.ndarray, units: np.ndarray | None = None) -> float:
    """One-sided 95 % upper bound of the fraction of True in ``exceeds``, counting ``units`` as the clusters.

    The cluster-robust (ratio-estimator) standard error: scores of one unit rise
    and fall together, so the spread between units, not the number of scores,
    says how well the fraction is known. None takes every score as its own unit.
    """
    x = np.asarray(exceeds, bool)
    if units is None:
        units = np.arange(len(x))
    _, inverse = np.unique(np.asarray(units), return_inverse=True)
    m = np.bincount(inverse).astype(np.float64)
    n = np.bincount(inverse, weights=x.astype(np.float64))
    total, count = float(m.sum()), len(m)
    p = float(n.sum()) / total
    if count < 2:
        return 1.0
    se = math.sqrt(count / (count - 1) * float(((n - p * m) ** 2).sum())) / total
    return min(1.0, p + _Z95 * se)


def pair_units(identities: np.ndarray) -> np.ndarray:
    """Per unordered pair of samples (``np.triu_indices(n, 1)`` order), a label of its unordered pair of identities.

    Sample pairs of the same two identities (people, fingers) are not independent:
    a look-alike pair of identities puts all its sample pairs into the tail at once,
    so the bounds here count these labels, not sample pairs.
    """
    _, ids = np.unique(np.asarray(identities), return_inverse=True)
    iu, ju = np.triu_indices(len(ids), k=1)
    lo, hi = np.minimum(ids[iu], ids[ju]), np.maximum(ids[iu], ids[ju])
    return lo.astype(np.int64) * (int(ids.max(initial=0)) + 1) + hi


@dataclass(frozen=True, slots=True)
class ImpostorTail:
    """An impostor score model: quantiles down to 1 %, then a generalised Pareto tail with bounded rate and scale.

    ``FMR(t) = tail_rate * (1 + xi (t - t99) / sigma) ** (-1 / xi)`` below
    ``tail_rate`` (the exponential when xi = 0), where ``tail_rate`` is the 95 %
    upper bound of the impostor fraction above t99 (at least 1 %) and sigma the
    95 % upper bound of the scale, both counting independent units. Above the
    tail, the threshold interpolates the quantiles (50th, 75th, 90th percentiles,
    then t99 placed at ``tail_rate``: one continuous curve) on a log-FMR scale.
    """

    pairs: int  # impostor sample pairs fitted
    quantiles: tuple[float, ...]  # scores at QUANTILE_FMRS; the last is t99
    tail_rate: float  # 95 % upper bound of the impostor fraction above t99
    sigma: float  # 95 % upper bound of the tail's scale (or borrowed: see fit_impostor_tail)
    xi: float = 0.0  # tail shape, >= 0
    units: float = 0.0  # effective number of independent exceedances above t99

    @property
    def relative_excess(self) -> float:
        """The tail's (bounded) mean excess sigma / (1 - xi) per unit of its t90-t99 spread; inf if no spread."""
        spread = self.quantiles[-1] - self.quantiles[-2]
        return self.sigma / (1.0 - self.xi) / spread if spread > 0.0 else math.inf

    def threshold(self, fmr: float) -> float:
        """Score threshold (accept when score >= threshold) for false match rate ``fmr``."""
        if fmr <= self.tail_rate:
            return tail_threshold(fmr / self.tail_rate * TAIL_FMR, self.quantiles[-1], self.sigma, self.xi)
        keep = [i for i, f in enumerate(QUANTILE_FMRS[:-1]) if f > self.tail_rate]
        rates = np.log([QUANTILE_FMRS[i] for i in keep] + [self.tail_rate])[::-1]  # increasing
        values = np.array([self.quantiles[i] for i in keep] + [self.quantiles[-1]])[::-1]
        if len(rates) < 2:
            return self.quantiles[-1]
        if fmr >= QUANTILE_FMRS[0]:  # below the median: extend the last segment linearly in log FMR
            slope = (values[-1] - values[-2]) / (rates[-1] - rates[-2])
            return float(values[-1] + slope * (math.log(fmr) - rates[-1]))
        return float(np.interp(math.log(fmr), rates, values))


def spread_upper_bound(scores: np.ndarray, units: np.ndarray | None = None, reps: int = 1000) -> float:
    """One-sided 95 % upper bound of a sample's t90-t99 spread, by a bootstrap over its units.

    A 10-finger folder's spread comes from only 45 pairs of fingers, and its top
    (t99) is where a look-alike pair's impressions gather, so it is not known
    exactly either: whole units are drawn with replacement (a fixed seed, so a
    refit is reproducible) and the spread of each draw is read off the weighted
    sample (lower quantiles, no interpolation).
    """
    s = np.asarray(scores, np.float64)
    if units is None:
        units = np.arange(len(s))
    order = np.argsort(s, kind="stable")
    _, unit = np.unique(np.asarray(units)[order], return_inverse=True)
    ranked = s[order]
    count = int(unit.max()) + 1
    t90_fmr = QUANTILE_FMRS[-2]
    rng = np.random.default_rng(20261130)
    chunk = max(1, 4_000_000 // max(len(s), count))  # draws at a time: bounded memory on a large sample
    spreads = []
    for start in range(0, reps, chunk):
        weights = rng.multinomial(count, np.full(count, 1.0 / count), min(chunk, reps - start))
        cumulative = np.cumsum(weights[:, unit], axis=1, dtype=np.float64)
        total = cumulative[:, -1:]
        lo, hi = (np.minimum((cumulative < q * total).sum(axis=1), len(s) - 1) for q in (1.0 - t90_fmr, 1.0 - TAIL_FMR))
        spreads.append(ranked[hi] - ranked[lo])
    return float(np.quantile(np.concatenate(spreads), 0.95))


def fit_impostor_tail(
    scores: np.ndarray,
    units: np.ndarray | None = None,
    shape: float | None = None,
    relative_excess: float | None = None,
) -> ImpostorTail:
    """The :class:`ImpostorTail` of an impostor score sample; ``units`` labels each score's pair of identities.

    None takes every score as its own unit, which is right only when no two
    scores share an identity. ``shape`` fixes the tail's shape xi (None: its
    moment estimate): a shape needs many independent exceedances to be measured,
    and a handful of units (a 10-finger sensor's tail comes from 5 to 10 pairs of
    fingers) gives anything from 0 to 0.15 by chance. The caller checks that the
    sample is large enough.

    ``relative_excess`` borrows the scale instead of bounding it from a handful
    of units: the tail's mean excess, as a multiple of the sample's t90-t99 spread
    taken at its 95 % upper bound (:func:`spread_upper_bound`), from samples whose
    own bounds are tight. That transfers a tail's form from one population to
    another of a similar bulk: an assumption, checked (heuristically, at the 50 %
    level) by the sample's own point estimate of the scale, which must not exceed
    the borrowed one; a sample whose tail looks wider keeps its own upper bound.
    """
    s = np.asarray(scores, np.float64)
    quantiles = tuple(float(np.quantile(s, 1.0 - f)) for f in QUANTILE_FMRS)
    t99, point, xi, k_eff = _fit_gpd_point(s, units, shape)
    sigma = _scale_upper_bound(point, k_eff)
    if relative_excess is not None:
        if not math.isfinite(relative_excess) or relative_excess < 0.0:
            raise ValueError(f"a relative excess is finite and >= 0; got {relative_excess!r}")
        borrowed = relative_excess * spread_upper_bound(s, units) * (1.0 - xi)
        if point <= borrowed:
            sigma = borrowed
    rate = max(TAIL_FMR, rate_upper_bound(s > t99, units))
    return ImpostorTail(len(s), quantiles, rate, sigma, xi, k_eff)
