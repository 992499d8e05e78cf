"""Issue 11: every documented command works as an installer types it, and failures name their cause.

Real processes throughout: `capture-agent` and `capture-verifier` as subprocesses,
a verifier on a free port of 127.0.0.1, the daemon as its own process.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from agent.config import parse_config
from agent.devstack import LocalVerifier, device_config, write_config_file
from agent.identity import IdentityStore
from tests.conftest import start_agent_daemon
from tests.exec_prepared import prepared

BASH = shutil.which("bash") or "/bin/bash"  # the installer's shell


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


# ---------------------------------------------------------------- item 2: provisioning as the README shows


def readme_block(after: str) -> str:
    """The first ```sh block of README.md after the line containing ``after``."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rest = text[text.index(after) :]
    start = rest.index("```sh\n") + len("```sh\n")
    return textwrap.dedent(rest[start : rest.index("```", start)])


def test_the_readme_provisioning_section_runs_as_written_without_systemd(verifier, tmp_path) -> None:
    """The development path of 'Provisioning a device', typed into a shell with no systemd credentials."""
    env = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "CAPTURE_AGENT_CONFIG")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # capture-agent, capture-verifier
    verifier_cli_line = "capture-verifier token new --pki /var/lib/capture-verifier --device kiosk-07"
    assert verifier_cli_line in (Path(__file__).resolve().parents[1] / "README.md").read_text()
    issued = subprocess.run(
        [BASH, "-c", verifier_cli_line.replace("/var/lib/capture-verifier", str(verifier.pki_dir))],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert issued.returncode == 0, issued.stderr
    token = next(
        line.split(":", 1)[1].strip() for line in issued.stdout.splitlines() if line.lower().startswith("token")
    )
    script = (
        readme_block("Development and test rigs only")
        .replace("/var/tmp/capture-agent-dev", str(tmp_path / "state"))
        .replace("https://verifier.example:8443", verifier.url)
        .replace("TOKEN", token)
        .replace("3f9a...c2", verifier.ca_fingerprint)
    )
    done = subprocess.run(
        [BASH, "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "provisioned device kiosk-07" in done.stdout and "FAIL" not in done.stdout, done.stdout


def test_no_readme_recipe_puts_the_bootstrap_token_in_a_command_line() -> None:
    """Audit 16 F3: `--token TOKEN` is readable in /proc by every local user, and systemd-run logs it."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = [
        line.strip()
        for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
        for line in re.sub(r"\\\n\s*", "", block).splitlines()
        if "--token" in line
    ]
    assert len(commands) == 3, commands  # "On a device", "Development and test rigs", "Installing on a device"
    for command in commands:
        assert command.startswith("printf '%s\\n' TOKEN | "), command
        assert re.search(r"--token -( |$)", command), command


def test_the_line_token_new_prints_keeps_the_token_out_of_every_command_line_and_provisions(
    verifier, tmp_path
) -> None:
    """Audit 16 F3: the token goes to `--token -` through the shell's builtin printf, and the line works."""
    env = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "CAPTURE_AGENT_CONFIG")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # capture-agent
    issued = subprocess.run(
        [sys.executable, "-m", "verifier.cli", "token", "new", "--pki", str(verifier.pki_dir), "--device", "kiosk-in"],
        capture_output=True, text=True, timeout=60,
    )
    assert issued.returncode == 0, issued.stderr
    lines = issued.stdout.splitlines()
    token = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("token:"))
    command = lines[next(i for i, line in enumerate(lines) if line.endswith("On the device:")) + 1].strip()
    feeder, provision = command.split(" | ", 1)
    assert feeder == f"printf '%s\\n' {token}"
    assert token not in provision and " --token - " in provision, provision
    # printf is the shell's own: no process is started with the token among its arguments.
    assert subprocess.run([BASH, "-c", "type -t printf"], capture_output=True, text=True).stdout.strip() == "builtin"
    config_file = write_config_file(tmp_path / "agent.toml", device_config(tmp_path / "state", verifier.url))
    env["CAPTURE_AGENT_CONFIG"] = str(config_file)
    assert "--verifier https://HOST:8443 " in provision  # the verifier's port; the operator puts the host
    # Run as printed, HOST left in: the placeholder is named as such (not "Name or service not known"), no token
    # is spent and nothing is written.
    verbatim = subprocess.run([BASH, "-c", command], capture_output=True, text=True, env=env, timeout=120)
    assert verbatim.returncode == 2
    assert "HOST is the placeholder" in verbatim.stderr and "in place of HOST" in verbatim.stderr, verbatim.stderr
    assert not (tmp_path / "state").exists()
    done = subprocess.run(
        [BASH, "-e", "-c", command.replace("https://HOST:8443", verifier.url)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "provisioned device kiosk-in" in done.stdout, done.stdout


def test_provisioning_outside_systemd_names_the_setting_that_fixes_it(verifier, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "CAPTURE_AGENT_CONFIG")}
    token = verifier.new_token("kiosk-sd")
    done = agent_cli(
        "provision",
        "--state-dir",
        str(tmp_path / "state"),
        "--verifier",
        verifier.url,
        "--token",
        token,
        "--ca-fingerprint",
        verifier.ca_fingerprint,
        env=env,
    )
    assert done.returncode == 2
    error, fix = done.stderr.split("fix:", 1)
    assert "systemd-credentials" in error and "CREDENTIALS_DIRECTORY=unset" in error
    assert 'backend = "file-insecure-dev"' in fix and "LoadCredentialEncrypted=capture-agent-kek" in fix
    assert "INSECURE" in fix and fix.strip() not in error


# ---------------------------------------------------------------- item 6: re-provisioning needs --force


def test_reprovisioning_is_refused_without_force_and_says_what_it_replaces(verifier, tmp_path) -> None:
    config_file = provisioned_config_file(verifier, tmp_path, "kiosk-old")
    token = verifier.new_token("kiosk-new")
    args = ("provision", "--config", str(config_file), "--token", token, "--ca-fingerprint", verifier.ca_fingerprint)
    refused = agent_cli(*args)
    assert refused.returncode == 2
    assert "already has an identity" in refused.stderr and "device kiosk-old" in refused.stderr
    assert "valid until" in refused.stderr and "--force" in refused.stderr.split("fix:", 1)[1]
    forced = agent_cli(*args, "--force")  # the token was not spent by the refusal
    assert forced.returncode == 0, forced.stderr
    assert "provisioned device kiosk-new" in forced.stdout
    assert "replaced           device kiosk-old, certificate serial" in forced.stdout


def test_a_device_provisioned_with_verifier_on_the_command_line_keeps_that_verifier(verifier, tmp_path) -> None:
    """The README's recipe gives `--verifier URL` to `provision` only; a config without [verifier] url then
    used the built-in 127.0.0.1:8443, and the daemon never reached the verifier that issued its certificate."""
    config_file = tmp_path / "agent.toml"
    config_file.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n[keyring]\nbackend = "file-insecure-dev"\n'
        '[network]\nretries = 0\n[logging]\nlevel = "error"\n'
    )
    done = agent_cli(
        "provision", "--config", str(config_file), "--verifier", verifier.url, "--token", "-",
        "--ca-fingerprint", verifier.ca_fingerprint, stdin=verifier.new_token("kiosk-url") + "\n",
    )
    assert done.returncode == 0, done.stderr
    health = agent_cli("health", "--config", str(config_file))
    assert health.returncode == 0 and '"kiosk-url"' in health.stdout, health.stderr
    doctor = agent_cli("doctor", "--config", str(config_file))
    assert doctor.returncode == 0, doctor.stdout
    assert f"verifier {verifier.url} (as provisioned, kept in " in doctor.stdout
    # A renewal keeps it (a new identity folder), and the daemon's SIGHUP reload finds it too.
    renewed = agent_cli("renew", "--config", str(config_file))
    assert renewed.returncode == 0, renewed.stderr
    assert agent_cli("health", "--config", str(config_file)).returncode == 0
    from agent.config import load_config
    from agent.daemon import AgentDaemon

    reloaded = AgentDaemon(load_config(config_file), str(config_file)).loader()
    assert reloaded.verifier.url == verifier.url
    # A URL typed on the command line (or in the file) still wins, and doctor names both when it fails.
    moved = agent_cli("doctor", "--config", str(config_file), "--verifier", "https://127.0.0.1:9")
    assert moved.returncode == 1
    assert f"provisioned with the verifier at {verifier.url}, but --verifier says https://127.0.0.1:9" in moved.stdout
    # A bad --verifier is named as what was typed, not as a key of a file.
    typo = agent_cli("doctor", "--config", str(config_file), "--verifier", "http://127.0.0.1:9")
    assert typo.returncode == 2 and "error: bad value --verifier = 'http://127.0.0.1:9'" in typo.stderr, typo.stderr


def test_token_dash_with_nothing_on_standard_input_says_how_to_pipe_it(tmp_path) -> None:
    """`--token -` typed without the `printf ... |` before it: "the token is empty" did not say where it was read."""
    done = agent_cli(
        "provision", "--state-dir", str(tmp_path / "state"), "--token", "-", "--ca-fingerprint", "ab" * 32, stdin=""
    )
    assert done.returncode == 2
    assert "reads the token from standard input" in done.stderr
    assert "printf '%s\\n' TOKEN | capture-agent provision" in done.stderr.split("fix:", 1)[1]
    assert not (tmp_path / "state").exists()


def test_the_daemon_writes_no_core_file_whatever_the_ulimit_it_was_started_with(verifier, tmp_path) -> None:
    """Audit 16 F5: started outside its unit (no LimitCORE=0), a crash would dump frames and the decrypted key."""
    import resource

    config_file = provisioned_config_file(verifier, tmp_path)
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if hard == 0:
        pytest.skip("this process may not allow core files at all (hard limit 0): nothing for the daemon to lower")
    daemon = subprocess.Popen(
        [*prepared("core-unlimited"), sys.executable, "-m", "agent.cli", "--config", str(config_file), "run"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        lock = tmp_path / "state" / "agent.lock"
        deadline = time.monotonic() + 20
        while not (lock.exists() and lock.read_text().strip() == str(daemon.pid)):
            assert daemon.poll() is None and time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.05)
        limits = Path(f"/proc/{daemon.pid}/limits").read_text().splitlines()
        core = next(line for line in limits if line.startswith("Max core file size"))
        assert core.split()[4:6] == ["0", "0"], core  # soft and hard: nothing in the process can raise it again
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)


def test_the_verifier_writes_no_core_file_either(tmp_path) -> None:
    """Its memory holds the CA key and decrypted templates: started from a shell with cores allowed, it lowers
    its own limit to 0 (soft and hard), as the unit's LimitCORE=0 does."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if hard == 0:
        pytest.skip("this process may not allow core files at all (hard limit 0): nothing for the verifier to lower")
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))  # what the verifier inherits: `ulimit -c unlimited`
    try:
        with LocalVerifier.running(tmp_path / "pki") as verifier:
            assert verifier.process is not None
            limits = Path(f"/proc/{verifier.process.pid}/limits").read_text().splitlines()
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))  # this test process as it was
    core = next(line for line in limits if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core


# ---------------------------------------------------------------- item 8: one daemon per state directory


def test_a_second_daemon_on_the_same_state_directory_is_refused_naming_the_first(verifier, tmp_path) -> None:
    config_file = provisioned_config_file(verifier, tmp_path)
    first = start_agent_daemon(config_file)
    try:
        lock = tmp_path / "state" / "agent.lock"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip()):
            time.sleep(0.05)
        second = agent_cli("run", "--config", str(config_file))
        assert second.returncode == 2, second.stderr
        assert f"process {first.pid}" in second.stderr and str(tmp_path / "state") in second.stderr
        assert f"kill {first.pid}" in second.stderr.split("fix:", 1)[1]
        assert first.poll() is None, "the first daemon keeps running"
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(20)
    # The lock goes with its holder: a new daemon may start.
    again = start_agent_daemon(config_file)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and lock.read_text().strip() != str(again.pid) and again.poll() is None:
            time.sleep(0.05)
        assert lock.read_text().strip() == str(again.pid), "the lock was released when the first daemon stopped"
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(20)


# ---------------------------------------------------------------- item 1: renewal while the daemon runs


def test_renew_from_the_cli_while_the_daemon_runs_keeps_sessions_working(verifier, zfm_sim, tmp_path) -> None:
    """`capture-agent renew` during a session: the session completes, the next one too, /health follows."""
    import httpx

    socket_path = tmp_path / "api.sock"
    config_file = provisioned_config_file(
        verifier, tmp_path, extra=f'[reader]\nkind = "zfm"\nport = "{zfm_sim.port}"\n[api]\nsocket = "{socket_path}"\n'
    )
    daemon = start_agent_daemon(config_file)
    api = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://agent", timeout=30)
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        before = api.get("/health").json()
        assert before["identity"] == "ok", before

        def session(*args: str, placements: list[tuple[int, int]], on_first_place=None) -> tuple[int, str]:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", *args, "--config", str(config_file)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            lines = []
            for line in proc.stdout:  # the person at the terminal
                lines.append(line)
                if "Place" in line:
                    if on_first_place is not None:
                        on_first_place()
                        on_first_place = None
                    finger, impression = placements.pop(0) if len(placements) > 1 else placements[0]
                    zfm_sim.place(finger=finger, impression=impression)
                elif "Lift" in line:
                    zfm_sim.lift()
            proc.stdout.close()
            return proc.wait(60), "".join(lines)

        code, out = session(
            "enroll", "--subject", "rita", "--captures", "2", placements=[(0, 0), (0, 1), (5, 0), (5, 1)]
        )
        assert code == 0 and "enrolled rita" in out, out
        code, out = session("verify", "--subject", "rita", placements=[(0, 2), (5, 2)])  # first use: a step-up
        assert code == 0 and "accept" in out, out

        renewed: list[subprocess.CompletedProcess[str]] = []

        def renew_now() -> None:  # the installer renews while a person stands at the sensor
            renewed.append(agent_cli("renew", "--config", str(config_file)))

        code, out = session("verify", "--subject", "rita", placements=[(0, 3)], on_first_place=renew_now)
        assert renewed[0].returncode == 0, renewed[0].stderr
        old_serial, new_serial = renewed[0].stdout.split("serial ", 1)[1].split(",")[0].split(" -> ")
        assert code == 0 and "accept" in out, out  # the session in flight was not dropped
        code, out = session("verify", "--subject", "rita", placements=[(5, 3)])  # and the next one works
        assert code == 0 and "accept" in out, out
        code, out = session("identify", placements=[(0, 4)])  # item 10: who, in words
        assert code == 0 and "identified rita (score " in out, out
        after = api.get("/health").json()
        assert after["identity"] == "ok" and after["certificate_serial"] == new_serial != old_serial, after
        # A re-provisioning (with --force) is followed the same way, without a restart.
        token = verifier.new_token("kiosk-cli")
        again = agent_cli(
            "provision",
            "--config",
            str(config_file),
            "--force",
            "--token",
            token,
            "--ca-fingerprint",
            verifier.ca_fingerprint,
        )
        assert again.returncode == 0 and f"certificate serial {new_serial}" in again.stdout, again.stderr
        reprovisioned = api.get("/health").json()
        assert reprovisioned["identity"] == "ok" and reprovisioned["certificate_serial"] not in (old_serial, new_serial)
        code, out = session("verify", "--subject", "rita", placements=[(0, 5)])
        assert code == 0 and "accept" in out, out
        # An identity that cannot sign is reported, not hidden behind "ok".
        for folder in (tmp_path / "state").glob("identity*"):
            if folder.is_symlink():
                folder.unlink()
        broken = api.get("/health").json()
        assert broken["status"] == "degraded" and broken["identity"] == "cannot_sign", broken
        assert "re-provision" in broken["identity_fix"]
    finally:
        api.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)


# ---------------------------------------------------------------- item 5: a refused certificate is not a lost network


def test_an_expired_certificate_is_named_by_health_and_renew(tmp_path) -> None:
    settings = tmp_path / "verifier.toml"
    settings.write_text("cert_days = 0.00004\n")  # about 3.5 s
    with LocalVerifier.running(tmp_path / "pki", extra_args=("--config", str(settings))) as verifier:
        config_file = provisioned_config_file(verifier, tmp_path, "kiosk-exp")
        cert = IdentityStore(tmp_path / "state").load_certificate()
        time.sleep(max(0.0, (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()) + 0.5)
        expiry = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        for command in ("health", "renew"):
            done = agent_cli(command, "--config", str(config_file))
            assert done.returncode == 2, done.stdout
            error, fix = done.stderr.split("fix:", 1)
            assert f"the device certificate expired on {expiry}" in error, done.stderr
            assert "re-provision with a new token" in fix and "network" not in fix


def test_a_certificate_of_another_ca_is_told_apart_from_a_lost_network(verifier, tmp_path) -> None:
    from agent.keystore import InsecureDevFileKeyring, new_kek
    from tests.conftest import TestCA

    foreign = TestCA("foreign", tmp_path / "foreign")
    key, cert = foreign.issue_key_and_cert(["kiosk-foreign"], client=True)
    verifier_ca = x509.load_pem_x509_certificate((verifier.pki_dir / "ca.pem").read_bytes())
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    kek = new_kek()
    InsecureDevFileKeyring(state / "INSECURE-dev-keyring.json").set_password("capture-agent", "capture-agent-kek", kek)
    IdentityStore(state).write(key, cert, [verifier_ca, foreign.cert], kek.encode())
    config_file = write_config_file(
        tmp_path / "agent.toml", device_config(state, verifier.url), '[logging]\nlevel = "error"\n'
    )
    refused = agent_cli("health", "--config", str(config_file))
    assert refused.returncode == 2
    error, fix = refused.stderr.split("fix:", 1)
    assert "refuses the certificate" in error and "issued by CN=foreign" in error, refused.stderr
    assert "re-provision" in fix and "network" not in fix
    # The same device with the verifier gone: that is the network, and said so.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    lost = agent_cli("health", "--config", str(config_file), "--verifier", f"https://127.0.0.1:{closed_port}")
    assert lost.returncode == 2 and "could not be reached" in lost.stderr and "network" in lost.stderr


class BlockingTLSServer:
    """A TLS endpoint on blocking sockets, as nginx is: a failed handshake sends its alert before closing."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with self.ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError) as exc:
                self.failures.append(str(exc))
            finally:
                conn.close()

    def __enter__(self) -> BlockingTLSServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_no_shared_cipher_gets_its_own_message(verifier, tmp_path, make_test_ca) -> None:
    """A proxy offering only suites the agent refuses (nginx: "no shared cipher") is not a refused certificate."""
    config_file = provisioned_config_file(verifier, tmp_path)
    ctx = make_test_ca("proxy").server_context(["127.0.0.1"])
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA")  # CBC, not AEAD: the agent never offers it
    with BlockingTLSServer(ctx) as proxy:
        done = agent_cli("health", "--config", str(config_file), "--verifier", f"https://127.0.0.1:{proxy.port}")
    assert any("NO_SHARED_CIPHER" in failure.upper() for failure in proxy.failures), proxy.failures
    assert done.returncode == 2
    error, fix = done.stderr.split("fix:", 1)
    assert "share no TLS cipher suite" in error, done.stderr
    assert "AEAD" in fix and "re-provision" not in fix


# ---------------------------------------------------------------- item 7: the verifier's command line


def verifier_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "verifier.cli", *args], capture_output=True, text=True, timeout=60)


