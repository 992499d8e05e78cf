"""bench.face: the JSON it prints on a small folder of real faces, and its error-rate arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.face import error_rates, list_images, pair_mask
from biometrics.tail import pair_units

KEYS = {"eer", "tar_at_far1", "tar_at_far01", "fta", "detect_ms_median", "embed_ms_median", "frame_size",
        "detect_640x480_ms_median", "threshold", "fmr_at_threshold", "fnmr_at_threshold", "held_out_fmr"}


def test_error_rates_of_known_scores() -> None:
    genuine = np.array([0.9, 0.8, 0.7, 0.2])
    impostor = np.linspace(0.0, 0.5, 1000)
    r = error_rates(genuine, impostor)
    assert r["tar_at_far01"] == pytest.approx(0.75)  # 0.2 is below every threshold with FAR <= 0.1 %
    assert r["eer"] == pytest.approx(0.25, abs=2e-3)  # FNMR 1/4 from 0.2 up; FMR crosses 1/4 at 0.375
    perfect = error_rates(np.array([0.9, 0.95]), np.array([0.1, 0.2]))
    assert perfect == {"eer": 0.0, "tar_at_far1": 1.0, "tar_at_far01": 1.0}


def test_pair_mask_keeps_pairs_of_two_flagged_images() -> None:
    assert pair_mask(np.array([True, False, True])).tolist() == [False, True, False]  # (0,1) (0,2) (1,2)


def test_pair_units_name_the_pair_of_people_whatever_the_order() -> None:
    units = pair_units(np.array(["s1", "s2", "s1", "s3"]))  # pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    assert units[0] == units[3]  # s1-s2 and s2-s1: one pair of people
    assert units[2] == units[5] and units[2] != units[0] != units[4]
    assert len(set(units.tolist())) == 4  # s1-s2, s1-s1, s1-s3, s2-s3


def test_the_benchmark_prints_its_figures_on_a_folder_of_faces(att_faces: Path, tmp_path: Path) -> None:
    data = tmp_path / "faces"
    for person in ("s4", "s12", "s27"):
        (data / person).mkdir(parents=True)
        for n in (1, 5, 8):
            (data / person / f"{n}.pgm").symlink_to(att_faces / person / f"{n}.pgm")
    (data / "s4" / "notes.txt").write_text("not an image")
    assert len(list_images(data)) == 9
    out = subprocess.run([sys.executable, "-m", "bench.face", "--data", str(data)], capture_output=True, text=True,
                         check=True, timeout=120)
    figures = json.loads(out.stdout)
    assert figures.keys() >= KEYS
    assert figures["images"] == 9 and figures["genuine"] == 9 and figures["impostor"] == 27
    assert figures["fta"] == 0.0 and figures["eer"] == 0.0 and figures["tar_at_far01"] == 1.0
    assert figures["frame_size"] == "92x112" and figures["detector_input"] == "276x336"
    assert figures["detect_ms_median"] > 0 and figures["embed_ms_median"] > 0


def test_the_benchmark_says_what_it_needs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.face", "--data", str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "two people" in out.stderr
