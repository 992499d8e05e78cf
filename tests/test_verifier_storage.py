"""The verifier serving while its database cannot be written: a 503 the device retries, one line for the operator.

A real `capture-verifier serve` whose database lives on a small tmpfs the test
fills, as a verifier's disk fills with logs or backups.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from protocol import endpoints
from tests.conftest import dev_pki, fill_filesystem, provision_with_fresh_token, raw_client_context
from tests.test_verifier import device_files, get
from verifier.app import VerifierApp
from verifier.challenges import NonceError
from verifier.http import Deferred, Request, Route, json_answer
from verifier.pki import init_pki
from verifier.problems import Problem
from verifier.settings import VerifierSettings
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


def _raised(conn: sqlite3.Connection, sql: str) -> sqlite3.Error:
    try:
        conn.execute(sql)
    except sqlite3.Error as exc:
        return exc
    raise AssertionError(f"{sql!r} raised nothing")


def test_only_storage_faults_are_503_and_the_verifiers_own_bugs_stay_500(tmp_path: Path) -> None:
    """By sqlite's result code: a syntax error or a missing table is an OperationalError too, and a bug of ours
    (it keeps its traceback and 500); a file that is not a database is the storage's fault."""
    garbage = tmp_path / "not-a-database.sqlite"
    garbage.write_bytes(b"garbage, not sqlite " * 100)
    with sqlite3.connect(garbage) as damaged:
        assert is_storage_fault(_raised(damaged, "SELECT * FROM sqlite_master"))  # SQLITE_NOTADB
    with sqlite3.connect(":memory:") as conn:
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES ('a')")
        assert not is_storage_fault(_raised(conn, "SELEC 1"))
        assert not is_storage_fault(_raised(conn, "SELECT * FROM no_such_table"))
        assert not is_storage_fault(_raised(conn, "INSERT INTO t VALUES ('a')"))  # IntegrityError
    assert not is_storage_fault(ValueError("not sqlite at all"))


def _full_disk_error(folder: Path) -> sqlite3.Error:
    """The error sqlite raises for a write on a full disk: real, from a database on the filled tmpfs."""
    from tests.conftest import fill_filesystem

    conn = sqlite3.connect(folder / "probe.sqlite")
    conn.execute("CREATE TABLE t (b BLOB)")
    conn.commit()
    fill_filesystem(folder)
    try:
        conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
        conn.commit()
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError("the full tmpfs took the write")


def _app(tmp_path: Path) -> VerifierApp:
    """The verifier's app in this process, on a fresh PKI and database (the caller closes it, as _twice does)."""
    init_pki(tmp_path / "pki")
    return VerifierApp(VerifierSettings(pki_dir=tmp_path / "pki"))


def _twice(app: VerifierApp, handler, path: str, seen=lambda: None) -> list[tuple[tuple[int, dict], object]]:
    """The same POST (one Idempotency-Key) to ``handler`` twice, through the app's ASGI entry as the server calls
    it: each time ((status, JSON body), what ``seen()`` says just after). The app is closed after.

    ``handler`` is put in the app's route table at ``path``: it stands for a real handler and fails where the test
    needs it to (a disk that fills between the checks' commit and the decision's). It needs no client
    certificate; the request's principal is then its bearer token, as an enrollment's is.
    """
    table_path = endpoints.ENROLLMENTS if endpoints.enrollment_subject(path) else path  # /v1/subjects/{id}/...
    app.routes[("POST", table_path)] = Route(handler, needs_client_cert=False, matches=True)
    scope = {
        "type": "http", "method": "POST", "path": path,
        "headers": [(b"idempotency-key", b"k-1"), (b"authorization", b"Bearer t-1")],
    }

    async def call() -> tuple[int, dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])

    async def run() -> list[tuple[tuple[int, dict], object]]:
        return [(await call(), seen()) for _ in range(2)]

    try:
        return asyncio.run(run())
    finally:
        app.pool.close()
        app.conn.close()


def test_a_decision_the_database_could_not_store_gives_its_nonce_back(tmp_path: Path, tiny_filesystem: Path) -> None:
    """The nonce is spent in the checks' transaction, committed before matching; the decision's transaction then
    failed on the disk (503 storage-unavailable, "retry"), and the retry was refused as a replayed nonce."""
    disk_full = _full_disk_error(tiny_filesystem)
    app = _app(tmp_path)
    challenges = app.biometric.challenges
    nonce, _ = challenges.issue("kiosk-1")
    failures = [disk_full]  # the first decision meets the full disk, the retry a freed one

    def verify(request: Request) -> Deferred:
        try:
            challenges.consume("kiosk-1", nonce)  # as the real checks do, before matching
        except NonceError as exc:  # ... and as they answer a nonce spent already
            raise Problem(f"nonce-{exc.kind}", str(exc)) from None

        def finish(score: float) -> object:
            if failures:
                raise failures.pop()
            return json_answer(200, {"decision": "accept", "score": score})

        return Deferred("kiosk-1", lambda budget: 0.5, finish, lambda: challenges.release("kiosk-1", nonce))

    ((first, refusal), _), ((retried, answer), _) = _twice(app, verify, "/v1/verifications")
    assert first == 503 and refusal["type"].endswith("/storage-unavailable"), refusal
    assert not answer.get("type", "").endswith("/nonce-used"), "the retry was refused as a replayed nonce"
    assert retried == 200 and answer["decision"] == "accept", answer


def test_what_memory_learns_from_a_request_waits_for_its_commit(tmp_path: Path, tiny_filesystem: Path) -> None:
    """An enrollment whose commit failed (a full disk) was already in the 1:N gallery: identification named a
    subject the database did not hold, and the retry's templates counted twice. Changes wait for the commit."""
    disk_full = _full_disk_error(tiny_filesystem)
    app = _app(tmp_path)
    gallery: list[str] = []
    failures = [disk_full]

    def enroll(request: Request) -> Deferred:
        def finish(_: object) -> object:
            app.biometric.after_commit(lambda: gallery.append("ana"))  # as an enrollment's templates
            if failures:
                raise failures.pop()  # the transaction fails after the change was asked for
            return json_answer(201, {"subject": "ana"})

        return Deferred("kiosk-1", lambda budget: None, finish, lambda: None)

    ((failed, _), after_failure), ((retried, _), after_retry) = _twice(
        app, enroll, "/v1/subjects/ana/enrollments", lambda: list(gallery)
    )
    assert failed == 503 and after_failure == [], "nothing learnt from a request that was rolled back"
    assert retried == 201 and after_retry == ["ana"], "learnt once, from the retry that committed"