def test_verifier_cli_prints_dates_and_error_and_fix_lines(verifier, tmp_path) -> None:
    provisioned_config_file(verifier, tmp_path, "kiosk-list")
    listed = verifier_cli("device", "list", "--pki", str(verifier.pki_dir))
    assert listed.returncode == 0, listed.stderr
    row = json.loads(listed.stdout.splitlines()[0])
    assert row["device_id"] == "kiosk-list"
    assert dt.datetime.fromisoformat(row["not_after"]) > dt.datetime.now(dt.UTC), row  # an ISO date, not epoch seconds
    unknown = verifier_cli("device", "revoke", "--pki", str(verifier.pki_dir), "nobody")
    assert unknown.returncode == 2
    assert unknown.stderr.splitlines() == [
        "error: no device 'nobody': none provisioned under that id and no token was issued for it",
        "fix: check the id with `capture-verifier device list --pki DIR`",
    ]
    bad = tmp_path / "verifier.toml"
    bad.write_text("cert_days = 0\n")
    settings = verifier_cli("device", "list", "--pki", str(verifier.pki_dir), "--config", str(bad))
    assert settings.returncode == 2
    assert settings.stderr.splitlines() == ["error: bad value cert_days = 0", "fix: use a number greater than 0"]


def test_serve_on_a_busy_port_says_so_without_a_traceback(verifier, tmp_path) -> None:
    # A PKI of its own: a second server on the running one's folder is refused before it binds (one per database).
    other = tmp_path / "other-pki"
    assert verifier_cli("pki", "init", str(other)).returncode == 0
    busy = verifier_cli("serve", "--pki", str(other), "--port", str(verifier.port))
    assert busy.returncode == 2
    assert "Traceback" not in busy.stderr, busy.stderr
    lines = [line for line in busy.stderr.splitlines() if line.startswith(("error:", "fix:"))]
    assert lines[0].startswith("error: cannot listen on 127.0.0.1:") and "in use" in lines[0], busy.stderr
    assert lines[1].startswith("fix: ") and "--port" in lines[1]


