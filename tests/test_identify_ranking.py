"""One ranking of identification candidates for fingers and faces (verifier.ranking)."""

from __future__ import annotations

from verifier.ranking import IDENTIFY_TOP_K, ranked


def test_candidates_above_the_threshold_best_first_ties_by_id_at_most_top_k() -> None:
    best = {"zoe": 0.5, "amy": 0.5, "bob": 0.9, "low": 0.29999, "edge": 0.3}
    assert ranked(best, 0.3) == [
        {"subject": "bob", "score": 0.9},
        {"subject": "amy", "score": 0.5},
        {"subject": "zoe", "score": 0.5},
        {"subject": "edge", "score": 0.3},  # at the threshold is a match, as in a verification
    ]
    many = {f"s{n:02d}": 0.5 + n / 100 for n in range(IDENTIFY_TOP_K + 5)}
    top = ranked(many, 0.0)
    assert len(top) == IDENTIFY_TOP_K and top[0]["subject"] == f"s{IDENTIFY_TOP_K + 4:02d}"
    assert ranked({}, 0.3) == [] and ranked({"a": 0.1}, 0.3) == []


def test_the_identification_threshold_keeps_the_fpir_and_never_goes_below_the_verify_threshold() -> None:
    from verifier.ranking import identification_threshold

    def threshold_for_fmr(fmr: float) -> float:  # any falling map from rate to score
        return -fmr

    assert identification_threshold(threshold_for_fmr, 1e-3, 1000, -1.0) == -1e-6  # 1e-3 spread over 1,000
    assert identification_threshold(threshold_for_fmr, 1e-3, 2, -1e-4) == -1e-4  # looser than 1:1: 1:1's
    assert identification_threshold(threshold_for_fmr, 1e-3, 0, -1e-4) == -1e-4  # nothing searched
