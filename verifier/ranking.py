"""The answer of a 1:N identification, fingers and faces alike: its threshold, and the candidates above it.

One module so that both modalities cut and rank the same way (the same cut, the
same order for equal scores, the same rounding as the answer's ``threshold``).

Why the threshold depends on the search (:func:`identification_threshold`): a
stranger's probe is compared with every enrolled template the device may see, and
each comparison is a chance of a false match. At the 1:1 threshold (a false match
rate of 1e-4), a gallery of 2,000 templates searched with 3 views is 6,000 chances:
about 45 % of strangers would have been named as someone (1 - (1 - 1e-4)^6000).
The identification threshold therefore keeps the false positive identification
rate (FPIR, ISO/IEC 19795-1) at ``identify_fpir`` per identification: the
per-comparison rate is that divided by the comparisons made, and never looser than
the 1:1 threshold (identification never names someone verification would refuse).
The price is paid in false negatives: the larger the search, the stricter the
threshold. A kiosk that must identify among many grants it fewer groups, or
verifies a claimed id instead.
"""

from __future__ import annotations

from collections.abc import Callable

IDENTIFY_TOP_K = 10  # candidates an identification answers at most


def identification_threshold(
    threshold_for_fmr: Callable[[float], float], fpir: float, comparisons: int, verify_threshold: float
) -> float:
    """The score a candidate needs so that an identification of ``comparisons`` comparisons (probe views times
    enrolled templates searched) names a stranger at most ``fpir`` of the time; at least ``verify_threshold``."""
    if comparisons <= 0:
        return verify_threshold
    return max(verify_threshold, threshold_for_fmr(fpir / comparisons))


def ranked(best: dict[str, float], threshold: float, top_k: int = IDENTIFY_TOP_K) -> list[dict[str, object]]:
    """``best`` (each subject's best score) as the answer's candidates: at or above ``threshold``, best first
    (equal scores by subject id, so an answer does not depend on the gallery's order), at most ``top_k``."""
    above = sorted(
        ((score, subject) for subject, score in best.items() if score >= threshold), key=lambda c: (-c[0], c[1])
    )
    return [{"subject": subject, "score": round(score, 4)} for score, subject in above[:top_k]]
