"""The outbox on its own: encrypted at rest, chained, bounded, crash-safe by construction."""

from __future__ import annotations

import sqlite3

import pytest

from agent.audit import ChainHead, verify_chain
from agent.keystore import new_kek
from agent.outbox import Outbox, OutboxLimits
from tests.conftest import sqlite_modes_under_umask_022


@pytest.fixture
def kek() -> str:
    return new_kek()


def test_events_chain_and_survive_a_reopen(tmp_path, kek) -> None:
    box = Outbox(tmp_path / "o.sqlite", kek)
    for i in range(5):
        box.record("attempt", {"n": i})
    box.close()
    box = Outbox(tmp_path / "o.sqlite", kek)
    box.record("attempt", {"n": 5})
    events = box.pending(100)
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert verify_chain(events) == []
    assert box.head() == ChainHead(6, events[-1]["hash"])


@pytest.mark.parametrize("older", [False, True], ids=["new", "left-0644-by-an-older-version"])
def test_the_database_and_its_wal_and_shm_are_0600_under_umask_022(tmp_path, kek, older) -> None:
    """Audit 16 F2: WAL was switched on before the chmod, so -wal and -shm were made 0644."""

    def use(path):
        box = Outbox(path, kek)
        box.record("heartbeat")  # the WAL holds a transaction: all three files exist while it runs
        return box.close

    modes = sqlite_modes_under_umask_022(tmp_path / "state" / "outbox.sqlite", use, older=older)
    assert modes == {"outbox.sqlite": "0o600", "outbox.sqlite-wal": "0o600", "outbox.sqlite-shm": "0o600"}


def test_no_payload_in_clear_in_the_file_or_its_wal(tmp_path, kek) -> None:
    box = Outbox(tmp_path / "o.sqlite", kek)
    marker = "subject-7fa3-outcome-accepted"
    box.record("verification_attempt", {"note": marker})
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("o.sqlite"))
    assert marker.encode() not in raw
    assert b"verification_attempt" not in raw
    assert box.pending(10)[0]["data"]["note"] == marker  # and it decrypts


def test_the_chain_verifier_catches_tampering(tmp_path, kek) -> None:
    box = Outbox(tmp_path / "o.sqlite", kek)
    for i in range(3):
        box.record("attempt", {"n": i})
    events = box.pending(10)
    events[1]["data"]["n"] = 99
    assert any("hash does not match" in p for p in verify_chain(events))
    assert any("expected sequence" in p for p in verify_chain([events[0], events[2]]))


def test_a_row_that_does_not_decrypt_is_set_aside_and_the_rest_still_comes(tmp_path, kek) -> None:
    box = Outbox(tmp_path / "o.sqlite", kek)
    for n in range(5):
        box.record("attempt", {"n": n})
    with sqlite3.connect(tmp_path / "o.sqlite") as db:  # one byte of the third row flipped on disk
        db.execute("UPDATE outbox SET ciphertext = CAST(ciphertext || x'00' AS BLOB) WHERE seq = 3")
    events = box.pending(10)
    assert [e["data"].get("n") for e in events] == [0, 1, 3, 4]  # the rows behind the bad one are not held up
    assert box.quarantined() == 1
    with sqlite3.connect(tmp_path / "o.sqlite") as db:
        assert db.execute("SELECT seq FROM quarantine").fetchall() == [(3,)]  # kept, sealed, not deleted
    report = box.pending(10)[-1]  # the move is itself an audit event, in the chain
    assert report["type"] == "outbox_quarantined"
    assert (report["data"]["count"], report["data"]["first_seq"], report["data"]["total"]) == (1, 3, 1)
    assert "key-encryption key" in report["data"]["fix"]
    box.close()


def test_rows_sealed_under_another_kek_are_all_set_aside(tmp_path, kek) -> None:
    box = Outbox(tmp_path / "o.sqlite", kek)
    box.record("attempt")
    box.record("attempt")
    box.close()
    other = Outbox(tmp_path / "o.sqlite", new_kek())
    # Never an empty batch while rows remain: delivery would take it for an empty outbox and sleep.
    assert [e["type"] for e in other.pending(10)] == ["outbox_quarantined"]
    assert other.quarantined() == 2
    other.close()


