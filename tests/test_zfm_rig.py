"""The test-rig commands: a simulator process, and discovery finding it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from drivers.zfm.driver import ZfmModule


def test_simulator_process_prints_its_port_and_devices_finds_the_module(tmp_path) -> None:
    link = tmp_path / "ttyRIG"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "zfm", "--model", "as608", "--link", str(link), "--finger", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = json.loads(proc.stdout.readline())
        assert line == {"event": "listening", "port": str(link), "model": "as608"}
        with ZfmModule(line["port"]) as module:
            assert module.profile.name == "as608"
            assert module.capture(), "the finger left on the sensor by --finger"
        listing = subprocess.run(
            [sys.executable, "-m", "agent.cli", "devices", "--port", str(link), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        found = {f["path"]: f for f in json.loads(listing.stdout)}
        assert "as608" in found[str(link)]["description"]
        assert found[str(link)]["details"]["capacity"] == 300
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        proc.stdout.close()
    assert not link.exists(), "the simulator removes its port link when it stops"
