"""The verifier serving while its database cannot be written: a 503 the device retries, one line for the operator.

A real `capture-verifier serve` whose database lives on a small tmpfs the test
fills, as a verifier's disk fills with logs or backups.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.conftest import dev_pki, fill_filesystem, provision_with_fresh_token, raw_client_context
from tests.test_verifier import device_files, get
from verifier.storage_faults import is_storage_fault


def test_a_full_disk_is_a_503_to_retry_and_the_same_request_succeeds_once_freed(
    tmp_path: Path, small_filesystem: Path
) -> None:
    """Was 500 `internal` (not retried by the agent) and a traceback per request in the verifier's log."""
    database = small_filesystem / "verifier.sqlite"
    settings = tmp_path / "verifier.toml"
    settings.write_text(f"db_path = {json.dumps(str(database))}\n")
    with dev_pki(tmp_path / "pki", extra_args=("--config", str(settings))) as local:
        local.start()
        _, identity = provision_with_fresh_token(local, tmp_path / "device", "kiosk-1", database=database)
        ctx = raw_client_context(local.pki_dir, *device_files(identity, tmp_path))
        fill_filesystem(small_filesystem)
        refused = [
            get(ctx, local.url, "/v1/challenges", method="POST", headers={"Idempotency-Key": "k-1"}, json={})
            for _ in range(2)
        ]
        (small_filesystem / "filler").unlink()
        retried = get(ctx, local.url, "/v1/challenges", method="POST", headers={"Idempotency-Key": "k-1"}, json={})
        log = [json.loads(line) for line in local.log_path.read_text().splitlines() if line.startswith("{")]
    for answer in refused:
        assert answer.status_code == 503, answer.text
        assert answer.json()["type"].endswith("/storage-unavailable")
        assert answer.headers["retry-after"] == "10"
    assert retried.status_code == 201 and retried.json()["nonce"], "nothing of the refused tries was kept half-done"
    said = [entry for entry in log if entry["event"] == "storage_refused"]
    assert len(said) == 2 and said[0]["path"] == "/v1/challenges"
    assert "cannot be written" in said[0]["reason"] and "df -h" in said[0]["fix"]
    assert not [entry for entry in log if entry["event"] == "request_failed"], "no traceback per request"


def test_only_storage_faults_are_503_and_the_verifiers_own_bugs_stay_500() -> None:
    """A constraint broken or an API misused is a bug of ours: it must keep its traceback and 500."""
    assert is_storage_fault(sqlite3.OperationalError("database or disk is full"))
    assert is_storage_fault(sqlite3.DatabaseError("database disk image is malformed"))
    assert not is_storage_fault(sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert not is_storage_fault(sqlite3.ProgrammingError("Cannot operate on a closed database."))
    assert not is_storage_fault(ValueError("not sqlite at all"))
