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


@pytest.mark.parametrize("unit", ["capture-agent.service", "capture-verifier.service"])
def test_no_core_file_is_ever_written(unit: str) -> None:
    """Audit 16 F5: a crash under systemd-coredump would store frames, templates and decrypted keys on disk."""
    service = (UNITS / unit).read_text().split("[Service]", 1)[1].split("\n[", 1)[0]
    assert "LimitCORE=0" in service.splitlines()


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


def _commands(block: str) -> list[str]:
    """The shell commands of a README block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", "", block)
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_install_uses_a_venv_linked_where_the_unit_runs_it() -> None:
    """`pip install .` into Debian 12's Python is refused (PEP 668): a venv, and ExecStart= finds it."""
    from tests.test_installer_cli import readme_block

    commands = _commands(readme_block("## Installing on a device (systemd)"))
    assert not any(c.startswith(("pip install", "pip3 install")) for c in commands), commands
    venv = next(c for c in commands if c.startswith("python3 -m venv "))
    prefix = venv.split()[-1]
    assert f"{prefix}/bin/pip install ." in commands
    exec_start = re.search(r"^ExecStart=(\S+)", (UNITS / "capture-agent.service").read_text(), re.MULTILINE)
    assert exec_start is not None
    assert f"ln -sf {prefix}/bin/capture-agent {exec_start.group(1)}" in commands


@pytest.mark.parametrize("section", ["## Installing on a device (systemd)", "**On a device (systemd credentials"])
def test_the_readme_runs_doctor_as_the_unit_runs_the_agent(section: str) -> None:
    """A plain `capture-agent doctor` has no credential outside systemd: the README runs the line doctor prints."""
    from agent.config import AgentConfig
    from agent.doctor import doctor_under_systemd
    from tests.test_installer_cli import readme_block

    commands = _commands(readme_block(section))
    assert "capture-agent doctor" not in commands
    assert commands[-1] == doctor_under_systemd(AgentConfig()), commands[-1]


def _unit_setting(name: str) -> str:
    found = re.search(rf"^{name}=(\S+)", (UNITS / "capture-agent.service").read_text(), re.MULTILINE)
    assert found, f"{name}= missing from capture-agent.service"
    return found.group(1)


def test_the_kiosk_group_can_reach_the_api_socket_and_the_agent_can_give_it_to_them() -> None:
    """The runtime folder lets others through (not list it); the agent is in the kiosk apps' group, which
    sysusers creates, so that it may give the socket to that group without CAP_CHOWN."""
    mode = int(_unit_setting("RuntimeDirectoryMode"), 8)
    assert mode & 0o001 and not mode & 0o006, oct(mode)
    group = _unit_setting("SupplementaryGroups")
    sysusers = (UNITS / "capture-agent.sysusers.conf").read_text().splitlines()
    assert any(line.split()[:2] == ["g", group] for line in sysusers if line.strip()), group


def test_a_kiosk_app_in_the_api_group_reaches_the_socket_in_a_runtime_folder_made_as_the_unit_makes_it() -> None:
    """The folder has the unit's mode and is owned by another user and group (the agent's); the kiosk app runs
    as a user whose only group is [api] group, and asks /health over the socket."""
    import asyncio
    import os
    import tempfile

    from agent.localapi import LocalAPI

    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to act as the agent's user and as the kiosk app's")
    top = Path(tempfile.mkdtemp(prefix="rundir-"))
    try:
        os.chmod(top, 0o711)  # noqa: S103 (as /run: anyone may pass through, which is what is tested)
        runtime = top / "capture-agent"
        runtime.mkdir()
        os.chmod(runtime, int(_unit_setting("RuntimeDirectoryMode"), 8))  # root:root, as capture-agent's would be
        socket_path = runtime / "api.sock"
        client = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"s.connect({str(socket_path)!r})\n"
            "s.sendall(b'GET /health HTTP/1.1\\r\\nhost: agent\\r\\n\\r\\n')\n"
            "print(s.recv(65536).split(b' ')[1].decode())\n"
        )

        async def go() -> subprocess.CompletedProcess[str]:
            api = LocalAPI(socket_path, lambda emit: None, group="nogroup")
            await api.start()
            try:
                return await asyncio.to_thread(
                    subprocess.run,
                    [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-I", "-c", client],
                    capture_output=True, text=True, timeout=60,
                )
            finally:
                await api.stop()

        ran = asyncio.run(go())
        assert ran.stdout.strip() == "200", ran.stdout + ran.stderr
    finally:
        shutil.rmtree(top, ignore_errors=True)