# ---------------------------------------------------------------- item 10: what identify prints


def test_identify_names_the_one_identified_and_what_the_others_are() -> None:
    from agent.commands.sessions import identification_lines

    lines = identification_lines(
        {"candidates": [{"subject": "dan", "score": 0.9972}, {"subject": "ana", "score": 0.0766}], "threshold": 0.0483}
    )
    assert lines[0] == "identified dan (score 0.9972, threshold 0.0483)"
    assert "ana (0.0766)" in lines[1] and "not identified" in lines[1] and "dan" not in lines[1]
    assert identification_lines({"candidates": [], "threshold": 0.0483})[0].startswith("nobody recognised")


# ---------------------------------------------------------------- item 11: logs and discovery name the port and cause


def test_a_reader_fault_in_the_daemon_log_names_the_port_and_the_cause(verifier, tmp_path) -> None:
    missing = tmp_path / "ttyZFM-unplugged"
    config_file = provisioned_config_file(
        verifier,
        tmp_path,
        extra=f'[reader]\nkind = "zfm"\nport = "{missing}"\n[api]\nsocket = "{tmp_path / "api.sock"}"\n',
    )
    config_file.write_text(config_file.read_text().replace('level = "error"', 'level = "info"\nformat = "json"'))
    log_file = tmp_path / "daemon.log"
    with log_file.open("wb") as sink:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(config_file)], stdout=sink, stderr=sink
        )
    try:
        fault = None
        deadline = time.monotonic() + 30
        while fault is None and time.monotonic() < deadline:
            time.sleep(0.1)
            lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
            fault = next((line for line in lines if line.get("type") == "device_fault"), None)
        assert fault is not None, log_file.read_text()
        assert fault["port"] == str(missing) and "does not exist" in fault["error"] and fault["fix"], fault
        assert fault["level"] == "warning"
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)


