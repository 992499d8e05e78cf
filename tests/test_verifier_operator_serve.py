"""`capture-verifier serve` as an operator starts it: once per database, and the operator's commands beside it.

Real verifier processes on 127.0.0.1 with ports chosen at run time, each stopped
by the fixture or here.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.devstack import LocalVerifier
from tests.test_verifier_operator_cli import cli, refused


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
