"""From a target false match rate to a score threshold that holds on every sensor seen.

A threshold is a promise: "at most one impostor in 10,000 is accepted". Fitted on
one pooled sample it holds on average over the sensors of that sample and breaks
on the sensor with the heaviest impostor tail (the first round's threshold, fitted
on FVC2002 pooled, let through 7 to 14 times its target on five held-out
databases). So the impostor model here is fitted per *group* of impostor pairs
(one group per sensor, one of pairs across sensors, one per synthetic
population) and the threshold is the largest of the groups' thresholds: it keeps
its promise on the worst group, and by margin on the others.

Per group, scores are those of :func:`biometrics.fingerprint.mcc_match.scores`
(already normalised for the minutiae counts, see that module). Above the group's
99th percentile t99 the tail is a generalised Pareto distribution:

    FMR(t) = 0.01 * (1 + xi * (t - t99) / sigma) ** (-1 / xi)   for t >= t99

(the exponential tail ``0.01 * exp(-(t - t99) / sigma)`` when xi = 0). The shape
xi comes from the moments of the exceedances and is never taken below 0: a tail
lighter than exponential is not extrapolated, one heavier (pairs that share
fingers, a few look-alike fingers in a population) is. The scale sigma is not the
point estimate but its one-sided 95 % upper confidence bound, ``sigma_hat * 2k /
chi2_{0.05}(2k)`` for k exceedances (as for the mean of k exponentials): a group
of 2,880 pairs has only 29 scores above its t99, and the bound widens its tail by
about 40 %, one of 100,000 pairs by 7 %. Above 1 % the group's threshold
interpolates its quantiles (50th, 75th, 90th, 99th percentiles) on a log-FMR
scale. No genuine score enters the model.

The constants come from ``python -m bench.fingerprint --calibrate
fvc2002/DB1_B fvc2002/DB2_B:569 fvc2002/DB3_B fvc2002/DB4_B --synthetic 200
--seed 1000``: 235,020 impostor pairs in six groups. The synthetic population is
drawn with a seed (1000) other than the benchmark's (0), so the benchmark's
synthetic figures are measured on fingers the fit never saw, and with the
generator's ``realistic`` capture profile (FVC-like distortion, contact and dry
skin). Refit after the matcher's global consolidation (mcc_match: the LSS-R
evidence combined with the paired fraction under one alignment; scores spread
over a wider range, and the median impostor scores 0 to 0.008 on FVC2002) and
the extractor's minutia reliability rule: a real sensor, FVC2002 DB4, sets both
thresholds, 0.1030 (1e-3) and 0.1451 (1e-4). The synthetic population would give
0.0876 and 0.1214; its 99th percentile (0.057) is within the real sensors' range
(0.040 to 0.061). Refit when the matcher, the extractor
or the synthetic generator changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from biometrics.fingerprint.errors import FingerprintError
from biometrics.tail import TAIL_FMR, fit_gpd_tail

QUANTILE_FMRS = (0.5, 0.25, 0.1, TAIL_FMR)


@dataclass(frozen=True, slots=True)
class TailFit:
    """The impostor model of one group: quantiles above 1 % and an exponential tail below."""

    name: str
    pairs: int
    quantiles: tuple[float, ...]  # scores at QUANTILE_FMRS
    beta: float  # 95 % upper bound of the tail scale (sigma)
    shape: float = 0.0  # generalised Pareto shape xi >= 0; 0 is the exponential tail

    def threshold(self, fmr: float) -> float:
        tail_score = self.quantiles[-1]
        if fmr <= TAIL_FMR:
            ratio = TAIL_FMR / fmr
            if self.shape < 1e-6:
                return tail_score + self.beta * math.log(ratio)
            return tail_score + self.beta / self.shape * (ratio**self.shape - 1.0)
        rates = np.log(QUANTILE_FMRS)[::-1]  # increasing
        values = np.array(self.quantiles)[::-1]
        if fmr >= QUANTILE_FMRS[0]:  # below the median: extend the last segment linearly in log FMR
            slope = (values[-1] - values[-2]) / (rates[-1] - rates[-2])
            return float(values[-1] + slope * (math.log(fmr) - rates[-1]))
        return float(np.interp(math.log(fmr), rates, values))


# Fitted by bench.fingerprint --calibrate (see module docstring).
GROUPS: tuple[TailFit, ...] = (
    TailFit("FVC2002 DB1_B", 2880, (0.00000, 0.00892, 0.01757, 0.04025), 0.01177, 0.0164),
    TailFit("FVC2002 DB2_B", 2880, (0.00209, 0.01124, 0.02123, 0.04405), 0.01086, 0.1706),
    TailFit("FVC2002 DB3_B", 2880, (0.00000, 0.01179, 0.02181, 0.04187), 0.01335, 0.0),
    TailFit("FVC2002 DB4_B", 2880, (0.00738, 0.01950, 0.03352, 0.06090), 0.01829, 0.0),
    TailFit("FVC2002 across folders", 38400, (0.00000, 0.00955, 0.01892, 0.04205), 0.01303, 0.0558),
    TailFit("synthetic 200 fingers seed 1000", 179100, (0.01140, 0.01968, 0.02993, 0.05680), 0.01278, 0.0397),
)


def threshold_for_fmr(fmr: float) -> float:
    """Score threshold (accept when score >= threshold) keeping false match rate ``fmr`` on every calibration group."""
    if not isinstance(fmr, int | float) or not 0.0 < float(fmr) < 1.0 or math.isnan(fmr):
        raise FingerprintError(f"fmr={fmr!r} must be a rate strictly between 0 and 1, e.g. 0.001 for 0.1 %")
    return max(group.threshold(float(fmr)) for group in GROUPS)


def fit_tail(name: str, impostor: np.ndarray) -> TailFit:
    """Quantiles and the 95 % upper bound of the tail scale of one group's impostor scores."""
    s = np.asarray(impostor, np.float64)
    if len(s) < 1000:
        raise FingerprintError(f"group {name!r} has {len(s)} impostor scores: a tail needs at least 1,000")
    quantiles = tuple(float(np.quantile(s, 1.0 - f)) for f in QUANTILE_FMRS)
    _, sigma_upper, shape, _ = fit_gpd_tail(s)  # every impostor pair its own unit (see biometrics.tail)
    return TailFit(name, len(s), quantiles, sigma_upper, round(shape, 4))