def test_devices_says_a_port_that_does_not_exist_does_not_exist(tmp_path) -> None:
    missing = tmp_path / "ttyUSB9"
    done = agent_cli("devices", "--only-named", "--port", str(missing))
    assert done.returncode == 1, "a port asked for by name and not there fails a script's `devices --port P && ...`"
    block = done.stdout.split(str(missing), 1)[1].split("\n[", 1)[0]
    assert "does not exist" in block and "ls /dev/ttyUSB*" in block, done.stdout
    assert "dialout" not in block and "capture-readers" not in block, "not a permission problem"
    assert agent_cli("devices", "--only-named", "--camera", str(tmp_path / "video9")).returncode == 1


def test_devices_shows_a_camera_url_it_refuses_without_a_traceback_or_its_password() -> None:
    """A password with an unencoded / (``user:1234/5678@``): `devices --camera` printed a traceback (naming the
    URL was a CameraSource.parse that raised); now a finding with the fix, and exit 1 as for any unusable camera."""
    url = "http://user:1234/5678@127.0.0.1/x"
    for extra in ((), ("--json",)):
        done = agent_cli("devices", "--only-named", "--camera", url, *extra)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stderr and "5678" not in done.stdout + done.stderr, done.stderr
        assert "http://***@127.0.0.1/x" in done.stdout and "percent-encode" in done.stdout, done.stdout


