"""The command lines as an installer types them: real processes, real verifier."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agent.devstack import device_config, write_config_file


def agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=60)


def test_provision_then_doctor_then_health(verifier, tmp_path) -> None:
    config_file = write_config_file(
        tmp_path / "agent.toml", device_config(tmp_path / "state", verifier.url), '[logging]\nlevel = "error"\n'
    )
    token = verifier.new_token("kiosk-cli")
    done = agent_cli(
        "--config", str(config_file), "provision", "--token", token, "--ca-fingerprint", verifier.ca_fingerprint
    )
    assert done.returncode == 0, done.stderr
    assert "provisioned device kiosk-cli" in done.stdout
    doctor = agent_cli("--config", str(config_file), "doctor")
    assert doctor.returncode == 0, doctor.stdout
    assert "TLSv1.3" in doctor.stdout and "ALPN h2" in doctor.stdout
    again = agent_cli(
        "--config",
        str(config_file),
        "provision",
        "--force",
        "--token",
        token,
        "--ca-fingerprint",
        verifier.ca_fingerprint,
    )
    assert again.returncode == 2
    assert again.stderr.count("fix:") == 1 and "token new" in again.stderr


def test_a_bad_config_stops_with_key_value_and_fix(tmp_path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text("[network]\nkeepalive = 30\n")
    result = agent_cli("--config", str(bad), "doctor")
    assert result.returncode == 2
    assert "unknown key [network] keepalive = 30" in result.stderr and "fix:" in result.stderr


def test_doctor_on_an_unprovisioned_device_fails_with_fixes(tmp_path) -> None:
    config_file = write_config_file(tmp_path / "agent.toml", device_config(tmp_path / "none", "https://127.0.0.1:9"))
    result = agent_cli("--config", str(config_file), "doctor")
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "capture-agent provision" in result.stdout


def test_a_reader_that_leaves_the_pipe_early_gets_no_traceback(tmp_path) -> None:
    """`capture-agent doctor | head -1`: the reader has gone before doctor writes its report."""
    config_file = write_config_file(tmp_path / "agent.toml", device_config(tmp_path / "none", "https://127.0.0.1:9"))
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write is EPIPE
    with os.fdopen(write_end, "wb") as stdout:
        result = subprocess.run(
            [sys.executable, "-m", "agent.cli", "--config", str(config_file), "doctor"],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.returncode == 141


# ---------------------------------------------------------------- usage errors


@pytest.mark.parametrize(("args", "said", "help_command"), [
    (("doctor", "--bogus"), "unrecognized arguments: --bogus", "capture-agent doctor --help"),
    (("health", "extra"), "unrecognized arguments: extra", "capture-agent health --help"),
    (("provision", "--token"), "argument --token: expected one argument", "capture-agent provision --help"),
    (("provision",), "the following arguments are required: --token", "capture-agent provision --help"),
    (("enroll", "--subject", "ana", "--captures", "three"),
     "argument --captures: 'three' is not a whole number from 1 to 10", "capture-agent enroll --help"),
    # out of the local API's bounds: the daemon's 400 named its JSON key ("captures") with no fix
    (("enroll", "--subject", "ana", "--captures", "0"), "argument --captures: '0' is not a whole number from 1 to 10",
     "capture-agent enroll --help"),
    (("enroll", "--subject", "ana", "--fingers", "5"), "argument --fingers: '5' is not a whole number from 1 to 4",
     "capture-agent enroll --help"),
    (("verify",), "the following arguments are required: --subject", "capture-agent verify --help"),
    # the fingerprint's shape was checked after the identity there ("use --force") and the verifier's answer
    (("provision", "--token", "-", "--ca-fingerprint", "7ddbeb"),
     "argument --ca-fingerprint: not a SHA-256 fingerprint (64 hex digits): the value given has 6 characters",
     "capture-agent provision --help"),
    # a token pasted into the wrong option: never repeated on the terminal (or the journal)
    (("provision", "--token", "-", "--ca-fingerprint", "tok_SECRET-value"),
     "argument --ca-fingerprint: not a SHA-256 fingerprint (64 hex digits): the value given has 16 characters, "
     "11 of them not hex digits (not shown)", "capture-agent provision --help"),
    # not a subject id or group name: it went to the verifier, came back as a failed (audited) session whose fix
    # said 'send {"operation": ...}' in the wire's terms, and needed the daemon running to be told at all
    (("verify", "--subject", "ana smith"), "argument --subject: 'ana smith' is not a subject id: use 1 to 64",
     "capture-agent verify --help"),
    (("enroll", "--subject", "ana", "--group", "staff/night"),
     "argument --group: 'staff/night' is not a group name: use 1 to 64", "capture-agent enroll --help"),
    (("--config",), "argument --config/-c: expected one argument", "capture-agent --help"),
    (("frob",), "argument COMMAND: invalid choice: 'frob'", "capture-agent --help"),
    ((), "the following arguments are required: COMMAND", "capture-agent --help"),
])
def test_a_usage_error_is_an_error_and_a_fix_naming_the_commands_help(args, said, help_command) -> None:
    """An unknown option or command, a missing argument or a bad value was argparse's bare usage block
    and `capture-agent ...: error:` line, unlike every other error of this CLI: no `fix:` line."""
    done = agent_cli(*args)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == "", done.stderr
    assert not done.stderr.startswith("usage:"), done.stderr
    lines = done.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    fixes = [line for line in lines if line.startswith("fix: ")]
    assert len(errors) == 1 and len(fixes) == 1, done.stderr
    assert errors[0].startswith(f"error: {said}"), errors[0]
    assert f"`{help_command}`" in fixes[0], fixes[0]
    help_done = agent_cli(*help_command.split()[1:])
    assert help_done.returncode == 0 and help_done.stdout.startswith("usage: "), "the fix's command works"


def test_the_identify_help_does_not_say_the_sensor_of_a_face_identification() -> None:
    """`capture-agent --help` said "identify who is at the sensor", though `identify --face` runs on the camera
    and touches no sensor."""
    said = " ".join(agent_cli("--help").stdout.split())  # argparse wraps the line
    assert "identify who is at the sensor" not in said and "identify who is at the kiosk" in said, said


def test_a_session_command_that_cannot_reach_the_daemon_says_why_from_the_socket_path(tmp_path) -> None:
    """One fix ("start the daemon, join the [api] group") for every case: a daemon run with another config
    listens on another socket, which only --config or --socket reaches."""
    import socket as sockets

    missing = agent_cli("verify", "--subject", "ana", "--socket", str(tmp_path / "none.sock"))
    assert missing.returncode == 2 and "--socket PATH" in missing.stderr and "--config FILE" in missing.stderr
    stale = tmp_path / "stale.sock"
    with sockets.socket(sockets.AF_UNIX) as listener:  # bound, then closed: a daemon killed left it behind
        listener.bind(str(stale))
    refused = agent_cli("identify", "--socket", str(stale))
    assert refused.returncode == 2 and "nobody answers on it" in refused.stderr, refused.stderr


@pytest.mark.parametrize("module", ["agent.cli", "verifier.cli", "simulators.cli"])
def test_each_command_says_its_version(module) -> None:
    """`capture-agent --version` was "error: the following arguments are required: COMMAND" (the same on the
    verifier and the simulator): what an installer checks first, and a bug report asks for."""
    from importlib.metadata import version

    done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"capture-{module.split('.')[0].removesuffix('s')}", version("capture-agent")]


@pytest.mark.parametrize("command", ["health", "renew"])
def test_a_state_directory_that_is_not_there_is_said_so_not_blamed_on_the_keyring(tmp_path, command) -> None:
    """A mistyped --state-dir (or a device never provisioned) read "no key-encryption key 'capture-agent-kek' in
    the file-insecure-dev keyring", as if the keyring were what was wrong; `run` said "no device identity"."""
    config_file = write_config_file(tmp_path / "agent.toml", device_config(tmp_path / "state", "https://127.0.0.1:9"))
    done = agent_cli(command, "--config", str(config_file), "--state-dir", str(tmp_path / "typo"))
    assert done.returncode == 2, done.stderr
    error, fix = done.stderr.split("\nfix: ", 1)
    assert error.endswith(f"error: no device identity in {tmp_path / 'typo'} (the folder does not exist)"), error
    assert "capture-agent provision" in fix
    assert not (tmp_path / "typo").exists(), "nothing made"


