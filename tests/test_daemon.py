"""The daemon speaks the systemd notify protocol on a real unix datagram socket."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.config import load_config, parse_config
from agent.daemon import OUTBOX_FILE, AgentDaemon
from agent.errors import AgentError
from agent.identity import IdentityStore
from agent.keystore import load_kek
from agent.outbox import Outbox
from agent.sdnotify import watchdog_interval_s


@pytest.fixture
def provisioned_config_file(tmp_path: Path, make_test_ca) -> Path:
    ca = make_test_ca("device-ca")
    state = tmp_path / "state"
    config = parse_config({"agent": {"state_dir": str(state)}, "keyring": {"backend": "file-insecure-dev"}})
    kek = load_kek(config, create=True)
    IdentityStore(state).write(*ca.issue_key_and_cert(["kiosk-1"], client=True), [ca.cert], kek.encode())
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{state}"\n[keyring]\nbackend = "file-insecure-dev"\n'
        '[verifier]\nurl = "https://127.0.0.1:9"\n'
    )
    return path


def read_messages(sock: socket.socket, seconds: float) -> list[dict[str, str]]:
    """Every notification that arrives within ``seconds`` (for asserting that one does not come)."""
    return read_until(sock, lambda messages: False, seconds)


def read_until(sock: socket.socket, enough, seconds: float = 30.0) -> list[dict[str, str]]:
    """Notifications until ``enough(messages)`` holds or ``seconds`` pass.

    The bound is generous (a daemon starting on a loaded CI machine may take several
    seconds to import its stack) and costs nothing when the message comes at once.
    """
    end = time.monotonic() + seconds
    out: list[dict[str, str]] = []
    while time.monotonic() < end and not enough(out):
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        out.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
    return out


def _has(key: str, value: str = "1"):
    return lambda messages: any(m.get(key) == value for m in messages)


def _pings_after_ready(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    ready = next((i for i, m in enumerate(messages) if m.get("READY") == "1"), None)
    return [] if ready is None else [m for m in messages[ready:] if m.get("WATCHDOG") == "1"]


def test_ready_watchdog_and_stopping(provisioned_config_file: Path, notify_socket) -> None:
    sock, path = notify_socket
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "--config", str(provisioned_config_file), "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # READY, then at least 5 pings (one per 100 ms, half of WATCHDOG_USEC: no timing assertion)
        messages = read_until(sock, lambda ms: len(_pings_after_ready(ms)) >= 5)
        ready = [i for i, m in enumerate(messages) if m.get("READY") == "1"]
        assert ready, f"no READY=1 in {messages}; stderr: {proc.stderr.read1() if proc.poll() else ''}"
        assert "kiosk-1" in messages[ready[0]]["STATUS"]
        assert len(_pings_after_ready(messages)) >= 5, "the watchdog is pinged once the daemon is ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert _has("STOPPING")(read_until(sock, _has("STOPPING"), 5.0))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_the_ready_status_names_a_device_that_could_not_be_set_up(
    provisioned_config_file: Path, notify_socket, tmp_path: Path
) -> None:
    """The READY status (what `systemctl status` shows) listed only the devices made at start: a kiosk whose only
    reader was a USB one with libfprint missing said "no device usable", its reader named nowhere."""
    sock, path = notify_socket
    (tmp_path / "hidden" / "gi").mkdir(parents=True)
    (tmp_path / "hidden" / "gi" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    with provisioned_config_file.open("a") as config:
        config.write('[[device]]\nkind = "fprint"\nname = "usb"\n')
    env = {**os.environ, "NOTIFY_SOCKET": str(path),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "hidden"), os.getcwd()])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "--config", str(provisioned_config_file), "run"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        messages = read_until(sock, _has("READY"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    status = next(m["STATUS"] for m in messages if m.get("READY") == "1")
    assert status.endswith("usb not set up (/health says why and the fix)"), status


def test_no_ready_without_an_identity(tmp_path: Path, notify_socket) -> None:
    sock, path = notify_socket
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "{tmp_path / "empty"}"\n[keyring]\nbackend = "file-insecure-dev"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "--config", str(config), "run"],
        env={**os.environ, "NOTIFY_SOCKET": str(path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "fix:" in proc.stderr
    assert not any(m.get("READY") == "1" for m in read_messages(sock, 0.3))
    # Started before provisioning: it says so, and makes no state directory (it used to leave one with agent.lock).
    assert f"no device identity in {tmp_path / 'empty'}" in proc.stderr and "capture-agent provision" in proc.stderr
    assert not (tmp_path / "empty").exists()
    # A state_dir under a file: the store's typed error, not a NotADirectoryError traceback.
    config.write_text(f'[agent]\nstate_dir = "{config}/state"\n[keyring]\nbackend = "file-insecure-dev"\n')
    under_a_file = subprocess.run(
        [sys.executable, "-m", "agent.cli", "--config", str(config), "run"], capture_output=True, text=True, timeout=30
    )
    assert under_a_file.returncode == 2 and "Traceback" not in under_a_file.stderr, under_a_file.stderr
    assert "is a file, not a directory" in under_a_file.stderr
    # the file named is the one that is: the config file on the way, not "state", which is not there at all
    assert f"state_dir {config}/state is inside {config}, which is a file" in under_a_file.stderr, under_a_file.stderr


def test_a_blocked_main_loop_stops_the_watchdog_pings(
    provisioned_config_file: Path, notify_socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pings come from the main loop itself: block it and systemd stops hearing them."""
    import asyncio
    import threading

    from agent.config import load_config
    from agent.daemon import AgentDaemon

    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    arrivals: list[float] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            try:
                if b"WATCHDOG=1" in sock.recv(4096):
                    arrivals.append(time.monotonic())
            except TimeoutError:
                continue

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()

    async def scenario() -> tuple[float, float]:
        daemon = AgentDaemon(load_config(provisioned_config_file), str(provisioned_config_file))
        await daemon.start()
        await asyncio.sleep(1.0)
        blocked_from = time.monotonic()
        time.sleep(1.5)  # the main loop stuck on purpose, as a hung driver call would
        blocked_to = time.monotonic()
        await asyncio.sleep(1.0)
        await daemon.stop()
        return blocked_from, blocked_to

    blocked_from, blocked_to = asyncio.run(scenario())
    done.set()
    listener.join(2)
    before = [t for t in arrivals if t < blocked_from]
    during = [t for t in arrivals if blocked_from + 0.05 < t < blocked_to]
    after = [t for t in arrivals if t > blocked_to]
    assert len(before) >= 5 and len(after) >= 5, "pings flow while the loop runs"
    assert during == [], "no ping while the loop is blocked"


