"""Issue 11: every documented command works as an installer types it, and failures name their cause.

Real processes throughout: `capture-agent` and `capture-verifier` as subprocesses,
a verifier on a free port of 127.0.0.1, the daemon as its own process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.config import parse_config
from agent.devstack import device_config, write_config_file


def agent_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        input=stdin,
    )


def provisioned_config_file(verifier, tmp_path: Path, device_id: str = "kiosk-cli", extra: str = "") -> Path:
    """A config file and a device provisioned through the CLI, the options after the subcommand."""
    config_file = write_config_file(
        tmp_path / "agent.toml",
        device_config(tmp_path / "state", verifier.url),
        '[logging]\nlevel = "error"\n' + extra,
    )
    token = verifier.new_token(device_id)
    done = agent_cli(
        "provision", "--config", str(config_file), "--token", token, "--ca-fingerprint", verifier.ca_fingerprint
    )
    assert done.returncode == 0, done.stderr
    return config_file


# ---------------------------------------------------------------- item 3: options after the subcommand


def test_config_and_overrides_work_after_the_subcommand(verifier, tmp_path) -> None:
    config_file = provisioned_config_file(verifier, tmp_path)
    doctor = agent_cli("doctor", "--config", str(config_file))
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert f"loaded from {config_file}" in doctor.stdout
    # Before the subcommand still works, and an override typed after it wins over the file.
    other = tmp_path / "elsewhere"
    before = agent_cli("--config", str(config_file), "doctor", "--state-dir", str(other))
    assert before.returncode == 1 and f"{other} does not exist" in before.stdout
    health = agent_cli("health", "-c", str(config_file))
    assert health.returncode == 0 and '"status"' in health.stdout, health.stderr


# ---------------------------------------------------------------- item 4: a URL without a port


def test_a_verifier_url_without_a_port_means_8443(tmp_path) -> None:
    assert (
        parse_config({"verifier": {"url": "https://verifier.example"}}).verifier.url == "https://verifier.example:8443"
    )
    assert parse_config({"verifier": {"url": "https://[::1]/"}}).verifier.port == 8443
    assert parse_config({"verifier": {"url": "https://h:443"}}).verifier.port == 443, "a port typed is kept"
    config_file = write_config_file(tmp_path / "agent.toml", device_config(tmp_path / "none", "https://127.0.0.1:9"))
    doctor = agent_cli("doctor", "--config", str(config_file), "--verifier", "https://127.0.0.1")
    assert "verifier https://127.0.0.1:8443" in doctor.stdout, doctor.stdout


# ---------------------------------------------------------------- item 15: the SPKI pin


def test_doctor_prints_the_pin_and_a_pin_without_padding_is_the_same_pin(verifier, tmp_path) -> None:
    config_file = provisioned_config_file(verifier, tmp_path)
    doctor = agent_cli("doctor", "--config", str(config_file))
    assert doctor.returncode == 0, doctor.stdout
    pin = doctor.stdout.split("server SPKI pin ", 1)[1].split()[0]
    assert len(pin) == 44 and pin.endswith("="), doctor.stdout
    # The installer copies it without its padding: accepted at config time, and the right server is accepted.
    url_line = f'url = "{verifier.url}"\n'
    config_file.write_text(config_file.read_text().replace(url_line, f'{url_line}spki_pin = "{pin.rstrip("=")}"\n'))
    pinned = agent_cli("health", "--config", str(config_file))
    assert pinned.returncode == 0, pinned.stderr
    # A pin that is no SHA-256 at all stops at config time, with the fix.
    config_file.write_text(config_file.read_text().replace(pin.rstrip("="), "not-a-pin"))
    bad = agent_cli("health", "--config", str(config_file))
    assert bad.returncode == 2 and "spki_pin" in bad.stderr and "doctor" in bad.stderr.split("fix:", 1)[1]