def test_the_provisioning_line_of_no_identity_provisions_where_the_command_looked(verifier, tmp_path) -> None:
    """`capture-agent run --config agent.toml` before provisioning gave the bare `capture-agent provision ...`
    line (doctor: `capture-agent provision`): typed as shown, it provisioned into the default state directory
    under the default keyring (here: no systemd credential, refused), never the config's. The line now carries
    the --config and --state-dir typed (doctor's, the config it read, absolute: it may be typed elsewhere)."""
    import re
    import shutil

    config_file = write_config_file(
        tmp_path / "agent.toml", device_config(tmp_path / "state", verifier.url), '[logging]\nlevel = "error"\n'
    )
    elsewhere = tmp_path / "other state"
    for typed in (["run", "--config", str(config_file)], ["health", "--config", str(config_file), "--state-dir",
                                                           str(elsewhere)], ["doctor", "--config", "agent.toml"]):
        done = subprocess.run([sys.executable, "-m", "agent.cli", *typed], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)
        assert done.returncode != 0 and "does not exist" in done.stdout + done.stderr, done.stderr
        line = re.search(r"`(printf .*? --ca-fingerprint SHA256)`", done.stdout + done.stderr)
        assert line, done.stdout + done.stderr
        command = (line.group(1).replace("TOKEN", verifier.new_token(f"kiosk-{typed[0]}"))
                   .replace("URL", verifier.url).replace("SHA256", verifier.ca_fingerprint))
        env = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "CAPTURE_AGENT_CONFIG")}
        env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"  # capture-agent
        provisioned = subprocess.run([shutil.which("bash") or "/bin/bash", "-c", command], capture_output=True,
                                     text=True, timeout=90, env=env, cwd=tmp_path)
        assert provisioned.returncode == 0, (command, provisioned.stderr)
        if typed[0] == "run":  # doctor's line, next, finds this state directory provisioned: start it anew
            assert (tmp_path / "state" / "identity").is_symlink(), "run's line provisioned elsewhere than its config's"
            shutil.rmtree(tmp_path / "state")
    assert (tmp_path / "state" / "identity").is_symlink(), "doctor's line provisioned elsewhere than its config's"
    assert (elsewhere / "identity").is_symlink(), "health's line provisioned elsewhere than its --state-dir"


