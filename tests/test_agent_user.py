"""The agent's commands as its own unprivileged user, meeting files and folders it may not use.

Run as root (this sandbox, many CI images), chmod never denies, so each command runs
as uid 65534 (`setpriv`) against what root made; run as another user, each command is
that user's own process and the modes shut the files to it (0o000 denies the owner too).
Every refusal must be the CLI's ``error:`` and ``fix:`` lines naming what to change,
never a traceback. Where uid 65534 cannot read this checkout (a private home folder),
these tests are skipped and say so (``make test`` lists skips with their reasons).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from agent.devstack import device_config, provision_device, write_config_file
from tests.conftest import give_to_agent_user

FINGERPRINT = "ab" * 32


def refused(done: subprocess.CompletedProcess[str], code: int = 2) -> tuple[str, str]:
    """The ``error:`` and ``fix:`` text of a command that must fail with a typed error (exit ``code``)."""
    said = done.stdout + done.stderr
    assert "Traceback" not in said, said
    assert done.returncode == code, said
    error, _, fix = done.stderr.partition("\nfix: ")
    assert "error: " in error and fix, said
    return error.split("error: ", 1)[1], fix.strip()


def line_of(doctor: subprocess.CompletedProcess[str], check: str) -> str:
    """Doctor's line for ``check``, with its fix line."""
    assert "Traceback" not in doctor.stdout + doctor.stderr, doctor.stdout + doctor.stderr
    lines = doctor.stdout.splitlines()
    index = next((i for i, line in enumerate(lines) if f"] {check}:" in line), None)
    assert index is not None, doctor.stdout
    return "\n".join(lines[index : index + 2])


def config_text(state: Path, extra: str = "") -> str:
    return (
        f'[agent]\nstate_dir = "{state}"\n[verifier]\nurl = "https://127.0.0.1:9"\n'
        f'[keyring]\nbackend = "file-insecure-dev"\n[logging]\nlevel = "error"\n{extra}'
    )


# ---------------------------------------------------------------- the config file


def test_a_config_file_the_agent_user_may_not_read_names_chmod(agent_user_cli, open_tmp, shut) -> None:
    config = open_tmp / "agent.toml"
    config.write_text(config_text(open_tmp / "state"))
    shut(config, 0o000)
    for command in (("doctor",), ("health",), ("run",), ("renew",), ("provision", "--token", "-",
                                                                     "--ca-fingerprint", FINGERPRINT)):
        error, fix = refused(agent_user_cli(*command, "--config", str(config), stdin="unused\n"))
        assert error.startswith(f"config file {config} cannot be read by "), error
        assert "Permission denied" in error and "chmod 0640" in fix, (command, error, fix)


def test_a_config_file_in_a_folder_the_agent_user_may_not_enter_names_that_folder(
    agent_user_cli, open_tmp, shut
) -> None:
    """"chmod 0640" on the file changes nothing when the folder above it is shut: that folder is the fix."""
    folder = open_tmp / "etc"
    folder.mkdir()
    config = folder / "agent.toml"
    config.write_text(config_text(open_tmp / "state"))
    shut(folder, 0o000)
    error, fix = refused(agent_user_cli("doctor", "--config", str(config)))
    assert f"it is inside {folder}, a folder " in error and "may not pass through" in error, error
    assert f"chmod o+x {folder}" in fix and "chmod 0640" not in fix


# ---------------------------------------------------------------- the state directory


def test_a_state_dir_inside_a_folder_the_agent_user_may_not_enter_names_that_folder(
    agent_user_cli, open_tmp, shut
) -> None:
    """Path.exists() raised PermissionError inside the error handler: `provision` and `run` ended in a
    traceback; `health` told the installer to chown the state directory, which changes nothing."""
    closed = open_tmp / "closed"
    (closed / "state").mkdir(parents=True)
    config = open_tmp / "agent.toml"
    config.write_text(config_text(closed / "state"))
    shut(closed, 0o000)
    for command in (("provision", "--token", "-", "--ca-fingerprint", FINGERPRINT), ("run",), ("health",)):
        error, fix = refused(agent_user_cli(*command, "--config", str(config), stdin="unused\n"))
        assert f"inside {closed}" in error and "may not pass through" in error, (command, error)
        assert f"chmod o+x {closed}" in fix and "chown" not in fix, (command, fix)
    doctor = agent_user_cli("doctor", "--config", str(config))
    assert doctor.returncode == 1
    assert "[FAIL] state directory:" in line_of(doctor, "state directory")
    assert "a parent directory is closed to this user" in line_of(doctor, "state directory")


