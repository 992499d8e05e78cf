"""A daemon started where its audit outbox cannot be written: up and degraded, not a systemd restart loop.

Real parts throughout: a `capture-agent run` process, a tmpfs filled or remounted read-only (the conftest's
``small_filesystem``, which needs a user that may mount: skipped elsewhere), the local API over its unix socket,
the systemd notify protocol on a datagram socket, and the outbox file read back after the daemon stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import agent.daemon as daemon_module
from agent.config import AgentConfig, load_config
from agent.daemon import OUTBOX_FILE, AgentDaemon
from agent.errors import AuditStorageError
from agent.identity import IdentityStore
from agent.keystore import load_kek
from agent.outbox import Outbox
from agent.statelock import StateDirLocked, hold_state_dir
from tests.conftest import fill_filesystem


def _remount(mount_point: Path, mode: str) -> None:
    subprocess.run([shutil.which("mount") or "mount", "-o", f"remount,{mode}", str(mount_point)], check=True)


def _free(mount_point: Path) -> None:
    (mount_point / "filler").unlink()


# How each fault is made and mended, and a word its fix must hold (Outbox._fix).
FAULTS: dict[str, tuple[Callable[[Path], None], Callable[[Path], None], str]] = {
    "full": (fill_filesystem, _free, "df -h"),
    "read-only": (lambda fs: _remount(fs, "ro"), lambda fs: _remount(fs, "rw"), "findmnt -T"),
}


def _ready_status(sock: socket.socket, daemon: subprocess.Popen[bytes], log: Path) -> str:
    """The STATUS= sent with READY=1 (30 s at most: a loaded machine imports the daemon's stack slowly)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert daemon.poll() is None, f"the daemon exited ({daemon.returncode}): {log.read_text()[-2000:]}"
        try:
            fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())
        except TimeoutError:
            continue
        if fields.get("READY") == "1":
            return fields.get("STATUS", "")
    raise AssertionError(f"no READY=1 within 30 s: {log.read_text()[-2000:]}")