@pytest.mark.parametrize("command", ["health", "renew"])
def test_a_state_directory_under_a_file_names_that_file(tmp_path, command) -> None:
    """A state_dir under a file (`--state-dir agent.toml/state`) is named as `run` names it, the file on the way,
    before the keyring is asked; health and renew said "no device identity ... (the folder does not exist)",
    which sent the installer to provision a device whose path was the mistake."""
    config_file = write_config_file(tmp_path / "agent.toml", device_config(tmp_path / "state", "https://127.0.0.1:9"))
    done = agent_cli(command, "--config", str(config_file), "--state-dir", str(config_file / "state"))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "no device identity" not in done.stderr, done.stderr
    assert f"state_dir {config_file / 'state'} is inside {config_file}, which is a file" in done.stderr, done.stderr
    assert "point [agent] state_dir at a directory" in done.stderr, done.stderr


def test_an_empty_group_is_still_the_default_group_not_a_usage_error(tmp_path) -> None:
    """`enroll --group ""` (a kiosk script's `--group "$GROUP"` with GROUP unset) enrolled into the default group:
    the empty value was never sent. The parse-time check of group names refused it as 'not a group name', which
    the verifier, never sent it, would not have done. A malformed non-empty group is still refused there."""
    missing = tmp_path / "none.sock"
    empty = agent_cli("enroll", "--subject", "ana", "--group", "", "--socket", str(missing))
    assert "is not a group name" not in empty.stderr, empty.stderr
    assert empty.returncode == 2 and "--socket PATH" in empty.stderr, empty.stderr  # past parsing: the daemon
    bad = agent_cli("enroll", "--subject", "ana", "--group", " ", "--socket", str(missing))
    assert bad.returncode == 2 and "argument --group: ' ' is not a group name" in bad.stderr, bad.stderr


