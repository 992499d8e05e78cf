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


def test_the_capacity_is_the_largest_search_whose_threshold_a_score_can_reach() -> None:
    """Scores are at most 1 (a finger's mcc_match score, a face's cosine): past the capacity the identification
    threshold is above any score, so the capacity is where the real calibrations cross 1."""
    from biometrics.face import threshold_for_fmr as face_threshold
    from biometrics.fingerprint import threshold_for_fmr as finger_threshold
    from verifier.ranking import MAX_SCORE, identification_capacity, identification_threshold

    for modality, threshold_for_fmr in (("face", face_threshold), ("finger", finger_threshold)):
        verify = threshold_for_fmr(1e-4)
        capacity = identification_capacity(modality, threshold_for_fmr, fpir=1e-3, verify_threshold=verify)
        assert identification_threshold(threshold_for_fmr, 1e-3, capacity, verify) <= MAX_SCORE
        beyond = capacity + capacity // 1000 + 1
        assert identification_threshold(threshold_for_fmr, 1e-3, beyond, verify) > MAX_SCORE, modality
    # Faces are the first to run out. The fingerprint figure follows its calibration's far tail: about 4.0
    # billion since the field agreement was read between block centres (biometrics.fingerprint.calibration;
    # 487 million before it, 55 million before the extractor's reliability floor rose).
    face = identification_capacity("face", face_threshold, fpir=1e-3, verify_threshold=0.5)
    finger = identification_capacity("finger", finger_threshold, fpir=1e-3, verify_threshold=0.05)
    assert 300_000 < face < 450_000 and 3_000_000_000 < finger < 5_000_000_000


def test_a_rate_no_search_can_reach_is_a_settings_error_naming_a_rate_that_can() -> None:
    import re

    import pytest

    from biometrics.face import threshold_for_fmr
    from verifier.ranking import identification_capacity
    from verifier.settings import SettingsError

    with pytest.raises(SettingsError) as raised:
        identification_capacity("face", threshold_for_fmr, fpir=1e-10, verify_threshold=0.5)
    assert "identify_fpir = 1e-10" in str(raised.value) and "no face could ever be identified" in str(raised.value)
    found = re.search(r"raise identify_fpir to at least (\S+)", raised.value.fix)
    assert found, raised.value.fix
    assert identification_capacity("face", threshold_for_fmr, fpir=float(found.group(1)), verify_threshold=0.5) >= 1
    with pytest.raises(SettingsError) as raised:  # a 1:1 threshold above 1: nothing, 1:1 or 1:N, can match
        identification_capacity("face", threshold_for_fmr, fpir=1e-3, verify_threshold=threshold_for_fmr(1e-10))
    assert "target_fmr" in str(raised.value) and "raise target_fmr" in raised.value.fix


def test_the_rate_a_settings_error_names_is_reachable_however_it_rounds() -> None:
    """The fix names a rate of two figures: rounded to the nearest it can land just below the lowest reachable
    rate (2.72e-9 shown as 2.7e-9), naming a value the verifier would refuse again. It is rounded up."""
    import math
    import re

    import pytest

    from verifier.ranking import identification_capacity
    from verifier.settings import SettingsError

    for lowest in (2.72e-9, 2.04e-11, 9.96e-8, 1.0e-9):
        def threshold_for_fmr(fmr: float, lowest: float = lowest) -> float:  # reaches 1 exactly at ``lowest``
            return 1.0 + 0.1 * (math.log(lowest) - math.log(fmr))

        with pytest.raises(SettingsError) as raised:
            identification_capacity("face", threshold_for_fmr, fpir=lowest / 10, verify_threshold=0.5)
        named = float(re.search(r"raise identify_fpir to at least (\S+)", raised.value.fix).group(1))
        assert identification_capacity("face", threshold_for_fmr, fpir=named, verify_threshold=0.5) >= 1, named


