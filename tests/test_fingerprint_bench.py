"""The benchmark's error-rate arithmetic and its image naming."""

from __future__ import annotations

import numpy as np
import pytest

from bench.cli import BenchError
from bench.fingerprint import error_rates, list_images, pad_to
from bench.machine import vector_units, vector_units_here


def test_separated_scores_have_no_errors():
    r = error_rates(np.array([0.8, 0.9, 1.0]), np.array([0.1, 0.2, 0.3]))
    assert r == {"eer": 0.0, "fmr100": 0.0, "fmr1000": 0.0}


def test_overlapping_scores_give_the_crossing_rate():
    genuine = np.arange(50, 150) / 100.0  # 0.50 .. 1.49
    impostor = np.arange(0, 100) / 100.0  # 0.00 .. 0.99
    r = error_rates(genuine, impostor)
    # At threshold 0.75: 25 % of genuine below, 25 % of impostors at or above.
    assert r["eer"] == pytest.approx(0.25, abs=0.01)
    assert r["fmr100"] == pytest.approx(0.49, abs=0.01)


def test_list_images_reads_finger_and_impression(tmp_path):
    for name in ("101_1.tif", "101_2.tif", "7_3.png", "notes.txt", "a_1.tif"):
        (tmp_path / name).write_bytes(b"")
    found = [(f, i) for f, i, _ in list_images(tmp_path)]
    assert found == [("101", 1), ("101", 2), ("7", 3)]


