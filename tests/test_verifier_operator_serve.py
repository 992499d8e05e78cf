"""`capture-verifier serve` as an operator starts it: once per database, and the operator's commands beside it.

Real verifier processes on 127.0.0.1 with ports chosen at run time, each stopped
by the fixture or here.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.devstack import LocalVerifier
from tests.conftest import TerminalVerifier
from tests.test_verifier_connections import log_events, open_h2, read_until_closed, request_headers, wait_for
from tests.test_verifier_operator_cli import cli, refused


def wait_for_event(verifier: LocalVerifier, event: str, timeout_s: float = 10.0) -> dict | None:
    """The verifier's first log event named ``event``, once it is written; None if it never is
    (or the process ended without it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [e for e in log_events(verifier) if e.get("event") == event]
        if found:
            return found[0]
        if verifier.process is not None and verifier.process.poll() is not None:
            break
        time.sleep(0.05)
    found = [e for e in log_events(verifier) if e.get("event") == event]
    return found[0] if found else None


def test_a_second_server_on_the_same_database_is_refused_naming_the_first(verifier: LocalVerifier) -> None:
    """Two servers on one sqlite file both ran: each in-memory rate limit was granted twice."""
    assert verifier.process is not None
    error, fix = refused(cli("serve", "--pki", str(verifier.pki_dir), "--port", "0"))
    assert "another `capture-verifier serve`" in error and f"process {verifier.process.pid}" in error
    assert f"kill {verifier.process.pid}" in fix
    assert verifier.process.poll() is None, "the first server goes on"


def test_the_operator_commands_run_beside_the_server(verifier: LocalVerifier) -> None:
    """Only `serve` holds the database: tokens and rules are made while it runs."""
    done = cli("token", "new", "--pki", str(verifier.pki_dir), "--device", "kiosk-9")
    assert done.returncode == 0, done.stderr
    done = cli("device", "allow", "--pki", str(verifier.pki_dir), "kiosk-9", "--operations", "verify")
    assert done.returncode == 0, done.stderr
    listed = [json.loads(line) for line in cli("device", "list", "--pki", str(verifier.pki_dir)).stdout.splitlines()]
    assert [(row["device_id"], row["status"], row["operations"]) for row in listed] == [
        ("kiosk-9", "pending", ["verify"])
    ]


def test_a_server_stopped_leaves_no_lock_behind(tmp_path: Path) -> None:
    """The lock dies with its holder: a restart on the same folder is never blocked."""
    with LocalVerifier.running(tmp_path / "pki") as first:
        first.stop()
        second = LocalVerifier(first.pki_dir).start()
        try:
            assert second.process is not None and second.process.poll() is None
        finally:
            second.stop()
        assert second.process.returncode == 0


def test_a_ready_file_in_a_folder_that_does_not_exist_is_refused_before_listening(verifier_state: Path) -> None:
    """It was a traceback once the port was open: the server stopped after saying it listened."""
    ready = verifier_state / "no-such-folder" / "ready.json"
    error, fix = refused(cli("serve", "--pki", str(verifier_state), "--port", "0", "--ready-file", str(ready)))
    assert error == f"error: --ready-file {ready}: its folder does not exist"
    assert "--ready-file" in fix


def test_a_host_that_is_no_address_is_refused_with_the_fix(verifier_state: Path) -> None:
    """A mistyped --host (a name that does not resolve, an address out of range) was a socket.gaierror traceback."""
    for host in ("999.1.1.1", "no-such-host.invalid"):
        error, fix = refused(cli("serve", "--pki", str(verifier_state), "--port", "0", "--host", host))
        assert error.startswith(f"error: cannot listen on {host}:0: {host!r} is no address of this host"), error
        assert "--host" in fix


def request_in_flight(verifier: LocalVerifier) -> tuple:
    """An EST request whose body is half sent, so the app waits for the rest: (TLS socket, h2 connection)."""
    tls, conn = open_h2(verifier)
    headers = request_headers("POST", "/.well-known/est/simpleenroll", authorization="Bearer x")
    conn.send_headers(1, [*headers, ("idempotency-key", "k"), ("content-type", "application/pkcs10")])
    conn.send_data(1, b"MIIB")
    tls.sendall(conn.data_to_send())
    time.sleep(0.5)  # the request reaches the app, which waits for the rest of its body
    return tls, conn


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_lets_the_request_in_flight_finish_then_exits_0(tmp_path: Path, stop_signal: int) -> None:
    """SIGHUP (the terminal `serve` ran in was closed, an ssh session dropped) killed the verifier at once:
    Python's default for it, with no drain, no `verifier_stopping`, the request in flight cut. It stops as
    SIGTERM does: no new connection, the request in flight answered, exit 0."""
    with started_with_sighup(signal.SIG_DFL, tmp_path) as verifier:  # as from a shell, whatever ran the tests
        assert verifier.process is not None
        tls, conn = request_in_flight(verifier)
        verifier.process.send_signal(stop_signal)
        stopping = wait_for_event(verifier, "verifier_stopping")
        conn.send_data(1, b"AAAA", end_stream=True)
        with contextlib.suppress(OSError):  # without the drain the verifier is gone: a reset
            tls.sendall(conn.data_to_send())
        _, status, _ = read_until_closed(tls, conn, 10.0)
        tls.close()
        returncode = verifier.process.wait(15)
    assert stopping is not None and stopping["open_connections"] == 1, stopping
    assert stopping["signal"] == stop_signal.name
    assert status == 401, "the request in flight was answered (its token is no token)"
    assert returncode == 0


def test_a_closed_terminal_stops_serve_as_sigterm_does(verifier_at_a_terminal: TerminalVerifier) -> None:
    """`serve` started from a terminal that is then closed: the kernel's SIGHUP, and every write to the terminal
    failing (EIO). With SIGHUP handled alone, the drain's first log line raised: a traceback nobody saw (exit 1)
    and the request in flight answered 500. Its output now goes nowhere, and it stops as SIGTERM does."""
    verifier = verifier_at_a_terminal.verifier
    assert verifier.process is not None
    tls, conn = request_in_flight(verifier)
    verifier_at_a_terminal.hang_up()
    assert wait_for(lambda: refuses_connections(verifier), 10.0), "it stopped listening: the SIGHUP came"
    conn.send_data(1, b"AAAA", end_stream=True)
    with contextlib.suppress(OSError):  # a verifier that died is gone: a reset
        tls.sendall(conn.data_to_send())
    _, status, _ = read_until_closed(tls, conn, 10.0)
    tls.close()
    assert status == 401, "the request in flight was answered (its token is no token)"
    assert verifier.process.wait(15) == 0


def refuses_connections(verifier: LocalVerifier) -> bool:
    try:
        socket.create_connection((verifier.host, verifier.port), timeout=1.0).close()
    except ConnectionRefusedError:
        return True
    return False


# `capture-verifier serve` with an audit hook that says each sqlite3.connect (Python's own audit event).
SERVE_SAYING_CONNECTS = """
import sys
from verifier.cli import main

def say_connects(event, args):
    if event == "sqlite3.connect":
        print(f"sqlite3.connect {args[0]}", file=sys.stderr, flush=True)

sys.addaudithook(say_connects)
sys.exit(main(sys.argv[1:]))
"""


def test_serve_opens_its_database_once(verifier_state: Path) -> None:
    """It opened it twice at start: once to check it (then closed), once more for the app, each time running the
    schema script and the migration. The app now serves on the connection the check opened."""
    ready, log = verifier_state / "ready.json", verifier_state / "serve.log"
    command = [sys.executable, "-c", SERVE_SAYING_CONNECTS, "serve", "--pki", str(verifier_state), "--port", "0"]
    with open(log, "wb") as log_file:
        process = subprocess.Popen([*command, "--ready-file", str(ready)], stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        assert wait_for(lambda: ready.exists() or process.poll() is not None, 60.0) and process.poll() is None, (
            log.read_text(errors="replace")[-2000:]
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            returncode = process.wait(5)
    connects = [line for line in log.read_text().splitlines() if line.startswith("sqlite3.connect ")]
    assert connects == [f"sqlite3.connect {verifier_state / 'verifier.sqlite'}"], connects
    assert returncode == 0


def test_serve_under_nohup_outlives_the_hang_up(tmp_path: Path) -> None:
    """`nohup capture-verifier serve &` (SIGHUP ignored from the start) is how an operator keeps it running past
    the ssh session; handling SIGHUP as a stop replaced that ignore, and the logout stopped the verifier. An
    ignored SIGHUP stays ignored (as the kernel sees it: no handler to race with), and the server goes on."""
    with started_with_sighup(signal.SIG_IGN, tmp_path) as verifier:  # as nohup starts it
        assert verifier.process is not None
        assert ignored_signals(verifier.process.pid) & (1 << (signal.SIGHUP - 1)), "SIGHUP no longer ignored"
        verifier.process.send_signal(signal.SIGHUP)
        assert not refuses_connections(verifier)
        assert verifier.process.poll() is None
        verifier.stop()
        assert verifier.process.returncode == 0
    assert wait_for_event(verifier, "verifier_stopping")["signal"] == "SIGTERM"


@contextlib.contextmanager
def started_with_sighup(disposition: signal.Handlers, tmp_path: Path) -> Iterator[LocalVerifier]:
    """A verifier started with SIGHUP at ``disposition`` (inherited across exec, as from nohup or a shell),
    whatever this test process has; stopped after."""
    with contextlib.ExitStack() as stack:
        previous = signal.signal(signal.SIGHUP, disposition)
        try:
            verifier = stack.enter_context(LocalVerifier.running(tmp_path / "pki"))
        finally:
            signal.signal(signal.SIGHUP, previous)
        yield verifier


def ignored_signals(pid: int) -> int:
    """The mask of the signals process ``pid`` ignores (SigIgn in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.MULTILINE).group(1), 16)  # type: ignore[union-attr]


def test_the_ready_file_is_one_whole_line_a_shell_reads(verifier_state: Path) -> None:
    """`--ready-file` got the `listening` JSON without its newline: `read -r line < FILE` in a start script
    then failed (exit 1 at an end of file with no newline), and `while read` loops skipped the line."""
    import shutil

    ready = verifier_state / "ready.json"
    command = [sys.executable, "-m", "verifier.cli", "serve", "--pki", str(verifier_state), "--port", "0"]
    process = subprocess.Popen([*command, "--ready-file", str(ready)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: ready.exists() or process.poll() is not None, 60.0) and process.poll() is None
        read = subprocess.run([shutil.which("bash") or "/bin/bash", "-c", 'read -r line < "$1" && printf %s "$line"',
                               "bash", str(ready)], capture_output=True, text=True, timeout=10)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    assert read.returncode == 0, "the shell's read met the end of the file before a newline"
    listening = json.loads(read.stdout)
    assert listening["event"] == "listening" and listening["port"] > 0, listening