def test_a_search_past_the_capacity_is_a_422_with_the_registrys_fix_and_no_count_of_the_gallery() -> None:
    """The refusal (not an empty candidate list, which a kiosk says as "nobody recognised"): its fix the one the
    log names; its detail says the search is too large and names only the device's own views. Before, it gave the
    templates the device may search and the comparisons, in prose and as members: the gallery's size, to any
    device that asked for too large a search."""
    import json

    from protocol.problems import REGISTRY
    from verifier.ranking import UNREACHABLE_FIX, unreachable_problem, warn_if_unreachable

    problem = unreachable_problem("face", views=1)
    document = json.loads(problem.body())
    assert problem.status == 422 and document["type"].endswith("/identification-unreachable")
    assert document["fix"] == UNREACHABLE_FIX == REGISTRY["identification-unreachable"].fix
    assert "narrow the device's groups" in document["fix"]
    assert set(document) == {"type", "title", "status", "detail", "fix"}, document
    assert document["detail"].startswith("this face identification (1 view) would search more templates than the "
                                         "verifier's identify_fpir (or face_identify_fpir) allows"), document
    assert "(3 views)" in json.loads(unreachable_problem("finger", views=3).body())["detail"]
    assert not warn_if_unreachable("finger", 1.0, 6, 5) and warn_if_unreachable("finger", 1.0001, 6, 5)


def test_the_reported_threshold_is_the_decades_never_above_the_one_applied() -> None:
    """What the answer says is a function of the views and the decade of the templates searched, never of their
    exact count: whatever views a device sends, 40 and 41 templates (or 10 and 99) read the same, while the
    threshold applied differs; it is never above that one, so every named candidate is at or above it."""
    from biometrics.face import threshold_for_fmr as face_threshold
    from biometrics.fingerprint import threshold_for_fmr as finger_threshold
    from verifier.ranking import identification_threshold, reported_threshold, search_decade

    assert [search_decade(n) for n in (0, 1, 9, 10, 41, 99, 100, 12_345)] == [0, 1, 1, 10, 10, 10, 100, 10_000]
    for threshold_for_fmr in (finger_threshold, face_threshold):
        verify = threshold_for_fmr(1e-4)
        for views in range(1, 11):
            told = {templates: reported_threshold(threshold_for_fmr, 1e-3, views=views, templates=templates,
                                                  verify_threshold=verify)
                    for templates in (0, 1, 7, 10, 40, 41, 99, 100, 999, 1000, 54_321)}
            assert told[40] == told[41] == told[10] == told[99], views
            for templates, reported in told.items():
                applied = identification_threshold(threshold_for_fmr, 1e-3, views * templates, verify)
                assert reported <= applied, (views, templates, reported, applied)
        exact = [round(identification_threshold(threshold_for_fmr, 1e-3, n, verify), 4) for n in (40, 41)]
        assert exact[0] != exact[1], "the exact threshold told them apart"


def test_the_reported_threshold_is_not_rounded_up_past_the_one_applied() -> None:
    """Rounded to nearest, the threshold a search of exactly a decade's templates reported could be above the one
    its candidates were cut at (one view against 1,000 finger templates, at the calibration of the time: 0.0861
    told, 0.08608 applied), though the answer, the README and the protocol say it is at most that one; it is
    rounded down now, still to 4 decimals."""
    from biometrics.fingerprint import threshold_for_fmr
    from verifier.ranking import identification_threshold, reported_threshold, rounded_down

    verify = threshold_for_fmr(1e-4)
    applied = identification_threshold(threshold_for_fmr, 1e-3, 1000, verify)
    told = reported_threshold(threshold_for_fmr, 1e-3, views=1, templates=1000, verify_threshold=verify)
    assert told <= applied and applied - told < 1e-4 and told == round(told, 4), (told, applied)
    assert [rounded_down(x) for x in (0.08608, 0.0861, 0.03749999, 0.5)] == [0.086, 0.0861, 0.0374, 0.5]
