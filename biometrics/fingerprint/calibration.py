"""From a target false match rate to a score threshold.

Impostor model: above its 99th percentile, the impostor score distribution is
modelled by an exponential tail (a generalised Pareto tail with shape 0, the
limit for light-tailed scores such as a mean of bounded similarities):

    FMR(t) = 0.01 * exp(-(t - t99) / beta)   for t >= t99

beta is the maximum-likelihood estimate, the mean excess over t99 (115 scores
in the fitting sample). Above 1 % the model interpolates the impostor quantiles
(50th, 75th, 90th, 99th percentiles) on a log-FMR scale. The constants come from
``python -m bench.fingerprint --calibrate DIR...`` on impostor pairs only
(all-pairs impostors of the four FVC2002 set-B folders pooled, 11,520 scores):
no genuine score enters the model, so the thresholds do not depend on how well
the matcher separates those particular fingers. Rates below 1e-3 are an
extrapolation of the fitted tail. On the fitting sample the thresholds give
FMR 1.0 % at 1 %, 0.13 % at 0.1 % and 0.009 % (1 score) at 0.01 %.
Refit when the matcher or the extractor changes.
"""

from __future__ import annotations

import math

import numpy as np

from biometrics.fingerprint.errors import FingerprintError

# Fitted by bench.fingerprint --calibrate (see module docstring).
IMPOSTOR_QUANTILES = ((0.5, 0.01557), (0.25, 0.01716), (0.1, 0.0195), (0.01, 0.02746))  # (FMR, score)
TAIL_BETA = 0.004518


def threshold_for_fmr(fmr: float) -> float:
    """Score threshold (accept when score >= threshold) expected to give false match rate ``fmr``."""
    if not isinstance(fmr, int | float) or not 0.0 < float(fmr) < 1.0 or math.isnan(fmr):
        raise FingerprintError(f"fmr={fmr!r} must be a rate strictly between 0 and 1, e.g. 0.001 for 0.1 %")
    f = float(fmr)
    tail_fmr, tail_score = IMPOSTOR_QUANTILES[-1]
    if f <= tail_fmr:
        return tail_score + TAIL_BETA * math.log(tail_fmr / f)
    rates = np.log([q[0] for q in IMPOSTOR_QUANTILES])[::-1]  # increasing
    values = np.array([q[1] for q in IMPOSTOR_QUANTILES])[::-1]
    if f >= IMPOSTOR_QUANTILES[0][0]:  # below the median: extend the last segment linearly in log FMR
        slope = (values[-1] - values[-2]) / (rates[-1] - rates[-2])
        return float(values[-1] + slope * (math.log(f) - rates[-1]))
    return float(np.interp(math.log(f), rates, values))


def fit_impostor_model(impostor: np.ndarray) -> tuple[tuple[tuple[float, float], ...], float]:
    """Quantiles and tail scale of an impostor score sample (used by the benchmark's --calibrate)."""
    s = np.asarray(impostor, np.float64)
    quantiles = tuple((f, float(np.quantile(s, 1.0 - f))) for f in (0.5, 0.25, 0.1, 0.01))
    tail_start = quantiles[-1][1]
    excess = s[s > tail_start] - tail_start
    beta = float(excess.mean()) if len(excess) else 0.0
    return quantiles, beta
