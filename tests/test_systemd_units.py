"""The units pass systemd's own checks: hardening exposure and verification."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
MAX_EXPOSURE = 1.5


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze is missing: `make test` installs it (Debian package systemd)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("unit", ["capture-agent.service", "capture-verifier.service"])
def test_exposure_is_at_most_1_5(unit: str) -> None:
    result = analyze("security", "--offline=true", "--no-pager", str(UNITS / unit))
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("unit", ["capture-agent.service", "capture-verifier.service"])
def test_units_verify_clean(unit: str, tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this environment's script.
    text = (UNITS / unit).read_text()
    name = unit.removesuffix(".service")
    local = Path(sys.executable).with_name(name)
    assert local.exists(), f"{local} missing: install the project (make test does)"
    (tmp_path / unit).write_text(text.replace(f"/usr/bin/{name}", str(local)))
    result = analyze("verify", "--man=no", str(tmp_path / unit))
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_agent_unit_contract() -> None:
    """What the daemon relies on, so that editing the unit cannot drop it silently."""
    text = (UNITS / "capture-agent.service").read_text()
    for line in (
        "Type=notify",
        "DevicePolicy=closed",
        "LoadCredentialEncrypted=capture-agent-kek",
        "User=capture-agent",
        "StateDirectory=capture-agent",
        "Restart=on-failure",
    ):
        assert line in text.splitlines(), line
    assert re.search(r"^WatchdogSec=\d+", text, re.MULTILINE)


def test_udev_rules_use_a_group_not_uaccess() -> None:
    rules = [
        line
        for line in (UNITS / "60-capture-agent.rules").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules
    for line in rules:
        assert 'GROUP="capture-readers"' in line and 'MODE="0660"' in line, line
        assert "uaccess" not in line