def test_a_whole_batch_set_aside_is_followed_by_the_rows_behind_it(tmp_path, kek) -> None:
    box = Outbox(tmp_path / "o.sqlite", kek)
    for n in range(5):
        box.record("attempt", {"n": n})
    with sqlite3.connect(tmp_path / "o.sqlite") as db:  # the first batch of 3 altered on disk
        db.execute("UPDATE outbox SET ciphertext = CAST(ciphertext || x'00' AS BLOB) WHERE seq <= 3")
    batch = box.pending(3)
    assert [e["data"].get("n") for e in batch[:2]] == [3, 4]  # not an empty batch: the rows behind come
    assert batch[2]["type"] == "outbox_quarantined" and batch[2]["data"]["count"] == 3
    box.close()


def test_a_full_outbox_drops_the_oldest_and_says_so(tmp_path, kek) -> None:
    box = Outbox(tmp_path / "o.sqlite", kek, OutboxLimits(max_rows=20, max_bytes=10**9))
    for i in range(60):
        box.record("attempt", {"n": i})
    events = box.pending(100)
    assert len(events) <= 20
    drops = [e for e in events if e["type"] == "outbox_dropped"]
    assert drops, "the drop is reported as an event"
    latest = drops[-1]["data"]
    # Every event ever made (attempts and reports) is either still here or in the latest report's total.
    assert latest["total"] + len(events) == box.head().seq
    assert latest["first_seq"] == 1
    kept = [e for e in events if e["type"] == "attempt"]
    assert kept[-1]["data"]["n"] == 59  # the newest are kept
    assert latest["last_seq"] < kept[0]["seq"]


def test_the_byte_bound_holds_too(tmp_path, kek) -> None:
    box = Outbox(tmp_path / "o.sqlite", kek, OutboxLimits(max_rows=10_000, max_bytes=20_000))
    for i in range(200):
        box.record("attempt", {"pad": "x" * 400, "n": i})
    total = box.conn.execute("SELECT SUM(LENGTH(ciphertext)) FROM outbox").fetchone()[0]
    assert total <= 20_000 + 2_000
    assert any(e["type"] == "outbox_dropped" for e in box.pending(1000))


def scanned(box: Outbox) -> tuple[int, int]:
    """What the outbox holds, counted the slow way."""
    rows, size = box.conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(ciphertext)), 0) FROM outbox").fetchone()
    return int(rows), int(size)


def test_the_kept_count_follows_every_change_to_the_outbox(tmp_path, kek) -> None:
    """The bounds read a count the triggers keep (not a scan per event): it must match the rows through
    writes, deliveries, drops, a row altered on disk by another process, and its quarantine."""
    box = Outbox(tmp_path / "o.sqlite", kek, OutboxLimits(max_rows=25, max_bytes=10**9))
    for i in range(40):  # past the row bound: drops
        box.record("attempt", {"n": i, "pad": "x" * (i % 7)})
        assert box.usage() == scanned(box)
    box.delivered([e["id"] for e in box.pending(5)])
    assert box.usage() == scanned(box)
    with sqlite3.connect(tmp_path / "o.sqlite") as db:
        db.execute("UPDATE outbox SET ciphertext = CAST(ciphertext || x'0000' AS BLOB) WHERE rowid % 4 = 0")
    assert box.usage() == scanned(box)
    box.pending(100)  # the altered rows go aside
    assert box.quarantined() > 0
    assert box.usage() == scanned(box)
    assert box.size() == scanned(box)[0]
    box.close()


