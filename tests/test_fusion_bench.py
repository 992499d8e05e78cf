"""bench.fusion: the calibration maps, the fused threshold's arithmetic, and the JSON on a few chimeric people."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.fusion import fused_threshold, log_fmr
from biometrics.face import threshold_for_fmr as face_threshold
from biometrics.fingerprint import threshold_for_fmr as finger_threshold


@pytest.mark.parametrize("threshold_for_fmr", [finger_threshold, face_threshold])
def test_log_fmr_inverts_each_modalitys_calibration(threshold_for_fmr) -> None:
    targets = np.array([1e-2, 1e-3, 1e-4, 1e-6])
    scores = np.array([threshold_for_fmr(float(f)) for f in targets])
    assert log_fmr(scores, threshold_for_fmr) == pytest.approx(-np.log10(targets), abs=0.02)
    low, high = log_fmr(np.array([-1.0, 10.0]), threshold_for_fmr)
    assert low == 0.0 and high == 12.0


def test_the_fused_threshold_gives_its_fmr_on_independent_p_values() -> None:
    """Fisher's method for two p-values: what the sum of two -log10 FMRs does when both are calibrated."""
    rng = np.random.default_rng(7)
    p = rng.uniform(size=(2, 2_000_000))
    summed = -np.log10(p).sum(axis=0)
    for fmr in (1e-2, 1e-3):
        threshold = fused_threshold(fmr)
        assert threshold > -np.log10(fmr)  # the naive sum threshold would let through several times fmr
        assert (summed >= threshold).mean() == pytest.approx(fmr, rel=0.1)
    with pytest.raises(ValueError):
        fused_threshold(1.5)


def test_the_benchmark_prints_each_modality_and_the_fusion(shared_data_dir: Path, att_faces: Path) -> None:
    fingers = shared_data_dir / "fvc2002"
    if not (fingers / "DB1_B").is_dir():
        pytest.skip(f"FVC2002 not found at {fingers}")
    out = subprocess.run([sys.executable, "-m", "bench.fusion", "--fingers", str(fingers), "--faces", str(att_faces),
                          "--per-db", "2", "--impressions", "3"], capture_output=True, text=True, check=True,
                         timeout=180)
    figures = json.loads(out.stdout)
    assert figures["people"] == 8 and figures["genuine"] == 4 * 2 * 3 and figures["impostor"] == 4 * 15 - 24
    assert "independent" in figures["assumption"]
    for name in ("finger", "face", "fused"):
        assert figures[name].keys() >= {"eer", "tar_at_far01", "threshold", "fmr_at_threshold", "tar_at_threshold"}
    assert figures["fused"]["threshold"] == pytest.approx(fused_threshold(0.001), abs=1e-3)
