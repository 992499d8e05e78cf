"""The answer of a 1:N identification, fingers and faces alike: the candidates above the threshold, best first.

One function so that both modalities rank the same way (the same cut, the same
order for equal scores, the same rounding as the answer's ``threshold``).
"""

from __future__ import annotations

IDENTIFY_TOP_K = 10  # candidates an identification answers at most


def ranked(best: dict[str, float], threshold: float, top_k: int = IDENTIFY_TOP_K) -> list[dict[str, object]]:
    """``best`` (each subject's best score) as the answer's candidates: at or above ``threshold``, best first
    (equal scores by subject id, so an answer does not depend on the gallery's order), at most ``top_k``."""
    above = sorted(
        ((score, subject) for subject, score in best.items() if score >= threshold), key=lambda c: (-c[0], c[1])
    )
    return [{"subject": subject, "score": round(score, 4)} for score, subject in above[:top_k]]