# ---------------------------------------------------------------- items 12, 14: the simulator says how to pick people


def simulator_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulators.cli", *args], capture_output=True, text=True, timeout=90, input=stdin
    )


def test_simulator_help_keeps_its_command_list_and_says_how_to_pick_people() -> None:
    for args in (("--help",), ("zfm", "--help")):
        shown = simulator_cli(*args).stdout
        lines = shown.splitlines()
        assert any(line.strip().startswith("lift") and "take it off" in line for line in lines), shown
        assert any(line.strip().startswith("list [COUNT]") for line in lines), shown
        assert "ana = fingers 0 and 1" in " ".join(shown.split()), shown
    assert "--list-fingers" in simulator_cli("zfm", "--help").stdout


def test_the_simulator_lists_its_fingers(tmp_path) -> None:
    import cv2
    import numpy as np

    listed = simulator_cli("zfm", "--list-fingers", "--count", "2")
    assert listed.returncode == 0, listed.stderr
    fingers = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [f["finger"] for f in fingers] == [0, 1] and all(f["class"] and f["minutiae"] > 0 for f in fingers)
    assert "synthetic_finger" not in listed.stderr  # each finger once, on stdout: no debug line repeating it
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("1_1.tif", "1_2.tif", "4_1.tif"):
        cv2.imwrite(str(folder / name), np.full((64, 64), 200, np.uint8))
    from_folder = simulator_cli("zfm", "--images", str(folder), "--list-fingers")
    assert [json.loads(line) for line in from_folder.stdout.splitlines()] == [
        {"finger": 1, "impressions": [1, 2]},
        {"finger": 4, "impressions": [1]},
    ]
    # While serving: a `list` line on standard input answers on stdout, after the listening line.
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "zfm", "--images", str(folder), "--link", str(tmp_path / "tty")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert json.loads(proc.stdout.readline())["event"] == "listening"
        proc.stdin.write("list\n")
        proc.stdin.flush()
        answer = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert answer == [
            {"event": "finger", "finger": 1, "impressions": [1, 2]},
            {"event": "finger", "finger": 4, "impressions": [1]},
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def test_make_says_what_it_installs_before_the_long_silent_step() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]
    planned = subprocess.run(
        [make, "-n", "-B", ".venv/.installed"], cwd=root, capture_output=True, text=True, timeout=60
    ).stdout.splitlines()
    install = next(i for i, line in enumerate(planned) if "pip install" in line and "-e" in line)
    said = " ".join(line for line in planned[:install] if line.startswith("echo"))
    assert "installing the project and its dependencies" in said and "minutes" in said, planned