def test_sighup_reloads_and_a_broken_config_is_refused(provisioned_config_file: Path, notify_socket) -> None:
    from agent.config import load_config
    from agent.keystore import load_kek
    from agent.outbox import Outbox

    sock, path = notify_socket
    moved = "https://127.0.0.1:10"  # typed on the command line: a reload must keep it, not the file's :9
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "--config", str(provisioned_config_file), "run", "--verifier", moved],
        env={**os.environ, "NOTIFY_SOCKET": str(path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _has("READY")(read_until(sock, _has("READY")))
        good = provisioned_config_file.read_text()
        provisioned_config_file.write_text(good + "[audit]\nheartbeat_s = 600\n")
        proc.send_signal(signal.SIGHUP)
        assert _has("RELOADING")(read_until(sock, _has("RELOADING"), 10.0))
        provisioned_config_file.write_text(good + "[audit]\nheartbeat = 600\n")  # unknown key
        proc.send_signal(signal.SIGHUP)
        refused_status = lambda ms: any("config reload refused" in m.get("STATUS", "") for m in ms)  # noqa: E731
        assert refused_status(read_until(sock, refused_status, 10.0))
        assert proc.poll() is None, "a broken config does not stop a running daemon"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    provisioned_config_file.write_text(good)
    config = load_config(provisioned_config_file)
    outbox = Outbox(config.agent.state_dir / "outbox.sqlite", load_kek(config))
    events = outbox.pending(100)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "agent_started" and kinds[-1] == "agent_stopping"
    assert kinds.index("config_reloaded") < kinds.index("config_reload_refused")
    reloaded = next(e["data"] for e in events if e["type"] == "config_reloaded")
    assert reloaded["verifier"] == moved, "SIGHUP dropped the command line's --verifier"
    refused = next(e["data"] for e in events if e["type"] == "config_reload_refused")
    assert "heartbeat" in refused["error"] and "heartbeat_s" in refused["fix"]


def test_a_reader_unplugged_and_plugged_back_is_reopened_and_reported(
    provisioned_config_file: Path, zfm_sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from agent.config import load_config
    from agent.daemon import AgentDaemon
    from agent.keystore import load_kek
    from agent.outbox import Outbox

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    provisioned_config_file.write_text(
        provisioned_config_file.read_text()
        + f'[reader]\nkind = "zfm"\nport = "{zfm_sim.port}"\ncheck_interval_s = 0.1\n'
    )
    config = load_config(provisioned_config_file)

    async def scenario() -> str:
        daemon = AgentDaemon(config, str(provisioned_config_file))
        await daemon.start()
        assert daemon.devices is not None
        (reader,) = daemon.devices.devices  # the old [reader] section is one zfm device
        assert reader.connected
        status = reader.status()
        zfm_sim.unplug()
        await asyncio.sleep(0.5)
        assert not reader.connected
        zfm_sim.replug()
        for _ in range(50):  # bounded: up to 5 s
            await asyncio.sleep(0.1)
            if reader.connected:
                break
        assert reader.connected, "reopened once the port came back"
        await daemon.stop()
        return status

    status = asyncio.run(scenario())
    assert status["model"] == "r307" and status["port"] == zfm_sim.port and status["kind"] == "zfm"
    events = Outbox(config.agent.state_dir / "outbox.sqlite", load_kek(config)).pending(100)
    device_events = [e["type"] for e in events if e["type"].startswith("device_")]
    assert device_events == ["device_plugged", "device_unplugged", "device_plugged"]


def test_a_reader_without_a_port_is_a_config_error(tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.errors import ConfigError

    path = tmp_path / "agent.toml"
    path.write_text('[reader]\nkind = "zfm"\n')
    with pytest.raises(ConfigError, match="needs a port"):
        load_config(path)


def test_a_task_that_ends_on_its_own_stops_the_daemon_and_says_why(provisioned_config_file: Path) -> None:
    """Left alone, the daemon would stay "ready" with nobody delivering or renewing: it stops, for systemd."""
    config = load_config(str(provisioned_config_file))
    daemon = AgentDaemon(config, str(provisioned_config_file))

    async def broken() -> None:
        raise RuntimeError("a bug in a loop that should never end")

    async def go() -> None:
        running = asyncio.create_task(daemon.run())
        while daemon.delivery is None and not running.done():  # started far enough to have its tasks
            await asyncio.sleep(0.01)
        daemon.spawn(broken(), "broken")
        await asyncio.wait_for(running, 30)

    with pytest.raises(AgentError, match="broken task stopped: RuntimeError") as info:
        asyncio.run(go())
    assert "Restart=on-failure" in info.value.fix
    box = Outbox(config.agent.state_dir / OUTBOX_FILE, load_kek(config))
    failed = [e["data"] for e in box.pending(100) if e["type"] == "agent_task_failed"]  # verifier down: still queued
    box.close()
    assert failed == [{"task": "broken", "error": "RuntimeError: a bug in a loop that should never end"}]


def test_a_daemon_that_fails_to_start_closes_its_devices_and_says_why(
    provisioned_config_file: Path, camera_sim, tmp_path: Path
) -> None:
    """The camera is open when the local API's group turns out not to exist: the error and its fix, exit 2."""
    config = provisioned_config_file.read_text()
    provisioned_config_file.write_text(
        config + f'[api]\nsocket = "{tmp_path / "api.sock"}"\ngroup = "no-such-group-for-this-test"\n'
        f'[[device]]\nkind = "camera"\nsource = "{camera_sim.url}"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "--config", str(provisioned_config_file), "run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "no-such-group-for-this-test" in done.stderr and "fix:" in done.stderr
    assert "Traceback" not in done.stderr and "FATAL" not in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "api.sock").exists()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("200000", None, 0.1),
        ("200000", "{own}", 0.1),
        ("200000", "1", None),  # another process's watchdog
        ("2\u00b2", None, None),  # "²" passes str.isdigit() but not int()
        ("-5", None, None),
        ("0", None, None),
        ("200000", "\u00b9", 0.1),  # an unreadable pid names no other process
    ],
)
def test_the_watchdog_period_is_read_from_ascii_digits_only(monkeypatch, usec, pid, expected) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "{own}" else pid)
    assert watchdog_interval_s() == expected


def test_a_state_directory_others_may_enter_is_closed_at_start_and_said(provisioned_config_file: Path) -> None:
    """`doctor` failed a 0755 state directory, but the daemon ran on it without a word."""
    import stat

    from structlog.testing import capture_logs

    config = load_config(str(provisioned_config_file))
    state = config.agent.state_dir
    os.chmod(state, 0o755)  # noqa: S103 - the fault under test

    async def start_and_stop() -> None:
        daemon = AgentDaemon(config, str(provisioned_config_file))
        try:
            await daemon.start()
        finally:
            await daemon.stop()

    with capture_logs() as logs:
        asyncio.run(start_and_stop())
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    said = [entry for entry in logs if entry["event"] == "state_dir_mode_tightened"]
    assert len(said) == 1 and said[0]["was"] == "755" and said[0]["log_level"] == "warning", logs


def _audit_kinds_while_running(daemon: AgentDaemon, enough, settle_s: float = 0.0) -> list[str]:
    """Start ``daemon``, wait (30 s at most) until ``enough(kinds)`` of the audit events it recorded, then
    ``settle_s`` more, stop it; the kinds (read from its log: delivery empties the outbox as it goes)."""
    from structlog.testing import capture_logs

    def kinds() -> list[str]:
        return [entry["type"] for entry in logs if entry["event"] == "audit_event"]

    async def scenario() -> None:
        await daemon.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not enough(kinds()):
                await asyncio.sleep(0.1)
            await asyncio.sleep(settle_s)
        finally:
            await daemon.stop()

    with capture_logs() as logs:
        asyncio.run(scenario())
    return kinds()


def _renewal_ended(kinds: list[str]) -> bool:
    return bool({"certificate_renewal_held", "certificate_renewal_failed"} & set(kinds))


def test_a_clock_that_runs_ahead_gets_one_renewal_then_a_hold_not_a_loop(provisioned, tmp_path: Path) -> None:
    """A device clock 40 days ahead (a Pi with no RTC battery, before NTP) found every fresh certificate due at
    once: the daemon renewed in a loop until the verifier's renewals_per_hour answered 429, then every 30 s."""
    import datetime as dt

    from agent.devstack import write_config_file

    config, _ = provisioned
    config_file = write_config_file(tmp_path / "agent.toml", config)
    daemon = AgentDaemon(load_config(config_file), str(config_file))
    ahead = dt.timedelta(days=40)
    daemon.clock = lambda: dt.datetime.now(dt.UTC) + ahead

    kinds = _audit_kinds_while_running(daemon, _renewal_ended, settle_s=1.0)  # a loop would renew again within 1 s
    assert kinds.count("certificate_renewed") == 1, kinds
    assert "certificate_renewal_held" in kinds and "certificate_renewal_failed" not in kinds, kinds


def test_a_certificate_this_loop_renewed_is_renewed_again_when_it_falls_due(
    provisioned, tmp_path: Path, monkeypatch
) -> None:
    """The clock-ahead hold must only catch a certificate due the moment it was issued: one that was first seen
    not yet due (a sane clock) and falls due later is renewed, or the daemon renewed once per run and then let
    its certificate expire behind a "clock runs ahead" hold."""
    import datetime as dt

    import agent.daemon as daemon_module
    from agent.devstack import write_config_file

    config, first = provisioned
    config_file = write_config_file(tmp_path / "agent.toml", config)
    daemon = AgentDaemon(load_config(config_file), str(config_file))
    monkeypatch.setattr(daemon_module, "LONG_SLEEP_CAP_S", 0.05)  # the schedule is looked at again at once
    ahead = dt.timedelta(days=40)  # past two thirds of any lifetime the dev verifier issues
    looks: dict[str, int] = {}

    def clock() -> dt.datetime:
        """Due for the provisioned certificate; for the first renewed one, not due at first, then due (time passed)."""
        assert daemon.client is not None
        serial = daemon.client.identity.serial_hex
        looks[serial] = looks.get(serial, 0) + 1
        if serial == first.serial_hex:
            return dt.datetime.now(dt.UTC) + ahead
        if len(looks) == 2 and looks[serial] > 1:  # the first renewed one, looked at a second time
            return dt.datetime.now(dt.UTC) + ahead
        return dt.datetime.now(dt.UTC)

    daemon.clock = clock
    kinds = _audit_kinds_while_running(daemon, lambda k: k.count("certificate_renewed") >= 2 or _renewal_ended(k))
    assert "certificate_renewal_held" not in kinds, kinds
    assert kinds.count("certificate_renewed") == 2, kinds


def test_a_reload_to_another_verifier_url_names_the_one_in_use_and_the_restart(provisioned, tmp_path: Path) -> None:
    """SIGHUP does not move the running client to a new verifier URL, yet `config_reloaded` named the new URL as
    the verifier: an audit trail saying the device talks to a verifier it does not talk to."""
    from structlog.testing import capture_logs

    from agent.devstack import write_config_file

    config, _ = provisioned
    config_file = write_config_file(tmp_path / "agent.toml", config)
    started = load_config(config_file)
    moved = "https://127.0.0.1:10"
    daemon = AgentDaemon(started, str(config_file), loader=lambda: started.with_overrides(verifier={"url": moved}))

    async def scenario() -> None:
        await daemon.start()
        try:
            daemon.reload()
        finally:
            await daemon.stop()

    with capture_logs() as logs:
        asyncio.run(scenario())
    reloaded = [e for e in logs if e["event"] == "audit_event" and e["type"] == "config_reloaded"]
    assert len(reloaded) == 1, logs
    assert reloaded[0]["verifier"] == started.verifier.url != moved
    assert reloaded[0]["verifier_after_restart"] == moved and "restart" in reloaded[0]["fix"]


def test_a_reload_names_the_changes_that_wait_for_a_restart_and_keeps_them_as_they_run(
    provisioned, tmp_path: Path
) -> None:
    """A [[device]] added to the file and a SIGHUP gave `config_reloaded` and nothing else: the installer read
    the camera as taken on, and the daemon went on without it. Devices, the local API, the outbox's bounds are
    made at start: a reload names each one changed as waiting for a restart, and applies what it can."""
    from dataclasses import replace

    from structlog.testing import capture_logs

    from agent.config import DeviceSection
    from agent.devstack import write_config_file

    config, _ = provisioned
    config_file = write_config_file(tmp_path / "agent.toml", config)
    started = load_config(config_file)
    edited = replace(
        started.with_overrides(
            api={"socket": str(tmp_path / "other.sock")},
            audit={"batch_size": started.audit.batch_size + 1},
            sessions={"finger_timeout_s": started.sessions.finger_timeout_s + 5},
        ),
        device=(DeviceSection(kind="camera", name="door", source=str(tmp_path / "door.mp4")),),
    )
    daemon = AgentDaemon(started, str(config_file), loader=lambda: edited)

    async def scenario() -> None:
        await daemon.start()
        try:
            daemon.reload()
            daemon.reload()  # still waiting: the second reload says so too
        finally:
            await daemon.stop()

    with capture_logs() as logs:
        asyncio.run(scenario())
    reloaded = [e for e in logs if e["event"] == "audit_event" and e["type"] == "config_reloaded"]
    assert len(reloaded) == 2, logs
    for event in reloaded:
        assert event["after_restart"] == ["[[device]]", "[api]", "[audit] batch_size"], event
        assert "restart" in event["fix"]
        assert "verifier_after_restart" not in event
    assert daemon.config.device == started.device and daemon.config.api == started.api  # as they run
    assert daemon.config.audit.batch_size == started.audit.batch_size
    assert daemon.config.sessions == edited.sessions  # applied from the next session, as before


def test_a_full_disk_keeps_the_daemon_up_refusing_sessions_until_the_audit_trail_can_be_stored(
    tmp_path: Path, small_filesystem: Path, make_test_ca, zfm_sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant 5 on a full SD card: no attempt that cannot be audited, and no crash loop.

    Was: the heartbeat's failed write stopped the daemon (systemd restarts it, and its start fails the same
    way), the error hidden behind "cannot rollback - no transaction is active".
    """
    import httpx

    from tests.conftest import fill_filesystem

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    ca = make_test_ca("device-ca")
    state, socket_path = small_filesystem / "state", tmp_path / "run" / "api.sock"
    text = (f'[agent]\nstate_dir = "{state}"\n[keyring]\nbackend = "file-insecure-dev"\n'
            '[verifier]\nurl = "https://127.0.0.1:9"\n[audit]\nheartbeat_s = 0.05\n'
            f'[api]\nsocket = "{socket_path}"\n[reader]\nkind = "zfm"\nport = "{zfm_sim.port}"\n')
    (tmp_path / "agent.toml").write_text(text)
    config = load_config(tmp_path / "agent.toml")
    kek = load_kek(config, create=True)
    IdentityStore(state).write(*ca.issue_key_and_cert(["kiosk-1"], client=True), [ca.cert], kek.encode())

    async def health(kiosk: httpx.AsyncClient, audit: str) -> dict:
        for _ in range(200):  # bounded: 10 s; the next heartbeat finds the disk full (or free again)
            facts = (await kiosk.get("/health")).json()
            if facts.get("audit") == audit:
                return facts
            await asyncio.sleep(0.05)
        raise AssertionError(f"/health never said audit {audit!r}: {facts}")

    async def scenario() -> tuple[dict, httpx.Response, dict, httpx.Response]:
        daemon = AgentDaemon(config, str(tmp_path / "agent.toml"))
        await daemon.start()
        try:
            transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
            async with httpx.AsyncClient(transport=transport, base_url="http://kiosk", timeout=30) as kiosk:
                fill_filesystem(small_filesystem)
                full = await health(kiosk, "not_stored")
                last_stored = daemon.outbox.head().seq
                # an event carrying its own error and fix (a device fault) clashed with the log line's and raised
                faulted = daemon.record("device_fault", {"device": "reader", "error": "it broke", "fix": "replug"})
                refused = await kiosk.post("/sessions", json={"operation": "identify"})
                assert daemon.failure is None and all(not task.done() for task in daemon._tasks), "still running"
                (small_filesystem / "filler").unlink()
                freed = await health(kiosk, "ok")
                started = await kiosk.post("/sessions", json={"operation": "identify"})
                await kiosk.delete(f"/sessions/{started.json()['id']}")
        finally:
            await daemon.stop()
        return full, refused, freed, started, faulted, last_stored

    full, refused, freed, started, faulted, last_stored = asyncio.run(scenario())
    assert faulted is False
    assert full["status"] == "degraded" and "database or disk is full" in full["audit_error"]
    assert "df -h" in full["audit_fix"]
    assert refused.status_code == 503 and "no session while the audit trail cannot be stored" in refused.json()["error"]
    assert "df -h" in refused.json()["fix"]
    assert freed["status"] == "ok" and "audit_error" not in freed
    assert started.status_code == 201
    box = Outbox(state / OUTBOX_FILE, load_kek(config))
    events = box.pending(1000)
    box.close()
    recovered = [e["data"] for e in events if e["type"] == "audit_storage_recovered"]
    assert len(recovered) == 1 and recovered[0]["events_not_stored"] >= 2  # a heartbeat or more, the device fault
    after = next(e for e in events if e["seq"] == last_stored + 1)
    assert after["type"] == "audit_storage_recovered", "the trail says the gap first, then what came after it"
