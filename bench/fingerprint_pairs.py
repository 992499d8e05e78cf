"""``python -m bench.fingerprint ... --hardest K``: the benchmark's weakest genuine and strongest impostor pairs.

For a person tuning the matcher: each pair with every factor of its score
(biometrics.fingerprint.debug.explain_comparison, the first image as the
probe): the LSS-R evidence, the minutiae paired under the alignment and the
common region, the rotation, the orientation-field share and its factor
(``explained_score`` is that direction's score; ``score`` is the benchmark's,
the mean of both directions, which can differ a little: see
biometrics.fingerprint.match). A
failing genuine pair whose field share is low but whose minutiae pair well, or
an impostor that pairs many minutiae on weak evidence, points at the stage to
work on. Only image names and numbers: no image, template or minutia position.
"""

from __future__ import annotations

import numpy as np

from biometrics.fingerprint.debug import ComparisonExplanation, explain_comparison
from biometrics.fingerprint.types import FingerprintTemplate


def factors(e: ComparisonExplanation) -> dict[str, object]:
    """A comparison's factors as JSON-ready numbers (counts and rounded values, no positions)."""
    return {
        "explained_score": round(e.score, 5),
        "lss_excess": round(e.lss_excess, 6),
        "paired_fraction": round(e.paired_fraction, 4),
        "paired": len(e.paired),
        "overlap": list(e.overlap),
        "minutiae": list(e.minutiae),
        "rotation_degrees": None if e.rotation_degrees is None else round(e.rotation_degrees, 1),
        "field_share": None if e.field_share is None else round(e.field_share, 4),
        "field_factor": round(e.field_factor, 4),
        "field_measured": e.field_measured,
        "second_pass": round(e.second_pass, 5),
    }


def _entry(templates: list[FingerprintTemplate], names: list[str], i: int, j: int, score: float) -> dict[str, object]:
    return {
        "a": names[i],
        "b": names[j],
        "score": round(score, 5),
        **factors(explain_comparison(templates[i], templates[j])),
    }


def hardest_pairs(
    templates: list[FingerprintTemplate], names: list[str], scores: np.ndarray, same: np.ndarray, count: int
) -> dict[str, list[dict[str, object]]]:
    """The ``count`` lowest-scoring genuine and highest-scoring impostor pairs, hardest first, explained.

    ``scores`` and ``same`` are bench.fingerprint.all_pairs' (unordered pairs in
    ``np.triu_indices`` order).
    """
    iu, ju = np.triu_indices(len(templates), k=1)
    genuine = np.flatnonzero(same)
    impostor = np.flatnonzero(~same)
    weakest = genuine[np.argsort(scores[genuine], kind="stable")[:count]]
    strongest = impostor[np.argsort(-scores[impostor], kind="stable")[:count]]
    return {
        "genuine": [_entry(templates, names, iu[k], ju[k], float(scores[k])) for k in weakest],
        "impostor": [_entry(templates, names, iu[k], ju[k], float(scores[k])) for k in strongest],
    }