def test_synthetic_population_benchmark_reports_the_calibrated_rates(capsys):
    import json

    from bench.fingerprint import main
    from biometrics.fingerprint import threshold_for_fmr

    assert main(["--synthetic", "3", "--impressions", "2", "--seed", "1", "--gallery", "12", "--hardest", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["genuine"], out["impostor"], out["images"]) == (3, 12, 6)
    assert out["thresholds"]["1e-04"] == pytest.approx(threshold_for_fmr(1e-4), abs=1e-5)
    assert out["false_match_limit_95"] == {"1e-03": 0, "1e-04": 0}  # 12 pairs: not even one expected
    assert set(out["fmr_at_threshold"]) == set(out["fnmr_at_threshold"]) == {"1e-03", "1e-04"}
    assert out["false_matches"]["1e-04"] == 0  # three distinct synthetic fingers
    assert out["comparisons_per_s_per_core"] > 0 and out["comparisons_per_cpu_s_per_core"] > 0
    assert out["cpu_vector_units"] == vector_units_here()  # what the throughput was measured with
    assert 0.0 <= out["prefilter_recall"] <= 100.0
    assert 0.0 < out["add_search_ms_best"] <= out["add_search_ms"]
    assert out["profile"] == "realistic"  # FVC-like impressions unless --profile says otherwise
    # open-set identification: each of the 6 images searched once as a stranger, each second impression as a mate
    assert (out["identification"]["non_mated_searches"], out["identification"]["mated_searches"]) == (6, 3)
    assert 0.0 <= out["impostor_median"] <= out["impostor_p99"] <= out["impostor_max"] < out["genuine_median"]
    # --hardest 2: the weakest genuine pairs (same finger, lowest first) and the strongest impostors, explained.
    genuine, impostor = out["hardest"]["genuine"], out["hardest"]["impostor"]
    assert len(genuine) == len(impostor) == 2
    assert [g["score"] for g in genuine] == sorted(g["score"] for g in genuine)
    assert [i["score"] for i in impostor] == sorted((i["score"] for i in impostor), reverse=True)
    assert all(g["a"].split("_")[0] == g["b"].split("_")[0] for g in genuine)
    assert all(i["a"].split("_")[0] != i["b"].split("_")[0] for i in impostor)
    assert impostor[0]["score"] == pytest.approx(out["impostor_max"], abs=1e-5)
    for pair in genuine + impostor:
        assert 0 <= pair["paired"] <= min(pair["minutiae"]) and 0.0 <= pair["paired_fraction"] <= 1.0
        # the factors explain the first image against the second: they rebuild that direction's score
        rebuilt = (pair["lss_excess"] * pair["paired_fraction"]) ** 0.5 * pair["field_factor"]
        assert rebuilt == pytest.approx(pair["explained_score"], rel=1e-3, abs=1e-5)


def test_pad_to_centres_the_print_on_its_own_background():
    img = np.full((4, 6), 200, np.uint8)
    img[1:3, 2:4] = 10
    out = pad_to(img, (10, 8))
    assert out.shape == (8, 10)
    np.testing.assert_array_equal(out[2:6, 2:8], img)
    assert (out[0] == 200).all() and (out[:, 0] == 200).all()
    with pytest.raises(BenchError, match="smaller"):
        pad_to(img, (5, 8))


def test_hardest_takes_a_count_of_a_benchmarks_pairs(capsys):
    from bench.fingerprint import main

    assert main(["--synthetic", "3", "--hardest", "-1"]) == 2  # a usage error: one line (bench.cli.BenchParser)
    assert "--hardest takes a count" in capsys.readouterr().err
    assert main(["--explain", "print.png", "--out", "stages", "--hardest", "2"]) == 2
    assert "--hardest explains a benchmark's pairs" in capsys.readouterr().err


def test_leave_one_out_needs_a_calibration(capsys):
    from bench.fingerprint import main

    assert main(["--synthetic", "3", "--leave-one-out"]) == 2
    assert "--calibrate" in capsys.readouterr().err
    # refused before any extraction: nothing would be left to fit on
    assert main(["--calibrate", "no-such-folder", "--leave-one-out"]) == 2
    assert "second folder or --synthetic" in capsys.readouterr().err


def test_the_machine_is_described_by_its_vector_units(tmp_path):
    """x86 flags and Arm features are read, widest first; a machine without /proc/cpuinfo reports none."""
    no_avx2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c\n"
    assert vector_units(no_avx2) == ["fma", "avx", "sse4_2"]
    wide = "flags\t: sse4_2 avx avx2 fma avx512f avx512bw\nflags\t: sse2\n"  # the first CPU's line
    assert vector_units(wide) == ["avx512f", "avx2", "fma", "avx", "sse4_2"]
    assert vector_units("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n") == ["asimd"]
    assert vector_units("processor\t: 0\n") == []
    assert vector_units_here(tmp_path / "no-cpuinfo") == []


def test_identification_folds_make_every_finger_a_stranger_once_and_search_each_probe_once():
    from bench.fingerprint_identification import enrolled_impressions, folds, impression_rank

    fingers = np.array(["b", "a", "b", "c", "a", "b", "d", "c", "a", "d", "e", "e", "e"])
    np.testing.assert_array_equal(impression_rank(fingers), [0, 0, 1, 0, 1, 2, 0, 1, 2, 1, 0, 1, 2])
    assert enrolled_impressions(fingers) == 2 and enrolled_impressions(np.array(["a", "a", "b", "b"])) == 1
    split = folds(fingers, count=5, enrolled=2)
    assert len(split) == 5
    for fold in split:
        enrolled, strangers = set(fingers[fold.gallery]), set(fingers[fold.strangers])
        assert not enrolled & strangers and set(fingers[fold.mated]) <= enrolled
        assert (impression_rank(fingers)[fold.gallery] < 2).all() and not set(fold.mated) & set(fold.gallery)
    strangers = np.concatenate([f.strangers for f in split])
    mated = np.concatenate([f.mated for f in split])
    np.testing.assert_array_equal(np.sort(strangers), np.arange(len(fingers)))  # every image, once
    np.testing.assert_array_equal(np.sort(mated), np.flatnonzero(impression_rank(fingers) >= 2))
    assert len(folds(fingers[:5], count=5, enrolled=2)) == 3  # three fingers: three folds


def test_identification_reports_the_verifiers_threshold_and_what_it_costs(synthetic_population):
    from bench.fingerprint_identification import identification
    from biometrics.fingerprint import threshold_for_fmr
    from verifier.ranking import IDENTIFY_TOP_K, identification_threshold

    templates, fingers = synthetic_population
    out = identification(templates, fingers, workers=1)
    assert (out["folds"], out["enrolled_impressions"], out["views"], out["top_k"]) == (5, 2, 1, IDENTIFY_TOP_K)
    assert out["gallery_size"] == [12, 12, 12, 14, 14]  # 8 fingers in rotation: 2, 2, 2, 1, 1 strangers
    assert (out["mated_searches"], out["non_mated_searches"]) == (8, 24)  # each third impression; every image
    verify = threshold_for_fmr(1e-4)
    assert out["verify_threshold"] == pytest.approx(verify, abs=1e-5)
    for size, threshold in zip(out["gallery_size"], out["threshold"], strict=True):
        assert threshold == pytest.approx(identification_threshold(threshold_for_fmr, 1e-3, size, verify), abs=1e-5)
        assert threshold > out["verify_threshold"]  # 12 templates or more: stricter than 1:1
    for key in ("fnir_at_fpir_1e-3", "fpir_measured", "fnir_at_verify_threshold", "fpir_at_verify_threshold"):
        assert 0.0 <= out[key] <= 100.0
    assert out["fnir_at_fpir_1e-3"] >= out["fnir_at_verify_threshold"]
    assert out["fpir_measured"] <= out["fpir_at_verify_threshold"]
    assert out["fpir_measured"] == pytest.approx(100.0 * out["false_positives"] / 24, abs=1e-3)
    assert out["fnir_at_verify_threshold"] >= 100.0 * out["mates_not_returned"] / 8 - 1e-3  # unreturned are missed
    assert out["fnir_at_fpir_1e-3"] < 100.0  # the mates of distinct synthetic fingers are found
