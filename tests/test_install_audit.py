"""Defects of the installer path found by an install audit, each reproduced as an installer meets it.

Real processes throughout: `capture-agent` as a subprocess, the reference verifier
on a free port of 127.0.0.1, real files and real TLS. Where a check depends on
another user (a state directory provisioned as root, read by the agent's user),
the command runs as uid 65534 when the tests run as root, and is skipped otherwise.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from agent.devstack import LocalVerifier, device_config, write_config_file
from agent.doctor import run_doctor
from agent.identity import IdentityStore
from tests.conftest import AGENT_UID, REPO, as_agent_user_prefix
from tests.test_doctor import by_name
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


# ---------------------------------------------------------------- the state directory's owner and permissions

def needs_root() -> None:
    prefix = as_agent_user_prefix()
    if isinstance(prefix, str):
        pytest.skip(prefix)


def agent_cli_as_agent_user(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`capture-agent` run as uid 65534: the daemon's user meeting what root left behind."""
    prefix = as_agent_user_prefix()
    assert not isinstance(prefix, str), prefix
    return subprocess.run(
        [*prefix, sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=REPO,
    )


def systemd_credentials(folder: Path) -> dict[str, str]:
    """An environment with a readable key-encryption-key credential, as the unit's LoadCredentialEncrypted= gives."""
    creds = folder / "creds"
    creds.mkdir(mode=0o755)
    (creds / "capture-agent-kek").write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    (creds / "capture-agent-kek").chmod(0o644)
    env = {k: v for k, v in os.environ.items() if k != "CAPTURE_AGENT_CONFIG"}
    env["CREDENTIALS_DIRECTORY"] = str(creds)
    return env


def credentials_config(folder: Path, state: Path, url: str) -> Path:
    config_file = folder / "agent.toml"
    config_file.write_text(
        f'[agent]\nstate_dir = "{state}"\n[verifier]\nurl = "{url}"\n[keyring]\nbackend = "systemd-credentials"\n'
        '[logging]\nlevel = "error"\n'
    )
    config_file.chmod(0o644)
    return config_file


def test_a_state_directory_provisioned_as_root_tells_the_agent_user_to_chown_it(verifier, open_tmp) -> None:
    needs_root()
    state = open_tmp / "state"
    env = systemd_credentials(open_tmp)
    config_file = credentials_config(open_tmp, state, verifier.url)
    token = verifier.new_token("kiosk-root")
    as_root = agent_cli(
        "provision",
        "--config",
        str(config_file),
        "--token",
        token,
        "--ca-fingerprint",
        verifier.ca_fingerprint,
        env=env,
    )
    assert as_root.returncode == 0, as_root.stderr
    clock_warnings = [line for line in as_root.stderr.splitlines() if line.startswith("warning:") and "clock" in line]
    assert not clock_warnings, "a certificate valid by this clock gets no clock warning"
    chown = f"chown -R capture-agent: {state}"
    for opened in (False, True):  # root's 0700 folders; then folders opened 0755 with the files still root's 0600
        if opened:
            for folder in (state, *state.glob("identity-*")):
                folder.chmod(0o755)
        doctor = agent_cli_as_agent_user("doctor", "--config", str(config_file), env=env)
        no_traceback(doctor)
        assert doctor.returncode == 1, doctor.stdout + doctor.stderr
        state_line = next(line for line in doctor.stdout.splitlines() if "state directory:" in line)
        assert "[FAIL]" in state_line and "belongs to root (uid 0)" in state_line, doctor.stdout
        assert chown in doctor.stdout
        identity_block = doctor.stdout.split("device identity:", 1)[1].split("\n[", 1)[0]
        assert "permission denied" in identity_block and chown in identity_block, doctor.stdout
        assert "re-provision" not in identity_block, "a token would be spent for a chown"
        for command in (("health",), ("provision", "--token", "unused", "--ca-fingerprint", verifier.ca_fingerprint)):
            done = agent_cli_as_agent_user(*command, "--config", str(config_file), env=env)
            no_traceback(done)
            assert done.returncode == 2, done.stdout + done.stderr
            assert chown in done.stderr.split("fix:", 1)[1], done.stderr
    # The fix that is named works: chowned, the same commands pass as the agent's user.
    for item in (state, *state.rglob("*")):  # what `chown -R` does (the identity link itself too)
        os.lchown(item, AGENT_UID, AGENT_UID)
    for folder in (state, *state.glob("identity-*")):
        folder.chmod(0o700)
    doctor = agent_cli_as_agent_user("doctor", "--config", str(config_file), env=env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr


def test_a_state_directory_whose_parent_the_agent_user_cannot_write_says_to_create_it_as_root(
    verifier, open_tmp
) -> None:
    needs_root()
    state = open_tmp / "root-owned" / "state"
    state.parent.mkdir(mode=0o755)
    env = systemd_credentials(open_tmp)
    config_file = credentials_config(open_tmp, state, verifier.url)
    done = agent_cli_as_agent_user(
        "provision",
        "--config",
        str(config_file),
        "--token",
        "unused",
        "--ca-fingerprint",
        verifier.ca_fingerprint,
        env=env,
    )
    no_traceback(done)
    assert done.returncode == 2
    error, fix = done.stderr.split("fix:", 1)
    assert f"{state} does not exist" in error and "parent is not writable" in error, done.stderr
    assert f"install -d -o capture-agent -g capture-agent -m 0700 {state}" in fix


def test_a_state_dir_that_is_a_file_is_named_as_one(verifier, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("not a directory\n")
    config_file = write_config_file(tmp_path / "agent.toml", device_config(state, verifier.url))
    done = agent_cli(
        "provision", "--config", str(config_file), "--token", "unused", "--ca-fingerprint", verifier.ca_fingerprint
    )
    no_traceback(done)
    assert done.returncode == 2 and "is a file, not a directory" in done.stderr, done.stderr
    doctor = agent_cli("doctor", "--config", str(config_file))
    no_traceback(doctor)
    assert "[FAIL] state directory:" in doctor.stdout and "is a file, not a directory" in doctor.stdout, doctor.stdout


def test_doctor_checks_the_state_directory_owner(provisioned) -> None:
    """Root runs this test: a state directory owned by another uid is not the one the daemon's user has."""
    needs_root()
    config, _ = provisioned
    state = config.agent.state_dir
    assert by_name(run_doctor(config))["state directory"].ok is True
    os.chown(state, AGENT_UID, AGENT_UID)
    check = by_name(run_doctor(config))["state directory"]
    assert check.ok is False and f"belongs to nobody (uid {AGENT_UID})" in check.detail
    assert "doctor runs as root" in check.detail and "-p User=capture-agent" in check.fix, check


def test_root_on_the_agents_state_directory_is_told_to_run_as_its_owner(provisioned, tmp_path) -> None:
    """`sudo capture-agent renew` on a directory the agent's user owns said "belongs to owned by nobody", and
    its fix, `chown -R capture-agent: DIR`, changes nothing on a directory that already is the agent's."""
    if os.geteuid() != 0:
        pytest.skip("root runs this test: the state directory is given to another uid")
    config, _ = provisioned
    state = config.agent.state_dir
    config_file = write_config_file(tmp_path / "agent.toml", config, '[logging]\nlevel = "error"\n')
    for item in (state, *state.rglob("*")):
        os.lchown(item, AGENT_UID, AGENT_UID)
    for command in ("renew", "run"):
        done = agent_cli(command, "--config", str(config_file))
        no_traceback(done)
        assert done.returncode == 2, (command, done.stderr)
        error, fix = done.stderr.split("\nfix: ", 1)
        assert f"belongs to nobody (uid {AGENT_UID}), not to this user (root (uid 0))" in error, done.stderr
        assert "owned by" not in error, done.stderr
        assert "runuser -u nobody -- capture-agent" in fix and "-p User=nobody" in fix, fix
        assert "chown" not in fix, "the directory is right; the user is not"
    assert all(item.lstat().st_uid == AGENT_UID for item in (state, *state.rglob("*"))), "root wrote nothing there"


def test_root_on_a_state_directory_of_a_user_with_no_name_is_given_a_command_that_takes_its_number(
    provisioned, tmp_path
) -> None:
    """The owner of a systemd DynamicUser= unit's directory (or of a user since removed) has no name here, and the
    fix said `runuser -u 61234 -- capture-agent ...`, which runuser refuses ("user 61234 does not exist")."""
    if os.geteuid() != 0:
        pytest.skip("root runs this test: the state directory is given to another uid")
    nameless = next(uid for uid in range(61234, 65000) if not _has_name(uid))
    config, _ = provisioned
    state = config.agent.state_dir
    config_file = write_config_file(tmp_path / "agent.toml", config, '[logging]\nlevel = "error"\n')
    for item in (state, *state.rglob("*")):
        os.lchown(item, nameless, nameless)
    done = agent_cli("renew", "--config", str(config_file))
    no_traceback(done)
    assert done.returncode == 2, done.stderr
    fix = done.stderr.split("\nfix: ", 1)[1]
    assert "runuser" not in fix, fix
    assert f"run the command as uid {nameless}," in fix and f"-p User={nameless} " in fix, fix


def _has_name(uid: int) -> bool:
    """Whether ``uid`` has a passwd entry here."""
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_doctor_fails_a_state_directory_the_agent_user_cannot_enter(open_tmp) -> None:
    needs_root()
    state = open_tmp / "state"
    state.mkdir(mode=0o700)
    os.chown(state, AGENT_UID, AGENT_UID)
    state.chmod(0o000)  # its own, but closed even to its owner
    env = {k: v for k, v in os.environ.items() if k != "CAPTURE_AGENT_CONFIG"}
    config_file = open_tmp / "agent.toml"
    config_file.write_text(f'[agent]\nstate_dir = "{state}"\n[keyring]\nbackend = "file-insecure-dev"\n')
    config_file.chmod(0o644)
    doctor = agent_cli_as_agent_user("doctor", "--config", str(config_file), env=env)
    no_traceback(doctor)
    state_line = next(line for line in doctor.stdout.splitlines() if "state directory:" in line)
    assert "[FAIL]" in state_line and "cannot enter it" in state_line, doctor.stdout
    assert f"chmod 0700 {state}" in doctor.stdout


# ---------------------------------------------------------------- a clock that is off


def test_provisioning_warns_when_the_issued_certificate_is_not_valid_by_the_local_clock(tmp_path: Path) -> None:
    """The verifier issues a certificate whose dates this device's clock is outside of.

    Rather than fake the clock, the verifier issues a certificate already over when it
    arrives (a lifetime of 86 microseconds; X.509 dates are whole seconds, rounded down).
    """
    settings = tmp_path / "verifier.toml"
    settings.write_text("cert_days = 0.000000001\n")
    with LocalVerifier.running(tmp_path / "pki", extra_args=("--config", str(settings))) as verifier:
        config_file = write_config_file(tmp_path / "agent.toml", device_config(tmp_path / "state", verifier.url))
        token = verifier.new_token("kiosk-clock")
        done = agent_cli(
            "provision", "--config", str(config_file), "--token", token, "--ca-fingerprint", verifier.ca_fingerprint
        )
    no_traceback(done)
    assert done.returncode == 0 and "provisioned device kiosk-clock" in done.stdout, done.stderr
    warning = done.stderr.split("warning:", 1)[1]
    assert "already expired by this device's clock" in warning and "the clock says" in warning, done.stderr
    assert "timedatectl" in warning.split("fix:", 1)[1] and "do not re-provision" in warning


# ---------------------------------------------------------------- provisioning over an expired identity


def test_provisioning_over_an_expired_identity_points_to_force_and_a_new_token(tmp_path: Path, make_test_ca) -> None:
    """`renew` cannot renew an expired certificate, so the refusal must not send the installer there."""
    from agent.keystore import load_kek

    ca = make_test_ca("device-ca")
    now = dt.datetime.now(dt.UTC)
    config = device_config(tmp_path / "state", "https://127.0.0.1:9")
    kek = load_kek(config, create=True)
    valid = (now - dt.timedelta(days=40), now - dt.timedelta(days=10))  # a real certificate, really expired
    IdentityStore(config.agent.state_dir).write(
        *ca.issue_key_and_cert(["kiosk-exp"], client=True, valid=valid), [ca.cert], kek.encode()
    )
    config_file = write_config_file(tmp_path / "agent.toml", config)
    done = agent_cli("provision", "--config", str(config_file), "--token", "new", "--ca-fingerprint", "00" * 32)
    no_traceback(done)
    assert done.returncode == 2
    error, fix = done.stderr.split("fix:", 1)
    assert "already has an identity" in error and f"expired on {valid[1]:%Y-%m-%d %H:%M} UTC" in error, done.stderr
    assert "--force" in fix and "new token" in fix and "capture-verifier token new" in fix
    assert "renew" not in fix.replace("cannot be renewed", ""), "renew fails on an expired certificate"