def test_provisioning_into_a_folder_the_agent_user_may_not_write_says_to_create_it_as_root(
    verifier, agent_user_cli, open_tmp, shut
) -> None:
    parent = open_tmp / "lib"
    parent.mkdir()
    shut(parent, 0o555)
    state = parent / "state"
    config = open_tmp / "agent.toml"
    config.write_text(config_text(state).replace("https://127.0.0.1:9", verifier.url))
    error, fix = refused(
        agent_user_cli("provision", "--config", str(config), "--token", "-", "--ca-fingerprint",
                       verifier.ca_fingerprint, stdin="unused\n")
    )
    assert f"{state} does not exist and its parent is not writable" in error, error
    assert f"install -d -o capture-agent -g capture-agent -m 0700 {state}" in fix
    assert not state.exists()


def test_the_daemon_names_the_chown_for_an_outbox_a_root_run_left_behind(
    verifier, agent_user_cli, open_tmp, shut
) -> None:
    """`sudo capture-agent run` once, to try, leaves outbox.sqlite root's 0600 in the agent's state directory;
    the daemon as the agent's user then ended in Outbox's PermissionError traceback."""
    state = open_tmp / "state"
    asyncio.run(provision_device(verifier, state, "kiosk-root-run"))
    give_to_agent_user(state)
    outbox = state / "outbox.sqlite"
    outbox.touch(mode=0o600)
    shut(outbox, 0o600 if os.getuid() == 0 else 0o000)  # root's 0600, as a root run leaves it; else shut to its owner
    config = write_config_file(open_tmp / "agent.toml", device_config(state, verifier.url),
                               '[logging]\nlevel = "error"\n')
    error, fix = refused(agent_user_cli("run", "--config", str(config)))
    assert error.startswith(f"cannot open the audit outbox: permission denied on {outbox} ("), error
    assert f"chown -R capture-agent: {state}" in fix


# ---------------------------------------------------------------- the local API socket's folder


def test_the_daemon_and_doctor_name_the_fix_for_a_socket_folder_the_agent_user_may_not_write(
    verifier, agent_user_cli, open_tmp, shut
) -> None:
    """The daemon met the folder only after opening its devices; doctor never looked at it."""
    state = open_tmp / "state"
    asyncio.run(provision_device(verifier, state, "kiosk-user"))
    give_to_agent_user(state)
    run_folder = open_tmp / "run"
    run_folder.mkdir()
    shut(run_folder, 0o555)
    socket_path = run_folder / "api.sock"
    config = write_config_file(
        open_tmp / "agent.toml",
        device_config(state, verifier.url),
        f'[reader]\nkind = "zfm"\nport = "{open_tmp / "ttyUSB-unplugged"}"\n[api]\nsocket = "{socket_path}"\n'
        '[logging]\nlevel = "error"\n',
    )
    error, fix = refused(agent_user_cli("run", "--config", str(config)))
    assert "cannot listen on the local API socket: " in error and str(socket_path) in error, error
    assert "install -d -o " in fix and str(run_folder) in fix, fix
    assert not socket_path.exists()
    doctor = agent_user_cli("doctor", "--config", str(config))
    line = line_of(doctor, "local API socket")
    assert line.startswith("[FAIL]") and "mode 555" in line and fix in line, line
    assert "[ok  ] device identity:" in doctor.stdout, "the identity the daemon got past is fine"


# ---------------------------------------------------------------- `devices` on paths it may not use


def test_devices_names_a_folder_shut_to_the_agent_user_and_a_camera_file_it_may_not_read(
    agent_user_cli, open_tmp, shut
) -> None:
    """A port or camera in a shut folder was "does not exist" (look for an unplugged adapter); a camera file
    the user may not read was "[ok  ] ... gives no frame", OpenCV's word for a file of no video."""
    closed = open_tmp / "closed"
    closed.mkdir()
    (closed / "ttyUSB0").write_bytes(b"")
    shut(closed, 0o000)
    unreadable = open_tmp / "camera.mjpg"
    unreadable.write_bytes(b"\xff\xd8")
    shut(unreadable, 0o000)
    done = agent_user_cli("devices", "--only-named", "--port", str(closed / "ttyUSB0"),
                          "--camera", str(closed / "ttyUSB0"), "--camera", str(unreadable))
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for kind, path, said, fix in (
        ("serial", closed / "ttyUSB0", "cannot be looked at by ", f"`ls -ld` each folder above {closed / 'ttyUSB0'}"),
        ("camera", closed / "ttyUSB0", "cannot be looked at by ", "(`chmod o+x FOLDER`"),
        ("camera", unreadable, "may not read it", f"`ls -l {unreadable}`"),
    ):
        index = next(i for i, line in enumerate(lines) if line.startswith(f"[FIX ] {kind:<6} {path} "))
        assert said in lines[index] and "does not exist" not in lines[index], lines[index]
        assert fix in lines[index + 1], lines[index + 1]
