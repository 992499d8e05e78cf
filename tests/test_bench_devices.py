"""bench.devices prints its JSON figures (a smoke run: one serial capture at 115200, real line speed)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_devices_prints_figures_per_kind() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.devices", "--rounds", "1", "--quick"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    figures = json.loads(out)
    (zfm,) = figures["zfm"]
    assert zfm["baud"] == 115200 and zfm["finger_to_image_ms"]["p50"] >= zfm["transfer_ms"]["p50"] > 0
    assert figures["fprint"]["finger_to_image_ms"]["n"] == 30
    assert figures["camera"]["frame_latency_ms"]["n"] > 100 and figures["camera"]["face_to_frame_ms"]["p99"] > 0
