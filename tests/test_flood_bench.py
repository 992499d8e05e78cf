"""`python -m bench.flood` runs end to end, bounded, and reports what the kiosk saw."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.alone  # the kiosk must see no error under attack, with the machine to the attack alone
def test_bench_flood_prints_the_kiosks_figures_beside_the_attack() -> None:
    attacks = ["--attack", "slow_handshakes", "--attack", "header_blocks"]
    command = [sys.executable, "-m", "bench.flood", "--seconds", "1", *attacks]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(done.stdout)
    phases = report["phases"]
    assert set(phases) == {"no_attack", "slow_handshakes", "header_blocks"}
    for phase in phases.values():
        assert phase["health_ms"]["n"] > 0 and phase["verify_ms"]["n"] > 0
        assert phase["health_ms"]["p50"] is not None and phase["verify_ms"]["p99"] is not None
        assert phase["errors"] == {}
    assert phases["slow_handshakes"]["attack"].get("opened", 0) > 0
    streams = phases["header_blocks"]["attack"]
    assert streams.get("closed_by_verifier", 0) > 0
    # cut after about 4 frames (64 KiB without a certificate; 7 to 14 sent per close here, those in flight
    # included), not after h2's own 64 (82 to 110 per close measured before the byte budget)
    assert streams.get("continuations_sent", 0) / streams["closed_by_verifier"] < 32, streams
