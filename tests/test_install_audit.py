"""Defects of the installer path found by an install audit, each reproduced as an installer meets it.

Real processes throughout: `capture-agent` as a subprocess, the reference verifier
on a free port of 127.0.0.1, real files and real TLS. Where a check depends on
another user (a state directory provisioned as root, read by the agent's user),
the command runs as uid 65534 when the tests run as root, and is skipped otherwise.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent.devstack import device_config, write_config_file
from tests.test_installer_cli import agent_cli


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr


# ---------------------------------------------------------------- a config file that is not UTF-8


def test_a_latin1_config_file_is_an_error_naming_the_encoding_on_every_command(tmp_path: Path) -> None:
    config_file = tmp_path / "agent.toml"
    config_file.write_bytes('# Kiosk at the café\n[agent]\nstate_dir = "/srv/x"\n'.encode("latin-1"))
    for command in ("doctor", "health"):
        done = agent_cli(command, "--config", str(config_file))
        no_traceback(done)
        assert done.returncode == 2, done.stderr
        error, fix = done.stderr.split("fix:", 1)
        assert "is not UTF-8" in error and "line 1" in error and "save it as UTF-8" in fix


# ---------------------------------------------------------------- a password in the verifier URL


def test_a_password_in_the_verifier_url_is_refused_and_never_printed(verifier, tmp_path: Path) -> None:
    secret_url = verifier.url.replace("https://", "https://admin:s3cret@")
    config_file = write_config_file(tmp_path / "agent.toml", device_config(tmp_path / "state", verifier.url))
    in_file = tmp_path / "in-file.toml"
    in_file.write_text(config_file.read_text().replace(verifier.url, secret_url))
    token = verifier.new_token("kiosk-ui")
    args = ("--token", token, "--ca-fingerprint", verifier.ca_fingerprint)
    for done in (
        agent_cli("provision", "--config", str(config_file), "--verifier", secret_url, *args),
        agent_cli("provision", "--config", str(in_file), *args),
        agent_cli("doctor", "--config", str(in_file)),
    ):
        no_traceback(done)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "s3cret" not in done.stdout + done.stderr
        assert "user name or password" in done.stderr and "user:password@" in done.stderr
    assert not (tmp_path / "state").exists(), "nothing was provisioned"
    assert "s3cret" not in verifier.log_path.read_text()


# ---------------------------------------------------------------- a wrong port that answers plain HTTP


def test_provisioning_against_a_plain_http_port_says_to_check_the_port(
    verifier, tmp_path: Path, plain_http_port
) -> None:
    config_file = write_config_file(tmp_path / "agent.toml", device_config(tmp_path / "state", verifier.url))
    done = agent_cli(
        "provision",
        "--config",
        str(config_file),
        "--verifier",
        f"https://127.0.0.1:{plain_http_port}",
        "--token",
        "unused",
        "--ca-fingerprint",
        verifier.ca_fingerprint,
    )
    no_traceback(done)
    assert done.returncode == 2
    error, fix = done.stderr.split("fix:", 1)
    assert "does not speak TLS" in error and "plain HTTP" in error, done.stderr
    assert "check the port" in fix and "TLS 1.2 or 1.3" not in fix