def test_an_outbox_an_older_version_wrote_is_counted_when_opened(tmp_path, kek) -> None:
    """A file without the kept count (written before it existed) is counted once on opening, and its bounds
    hold from the first event."""
    box = Outbox(tmp_path / "o.sqlite", kek)
    for i in range(30):
        box.record("attempt", {"n": i})
    box.close()
    with sqlite3.connect(tmp_path / "o.sqlite") as db:  # as an older version left it
        for trigger in ("usage_insert", "usage_delete", "usage_update"):
            db.execute(f"DROP TRIGGER {trigger}")
        db.execute("DROP TABLE usage")
    box = Outbox(tmp_path / "o.sqlite", kek, OutboxLimits(max_rows=20, max_bytes=10**9))
    assert box.usage() == scanned(box) and box.usage()[0] == 30
    box.record("attempt", {"n": 30})
    assert box.usage() == scanned(box)
    assert box.usage()[0] <= 20  # the excess dropped at once, not a tenth per event
    assert any(e["type"] == "outbox_dropped" for e in box.pending(100))
    box.close()


def test_a_full_disk_is_a_typed_error_naming_it_and_the_chain_goes_on_once_freed(tiny_filesystem, kek) -> None:
    """sqlite ends the transaction itself when COMMIT fails on a full disk: the ROLLBACK after it raised
    "cannot rollback - no transaction is active", and the cause (and its fix) was lost."""
    from agent.errors import AuditStorageError
    from tests.conftest import fill_filesystem

    box = Outbox(tiny_filesystem / "outbox.sqlite", kek)
    try:
        box.record("heartbeat")
        head = box.head()
        fill_filesystem(tiny_filesystem)
        with pytest.raises(AuditStorageError, match="database or disk is full") as raised:
            for _ in range(100):  # the WAL may still hold room for a few frames
                box.record("heartbeat")
        assert f"df -h {tiny_filesystem}" in raised.value.fix
        stored = box.head()
        (tiny_filesystem / "filler").unlink()
        box.record("audit_storage_recovered", {"events_not_stored": 1})
        assert box.head().seq == stored.seq + 1 and stored.seq >= head.seq
        assert verify_chain(box.pending(1000), ChainHead()) == [], "nothing half-written broke the chain"
    finally:
        box.close()


def test_a_damaged_outbox_file_is_a_typed_error_naming_it(tmp_path, kek) -> None:
    """A failing SD card's damage ("database disk image is malformed") escaped as a raw sqlite error and stopped
    the daemon; our own SQL mistakes stay raw (a bug, with its traceback)."""
    from agent.errors import AuditStorageError

    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, kek)
    for n in range(50):
        box.record("heartbeat", {"n": n})
    box.close()
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xa5" * (len(data) - 4096)  # every page after the first: the tables' b-trees
    path.write_bytes(bytes(data))
    with pytest.raises(AuditStorageError, match=r"malformed|not a database") as raised:
        box = Outbox(path, kek)
        try:
            box.record("heartbeat")
        finally:
            box.close()
    assert "is damaged" in raised.value.fix and "move it aside" in raised.value.fix


def test_an_outbox_damaged_from_its_header_is_named_at_open(tmp_path, kek) -> None:
    from agent.errors import AuditStorageError

    path = tmp_path / "outbox.sqlite"
    Outbox(path, kek).close()
    path.write_bytes(b"\xa5" * path.stat().st_size)  # the header too: sqlite does not know it as a database
    with pytest.raises(AuditStorageError, match="not a database") as raised:
        Outbox(path, kek)
    assert "is damaged" in raised.value.fix


def test_an_outbox_on_a_read_only_file_system_is_named_at_open(tiny_filesystem, kek) -> None:
    """An SD card remounted read-only after I/O errors: the daemon's start was a raw OSError traceback."""
    import shutil
    import subprocess

    from agent.errors import AuditStorageError

    Outbox(tiny_filesystem / "outbox.sqlite", kek).close()
    subprocess.run([shutil.which("mount") or "mount", "-o", "remount,ro", str(tiny_filesystem)], check=True)
    with pytest.raises(AuditStorageError, match="Read-only file system") as raised:
        Outbox(tiny_filesystem / "outbox.sqlite", kek)
    assert "read-only" in raised.value.fix and "dmesg" in raised.value.fix