def _health_until(kiosk: httpx.Client, audit: str) -> dict:
    """/health once it says ``audit`` (each call retries the outbox); 10 s at most."""
    facts: dict = {}
    for _ in range(200):
        facts = kiosk.get("/health").json()
        if facts.get("audit") == audit:
            return facts
        time.sleep(0.05)
    raise AssertionError(f"/health never said audit {audit!r}: {facts}")


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_daemon_started_on_an_unwritable_outbox_stays_up_degraded_and_recovers(
    fault: str, tmp_path: Path, small_filesystem: Path, make_test_ca, zfm_sim, notify_socket
) -> None:
    """The outbox could not be opened at start (a full SD card, one remounted read-only): the daemon exited
    with the error, systemd restarted it into the same failure, and /health was unreachable the whole time.

    Now it starts degraded, as when the disk fails while it runs: /health says the audit is not stored with
    the fix, sessions are refused (503, the fix), READY's status says it; once the disk is mended the outbox
    opens, the trail resumes with `audit_storage_recovered` (the count of events not stored), and events
    queued before the fault are still there.
    """
    make, mend, fix_word = FAULTS[fault]
    sock, notify_path = notify_socket
    state, socket_path = small_filesystem / "state", tmp_path / "run" / "api.sock"
    config_file = tmp_path / "agent.toml"
    config_file.write_text(
        f'[agent]\nstate_dir = "{state}"\n[keyring]\nbackend = "file-insecure-dev"\n'
        '[verifier]\nurl = "https://127.0.0.1:9"\n[logging]\nlevel = "info"\nformat = "json"\n'
        f'[api]\nsocket = "{socket_path}"\n[reader]\nkind = "zfm"\nport = "{zfm_sim.port}"\n'
    )
    config = load_config(config_file)
    kek = load_kek(config, create=True)
    ca = make_test_ca("device-ca")
    IdentityStore(state).write(*ca.issue_key_and_cert(["kiosk-1"], client=True), [ca.cert], kek.encode())
    box = Outbox(state / OUTBOX_FILE, kek)
    box.record("queued_earlier")  # undelivered (no verifier): must survive the degraded start
    box.close()
    make(small_filesystem)

    log = tmp_path / "daemon.log"
    with open(log, "wb") as err:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "--config", str(config_file), "run"],
            stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
        )
    try:
        ready = _ready_status(sock, daemon, log)
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://kiosk",
                          timeout=30) as kiosk:
            down = _health_until(kiosk, "not_stored")
            refused = kiosk.post("/sessions", json={"operation": "identify"})
            mend(small_filesystem)
            back = _health_until(kiosk, "ok")
            started = kiosk.post("/sessions", json={"operation": "identify"})
            kiosk.delete(f"/sessions/{started.json()['id']}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(20)
        except subprocess.TimeoutExpired:  # hung: killed, or it outlives the test holding the mount busy
            daemon.kill()
            daemon.wait()
            raise
    assert code == 0, log.read_text()[-2000:]

    assert ready.startswith("degraded: the audit trail cannot be stored, no session is taken") and fix_word in ready
    assert "; ready: device" in ready  # what is ready follows the problem
    assert down["status"] == "degraded" and fix_word in down["audit_fix"], down
    assert refused.status_code == 503 and "audit trail cannot be stored" in refused.json()["error"]
    assert fix_word in refused.json()["fix"]
    assert "audit_error" not in back and started.status_code == 201, (back, started.text)

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    said = [e for e in lines if e["event"] == "audit_outbox_not_opened"]
    assert len(said) == 1 and said[0]["level"] == "error" and fix_word in said[0]["fix"], said
    missed = [e["type"] for e in lines if e["event"] == "audit_event_not_stored"]
    assert "agent_started" in missed, missed

    box = Outbox(state / OUTBOX_FILE, kek)
    events = box.pending(1000)
    box.close()
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["queued_earlier", "audit_storage_recovered"], kinds
    assert events[1]["data"]["events_not_stored"] == len(missed)
    assert "session_finished" in kinds and kinds[-1] == "agent_stopping", kinds


def _provisioned_without_devices(tmp_path: Path, state: Path, make_test_ca) -> tuple[AgentConfig, str]:
    """A config (no device: no local API) and an identity in ``state``; the KEK, for reading the outbox."""
    config_file = tmp_path / "agent.toml"
    config_file.write_text(
        f'[agent]\nstate_dir = "{state}"\n[keyring]\nbackend = "file-insecure-dev"\n'
        '[verifier]\nurl = "https://127.0.0.1:9"\n'
    )
    config = load_config(config_file)
    kek = load_kek(config, create=True)
    ca = make_test_ca("device-ca")
    IdentityStore(state).write(*ca.issue_key_and_cert(["kiosk-1"], client=True), [ca.cert], kek.encode())
    return config, kek


def test_an_outbox_that_could_not_be_opened_is_retried_on_a_timer(
    tmp_path: Path, small_filesystem: Path, make_test_ca, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No event and no /health call to prompt a retry (a kiosk idle overnight, the heartbeat hourly): the
    trail resumes by itself once the disk has room, its first event saying what was not stored."""
    monkeypatch.setattr(daemon_module, "AUDIT_RETRY_S", 0.05)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    state = small_filesystem / "state"
    config, kek = _provisioned_without_devices(tmp_path, state, make_test_ca)
    fill_filesystem(small_filesystem)
    daemon = AgentDaemon(config)

    async def scenario() -> tuple[bool, AuditStorageError | None]:
        await daemon.start()
        try:
            opened_at_start = daemon.outbox is not None
            _free(small_filesystem)
            for _ in range(200):  # 10 s at most
                if daemon.audit_fault is None:
                    break
                await asyncio.sleep(0.05)
            return opened_at_start, daemon.audit_fault
        finally:
            await daemon.stop()

    opened_at_start, fault = asyncio.run(scenario())
    assert opened_at_start is False and fault is None
    box = Outbox(state / OUTBOX_FILE, kek)
    events = box.pending(100)
    box.close()
    assert [e["type"] for e in events] == ["audit_storage_recovered", "agent_stopping"]
    assert events[0]["data"] == {"events_not_stored": 1, "repeats_not_stored": 0}  # agent_started


def test_a_lost_summary_of_repeats_is_counted_with_the_failures_it_stood_for(
    tmp_path: Path, small_filesystem: Path, make_test_ca, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `device_fault_repeated` summary the full disk refused counted as one event not stored, though it stood for
    its `repeats` faults, which no other event says: the recovery under-reported the failures the trail lost."""
    monkeypatch.setattr(daemon_module, "AUDIT_RETRY_S", 3600.0)  # only this test's call retries the outbox
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    state = small_filesystem / "state"
    config, kek = _provisioned_without_devices(tmp_path, state, make_test_ca)
    daemon = AgentDaemon(config)
    fault = {"device": "finger", "kind": "zfm", "port": "/dev/ttyUSB0", "error": "no packet", "fix": "check the cable"}

    async def scenario() -> tuple[int, AuditStorageError | None]:
        await daemon.start()
        try:
            assert daemon.record("device_fault", dict(fault))  # stored
            for _ in range(5):
                assert daemon.record("device_fault", dict(fault))  # counted
            fill_filesystem(small_filesystem)
            # the count (5 faults) and the unplug both refused by the full disk
            assert not daemon.record("device_unplugged", {"device": "finger", "kind": "zfm"})
            missed = daemon.events_not_stored
            _free(small_filesystem)
            return missed, daemon.audit_problem()
        finally:
            await daemon.stop()

    missed, fault_after = asyncio.run(scenario())
    assert fault_after is None and missed >= 2
    box = Outbox(state / OUTBOX_FILE, kek)
    events = box.pending(100)
    box.close()
    kinds = [e["type"] for e in events]
    assert kinds.count("device_fault") == 1 and "device_fault_repeated" not in kinds, kinds
    [recovered] = [e["data"] for e in events if e["type"] == "audit_storage_recovered"]
    assert recovered == {"events_not_stored": missed, "repeats_not_stored": 5}
    # every fault accounted for: the one stored, and the five the lost summary stood for
    assert kinds.count("device_fault") + recovered["repeats_not_stored"] == 6


def test_a_damaged_outbox_at_start_still_stops_the_daemon_with_its_fix(tmp_path: Path, make_test_ca) -> None:
    """A damaged file is mended by moving it aside by hand, which no retry does: the start fails as before."""
    state = tmp_path / "state"
    config, _ = _provisioned_without_devices(tmp_path, state, make_test_ca)
    (state / OUTBOX_FILE).write_bytes(b"\xa5" * 8192)
    daemon = AgentDaemon(config)
    with pytest.raises(AuditStorageError, match="not a database") as raised:
        asyncio.run(daemon.run())
    assert raised.value.cause == "damaged" and "move it aside" in raised.value.fix


@pytest.mark.parametrize("lock_file_there", [True, False])
def test_two_daemons_on_a_read_only_state_directory_still_exclude_each_other(
    tiny_filesystem: Path, lock_file_there: bool
) -> None:
    """The lock is taken without writing on a read-only disk (the daemon starts degraded there), and still
    holds: on the state directory itself, and on the lock file too when it is there (the one an older daemon,
    which locks the file alone, tries)."""
    state = tiny_filesystem / "state"
    state.mkdir()
    if lock_file_there:
        (state / "agent.lock").write_text("")
    _remount(tiny_filesystem, "ro")
    with hold_state_dir(state):
        with pytest.raises(StateDirLocked, match=f"process {os.getpid()}"), hold_state_dir(state):
            pass
        if lock_file_there:  # as an older daemon takes it: its own descriptor of the file, refused
            older = os.open(state / "agent.lock", os.O_RDONLY)
            try:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(older, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(older)


def test_a_daemon_holding_a_read_only_state_directory_still_excludes_one_started_once_it_is_writable(
    tiny_filesystem: Path,
) -> None:
    """With no lock file to open on a read-only disk the first daemon held the directory alone; once the disk was
    writable again a second one made the file, locked it, and both ran on one outbox."""
    state = tiny_filesystem / "state"
    state.mkdir()
    _remount(tiny_filesystem, "ro")
    with hold_state_dir(state):
        _remount(tiny_filesystem, "rw")
        with pytest.raises(StateDirLocked, match=f"process {os.getpid()}"), hold_state_dir(state):
            pass
    with hold_state_dir(state):  # released: the next daemon takes it, and writes its PID now
        assert (state / "agent.lock").read_text().strip() == str(os.getpid())


def test_a_refusal_names_the_process_that_holds_the_lock_not_a_stale_pid_in_the_file(tiny_filesystem: Path) -> None:
    """On a read-only disk the holder cannot write its PID, so the file still says the one a daemon killed
    before its exit (SIGKILL, a power cut) left there: the refusal named that PID in its fix (`kill PID`), by
    now another process, maybe none of the agent's. The holder is the one the kernel knows holds the lock."""
    state = tiny_filesystem / "state"
    state.mkdir()
    (state / "agent.lock").write_text(f"{os.getppid()}\n")  # a live process that holds nothing
    _remount(tiny_filesystem, "ro")
    with hold_state_dir(state), pytest.raises(StateDirLocked) as refused, hold_state_dir(state):
        pass
    assert f"process {os.getpid()}" in refused.value.message and f"kill {os.getpid()}" in refused.value.fix
    assert str(os.getppid()) not in f"{refused.value.message} {refused.value.fix}"


def test_the_status_says_stopping_when_the_last_event_finds_the_disk_mended(
    tmp_path: Path, small_filesystem: Path, make_test_ca, notify_socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox could not be opened at start and the disk was freed meanwhile: the stop's `agent_stopping`
    opens it, and its recovery said "ready: the audit trail is stored again" after STOPPING=1, so `systemctl
    status` showed a stopping daemon as ready. A recovery says again what the daemon was saying, its problem gone."""
    sock, notify_path = notify_socket
    monkeypatch.setattr(daemon_module, "AUDIT_RETRY_S", 3600.0)  # only the stop's event retries the outbox
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
    state = small_filesystem / "state"
    config, kek = _provisioned_without_devices(tmp_path, state, make_test_ca)
    fill_filesystem(small_filesystem)
    daemon = AgentDaemon(config)

    async def scenario() -> None:
        await daemon.start()
        _free(small_filesystem)
        await daemon.stop()

    asyncio.run(scenario())
    statuses = []
    with contextlib.suppress(TimeoutError):
        while True:
            fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())
            statuses.append(fields.get("STATUS", ""))
    assert any(s.startswith("degraded: the audit trail cannot be stored") for s in statuses), statuses
    assert statuses[-1] == "stopping: flushing the outbox", statuses
    box = Outbox(state / OUTBOX_FILE, kek)
    kinds = [e["type"] for e in box.pending(100)]
    box.close()
    assert kinds == ["audit_storage_recovered", "agent_stopping"], kinds


def test_a_loose_state_directory_on_a_read_only_disk_starts_degraded_not_with_a_traceback(
    tmp_path: Path, tiny_filesystem: Path, make_test_ca, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state directory others may enter (made by hand, 0755) on a disk remounted read-only: the start's chmod
    to 0700 raised a bare OSError (read-only file system) before the outbox was even tried, a traceback and a
    systemd restart loop where the daemon should start degraded. The mode is said, to be tightened once the disk
    is writable again, and the start goes on."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    state = tiny_filesystem / "state"
    config, _ = _provisioned_without_devices(tmp_path, state, make_test_ca)
    state.chmod(0o755)
    _remount(tiny_filesystem, "ro")
    daemon = AgentDaemon(config)

    async def scenario() -> AuditStorageError | None:
        await daemon.start()
        try:
            return daemon.audit_fault
        finally:
            await daemon.stop()

    fault = asyncio.run(scenario())
    assert fault is not None and fault.cause == "read-only" and "findmnt -T" in fault.fix, fault
    assert oct(state.stat().st_mode & 0o777) == oct(0o755)
