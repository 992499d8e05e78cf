"""From a target false match rate to a cosine threshold for SFace embeddings.

Impostor model, as for fingerprints: above its 99th percentile the impostor
score distribution is modelled by an exponential tail (a generalised Pareto tail
with shape 0),

    FMR(t) = 0.01 * exp(-(t - t99) / beta)   for t >= t99,

beta being the maximum-likelihood estimate (the mean excess over t99). Above 1 %
the model interpolates the impostor quantiles on a log-FMR scale. The constants
come from ``python -m bench.face --calibrate DIR`` on impostor pairs only, so no
genuine score enters them. Fitted on ORL (att_faces, 40 people x 10 images,
78,000 impostor pairs); rates below 1e-4 are an extrapolation of the tail.
ORL's subjects are few and alike in age and capture: fitted on 20 of its 40
people, this model's 0.1 % threshold gave 0.46 % FMR on the other 20 (the
benchmark's ``held_out_fmr``). Refit on a larger set, closer to the
deployment's population, before trusting rates below 1 %. Refit when the
detector, the alignment or the embedding model changes.
"""

from __future__ import annotations

import math

import numpy as np

from biometrics.face.errors import FaceError

# Fitted by bench.face --calibrate (see module docstring).
IMPOSTOR_QUANTILES = ((0.5, 0.09781), (0.25, 0.16392), (0.1, 0.22278), (0.01, 0.31844))  # (FMR, score)
TAIL_BETA = 0.030416


def threshold_for_fmr(
    fmr: float,
    quantiles: tuple[tuple[float, float], ...] = IMPOSTOR_QUANTILES,
    beta: float = TAIL_BETA,
) -> float:
    """Cosine threshold (accept when score >= threshold) expected to give false match rate ``fmr``.

    ``quantiles`` and ``beta`` default to the fitted model; the benchmark passes
    a model fitted on part of a data set to test it on the rest.
    """
    if not isinstance(fmr, int | float) or isinstance(fmr, bool) or math.isnan(fmr) or not 0.0 < float(fmr) < 1.0:
        raise FaceError(f"fmr={fmr!r} must be a rate strictly between 0 and 1, e.g. 0.001 for 0.1 %")
    f = float(fmr)
    tail_fmr, tail_score = quantiles[-1]
    if f <= tail_fmr:
        return tail_score + beta * math.log(tail_fmr / f)
    rates = np.log([q[0] for q in quantiles])[::-1]  # increasing
    values = np.array([q[1] for q in quantiles])[::-1]
    if f >= quantiles[0][0]:  # below the median: extend the last segment linearly in log FMR
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