def test_every_installer_command_describes_itself_in_help() -> None:
    expected = {
        "doctor": "Each failed check prints its fix",
        "renew": "picks it up before its next request",
        "health": "/v1/health",
        "run": "One daemon per state directory",
        "devices": "Exit 1 when a --port or --camera named here is not usable",  # had no description
        "enroll": "Exit 0 enrolled",
        "verify": "Exit 0 accepted, 1 refused",
        "identify": "Exit 0 identified, 1 nobody recognised",
    }
    for command, words in expected.items():
        shown = agent_cli(command, "--help")
        assert shown.returncode == 0
        assert words in " ".join(shown.stdout.split()), (command, shown.stdout)
        assert "--config" in shown.stdout, "the global options are listed after the command too"


def test_a_token_typed_as_an_argument_is_taken_with_a_warning_naming_standard_input(tmp_path) -> None:
    """The README keeps the token out of command lines; one typed there was taken without a word."""
    typed = agent_cli("provision", "--state-dir", str(tmp_path / "state"), "--verifier", "https://127.0.0.1:9",
                      "--token", "abc", "--ca-fingerprint", "ab" * 32)
    warning = next(line for line in typed.stderr.splitlines() if line.startswith("warning: "))
    assert "every local user can read" in warning and "printf '%s\\n' TOKEN |" in warning, warning
    assert warning.endswith("--token -` (printf is built into the shell)"), warning
    assert typed.returncode == 2 and "abc" not in typed.stderr.replace(warning, ""), "the token is not repeated"
    piped = agent_cli("provision", "--state-dir", str(tmp_path / "state"), "--verifier", "https://127.0.0.1:9",
                      "--token", "-", "--ca-fingerprint", "ab" * 32, stdin="abc\n")
    assert piped.returncode == 2 and "warning: the token" not in piped.stderr, piped.stderr


def test_what_enroll_prints_names_what_was_stored() -> None:
    """A match-on-sensor enrollment, whose answer counts no templates, printed "(None templates)"."""
    from agent.commands.sessions import enrollment_line

    finger = {"type": "result", "operation": "enroll", "subject": "ana", "group": "staff", "templates": 6}
    face = {**finger, "modality": "face", "templates": 3}
    sensor = {"type": "result", "operation": "enroll", "subject": "eve", "group": "default",
              "reader": {"driver": "virtual_device", "device": "Virtual device for debugging"},
              "assurance": "match-on-sensor"}
    assert enrollment_line(finger) == "enrolled ana in group staff (6 templates)"
    assert enrollment_line(face) == "enrolled ana in group staff (3 face templates)"
    assert enrollment_line(sensor) == (
        "enrolled eve in group default (a print kept on the reader's sensor: match-on-sensor)"
    )