def test_devices_probes_the_ports_the_config_names_and_says_which_entry(zfm_sim, tmp_path) -> None:
    """`capture-agent devices` probed only the ports pyserial lists (and --port): a module on a port the config
    names but pyserial does not list (a pty here; /dev/serial0 on some boards) was missing from the listing, and
    the exit status said nothing of a configured port that is not there. Both are now probed as if named."""
    import json

    missing = tmp_path / "ttyUSB7"
    config_file = tmp_path / "agent.toml"
    config_file.write_text(
        f'[reader]\nkind = "zfm"\nport = "{missing}"\n\n'
        f'[[device]]\nkind = "zfm"\nname = "finger"\nport = "{zfm_sim.port}"\n'
    )
    done = agent_cli("--config", str(config_file), "devices", "--json", "--only-named")
    findings = {f["path"]: f for f in json.loads(done.stdout) if f["kind"] == "serial"}
    found = findings.get(zfm_sim.port)
    assert found is not None, f"the configured port was not probed: {done.stdout}"
    assert found["capabilities"] == ["fingerprint-image"] and found["details"]["config"] == '[[device]] name = "finger"'
    gone = findings.get(str(missing))
    assert gone is not None and gone["description"] == "does not exist" and gone["details"]["config"] == "[reader]"
    assert done.returncode == 1, "a configured port that is not there counts as one named"

    config_file.write_text(f'[[device]]\nkind = "zfm"\nname = "finger"\nport = "{zfm_sim.port}"\n')
    shown = agent_cli("devices", "--only-named", "--config", str(config_file))  # the option after the command too
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"[ok  ] serial {zfm_sim.port}  ZFM-family module" in shown.stdout, shown.stdout
    assert 'config: [[device]] name = "finger"' in shown.stdout, shown.stdout


def test_devices_reads_the_camera_the_config_names_as_the_daemon_would(camera_sim, tmp_path) -> None:
    """A stream camera the config names was not read at all unless typed again with --camera."""
    import json

    config_file = tmp_path / "agent.toml"
    config_file.write_text(f'[[device]]\nkind = "camera"\nname = "door"\nsource = "{camera_sim.url}"\n')
    done = agent_cli("--config", str(config_file), "devices", "--json", "--only-named")
    assert done.returncode == 0, done.stdout + done.stderr
    cameras = [f for f in json.loads(done.stdout) if f["kind"] == "camera"]
    assert [(c["path"], c["capabilities"]) for c in cameras] == [(camera_sim.url, ["camera"])], cameras
    assert cameras[0]["details"]["config"] == '[[device]] name = "door"', cameras


def test_devices_still_lists_what_is_there_when_the_config_cannot_be_read(zfm_sim, tmp_path) -> None:
    """Discovery is what an installer runs to learn what to write in the config: since it probes the config's
    devices too, a config it could not read (a syntax error mid-edit, /etc/capture-agent/agent.toml closed to the
    installer's own user) made `capture-agent devices` list nothing and exit 2. It says the config's error and fix
    on stderr, and lists what it finds without the config's devices."""
    import json
    import os
    import subprocess
    import sys

    broken = tmp_path / "agent.toml"
    broken.write_text("[reader\nport = \n")
    env = {**os.environ, "CAPTURE_AGENT_CONFIG": str(broken)}
    done = subprocess.run([sys.executable, "-m", "agent.cli", "devices", "--json", "--only-named", "--port",
                           zfm_sim.port], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    found = {f["path"]: f for f in json.loads(done.stdout) if f["kind"] == "serial"}
    assert found[zfm_sim.port]["capabilities"] == ["fingerprint-image"], found
    assert "not valid TOML" in done.stderr and "fix: correct the syntax" in done.stderr, done.stderr
    assert "config" not in found[zfm_sim.port]["details"], found


def test_forget_wait_refused_at_zero_says_it_must_be_above_zero(tmp_path) -> None:
    """`forget --wait-s 0` was refused as "not a number of seconds between 0 and 3600": 0 read as allowed."""
    done = agent_cli("forget", "--subject", "ana", "--wait-s", "0", "--socket", str(tmp_path / "none.sock"))
    assert done.returncode == 2 and "between 0 and" not in done.stderr, done.stderr
    assert "'0' is not a number of seconds above 0, at most 3600" in done.stderr, done.stderr
    taken = agent_cli("forget", "--subject", "ana", "--wait-s", "3600", "--socket", str(tmp_path / "none.sock"))
    assert "--wait-s" not in taken.stderr, taken.stderr  # the bound itself is taken: past parsing, to the socket
