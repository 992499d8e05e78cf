"""`capture-verifier backup`: a consistent copy of the database beside a running serve, never over a file.

Real `capture-verifier` processes; the verifier the fixture runs holds the
database open (WAL) while the backup reads it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.test_verifier_operator_cli import cli, refused
from verifier.at_rest_key import load_or_create_key
from verifier.enrollments import EnrollmentStore
from verifier.store import open_database


def test_a_backup_beside_a_running_verifier_holds_its_last_commits_checked_and_private(
    verifier, provisioned, tmp_path: Path
) -> None:
    """The enrollment written last sits in the WAL while serve holds the database open: `cp` of the
    database file alone would miss it; the backup holds it, and the device the verifier registered."""
    conn = open_database(verifier.pki_dir / "verifier.sqlite")
    try:
        key = load_or_create_key(verifier.pki_dir / "enrollment.key", conn)
        EnrollmentStore(conn, key).add("ana", "kiosk-1", [b"a sealed record"])
    finally:
        conn.close()
    naive = tmp_path / "cp-of-the-file.sqlite"
    shutil.copy(verifier.pki_dir / "verifier.sqlite", naive)
    with sqlite3.connect(naive) as copied:  # the schema serve made is still in the WAL too
        tables = {row[0] for row in copied.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "enrollments" not in tables or copied.execute("SELECT count(*) FROM enrollments").fetchone() == (0,)
    target = tmp_path / "backups" / "verifier-1.sqlite"
    target.parent.mkdir()
    done = cli("backup", "--pki", str(verifier.pki_dir), "--to", str(target))
    assert done.returncode == 0, done.stderr
    assert "1 device(s), 1 enrolled subject(s)" in done.stdout
    assert "enrollment.key is not in it" in done.stdout
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with sqlite3.connect(target) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("SELECT device_id FROM devices").fetchall() == [("kiosk-1",)]
        (nonce, sealed), = copy.execute("SELECT nonce, ciphertext FROM enrollments").fetchall()
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    assert AESGCM(key).decrypt(nonce, sealed, b"ana") == b"a sealed record", "the copy opens with the live key"


def test_a_backup_is_never_written_over_a_file_nor_into_a_missing_folder(verifier_state: Path, tmp_path: Path) -> None:
    open_database(verifier_state / "verifier.sqlite").close()  # as serve leaves it
    existing = tmp_path / "yesterday.sqlite"
    existing.write_bytes(b"yesterday's backup")
    error, fix = refused(cli("backup", "--pki", str(verifier_state), "--to", str(existing)))
    assert "exists: a backup is never written over a file" in error and "new file name" in fix
    assert existing.read_bytes() == b"yesterday's backup"
    error, fix = refused(cli("backup", "--pki", str(verifier_state), "--to", str(tmp_path / "nope" / "b.sqlite")))
    assert "is not a folder" in error and "create the folder" in fix
    assert not (tmp_path / "nope").exists()


def test_a_full_destination_is_named_as_the_backups_not_the_database(verifier_state: Path, tiny_filesystem) -> None:
    """The copy's disk filled: the error names where the backup goes, and leaves no partial file there."""
    conn = open_database(verifier_state / "verifier.sqlite")  # a database larger than what is left there
    conn.execute("CREATE TABLE padding (blob BLOB)")
    conn.execute("INSERT INTO padding VALUES (zeroblob(300000))")
    conn.close()
    (tiny_filesystem / "filler").write_bytes(bytes(200_000))  # of 256 KiB
    error, fix = refused(cli("backup", "--pki", str(verifier_state), "--to", str(tiny_filesystem / "b.sqlite")))
    assert f"cannot write the backup to {tiny_filesystem / 'b.sqlite'}" in error
    assert f"df -h {tiny_filesystem}" in fix
    assert sorted(p.name for p in tiny_filesystem.iterdir()) == ["filler"]


def test_a_folder_without_a_database_is_refused_not_backed_up_as_a_new_empty_one(
    verifier_state: Path, tmp_path: Path
) -> None:
    """A wrong --pki (or a missing --config whose db_path serve uses) made and backed up an empty database."""
    error, fix = refused(cli("backup", "--pki", str(verifier_state), "--to", str(tmp_path / "b.sqlite")))
    assert f"no verifier database at {verifier_state / 'verifier.sqlite'}" in error
    assert "--pki" in fix and "--config" in fix
    assert not (verifier_state / "verifier.sqlite").exists(), "nothing was made"
    assert not (tmp_path / "b.sqlite").exists()


def _enrol(pki: Path, subject: str) -> None:
    conn = open_database(pki / "verifier.sqlite")
    try:
        EnrollmentStore(conn, load_or_create_key(pki / "enrollment.key", conn)).add(subject, "kiosk-1", [b"record"])
    finally:
        conn.close()


def _subjects(database: Path) -> list[str]:
    with sqlite3.connect(database) as conn:
        return [row[0] for row in conn.execute("SELECT DISTINCT subject_id FROM enrollments ORDER BY 1")]


def test_restore_puts_the_backup_back_keeps_a_backup_of_the_replaced_database_and_serve_starts_on_it(
    verifier, provisioned, tmp_path: Path
) -> None:
    _enrol(verifier.pki_dir, "ana")
    backup = tmp_path / "b.sqlite"
    assert cli("backup", "--pki", str(verifier.pki_dir), "--to", str(backup)).returncode == 0
    _enrol(verifier.pki_dir, "ben")  # after the backup: the restore takes it away
    error, fix = refused(cli("restore", "--pki", str(verifier.pki_dir), "--from", str(backup)))
    assert "already serves the database" in error and "stop it first" in fix
    assert "rate limit" not in fix and "restore" in fix, fix  # the restore's next steps, not a second server's
    verifier.stop()
    database = verifier.pki_dir / "verifier.sqlite"
    restores = [cli("restore", "--pki", str(verifier.pki_dir), "--from", str(backup)) for _ in range(2)]
    assert [done.returncode for done in restores] == [0, 0], restores[-1].stderr
    assert "1 device(s), 1 enrolled subject(s)" in restores[0].stdout
    kept = sorted(verifier.pki_dir.glob("verifier.sqlite.replaced-*"))
    assert len(kept) == 2, "a second restore in the same second kept its own copy, not over the first's"
    assert sorted(_subjects(path)[-1] for path in kept) == ["ana", "ben"]  # the first kept ben's enrollment
    assert _subjects(database) == ["ana"]
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    verifier.start()  # the key check at start opens the restored rows
    assert verifier.process is not None and verifier.process.poll() is None


def test_restore_moves_a_wal_left_without_its_database_out_of_the_way(verifier_state: Path, tmp_path: Path) -> None:
    """A -wal whose database was deleted by hand would be replayed into the restored file at its next open."""
    _enrol(verifier_state, "ana")
    backup = tmp_path / "b.sqlite"
    assert cli("backup", "--pki", str(verifier_state), "--to", str(backup)).returncode == 0
    database = verifier_state / "verifier.sqlite"
    database.unlink()
    database.with_name("verifier.sqlite-wal").write_bytes(b"another database's WAL")
    done = cli("restore", "--pki", str(verifier_state), "--from", str(backup))
    assert done.returncode == 0, done.stderr
    assert (verifier_state / "verifier.sqlite-wal.stray").read_bytes() == b"another database's WAL"
    assert _subjects(database) == ["ana"]


def test_restore_as_another_user_than_the_folders_owner_is_refused_naming_sudo(
    verifier_state: Path, tmp_path: Path
) -> None:
    """Run as root, the restored database and its lock were root's, and serve (its own user) could not open them."""
    _enrol(verifier_state, "ana")
    backup = tmp_path / "b.sqlite"
    assert cli("backup", "--pki", str(verifier_state), "--to", str(backup)).returncode == 0
    if os.geteuid() != 0:
        pytest.skip("needs root to give the folder to another user")
    os.chown(verifier_state, 65534, 65534)
    try:
        error, fix = refused(cli("restore", "--pki", str(verifier_state), "--from", str(backup)))
    finally:
        os.chown(verifier_state, 0, 0)
    assert "not to the user running restore" in error and "sudo -u" in fix and "capture-verifier restore" in fix


def test_restore_refuses_a_backup_the_verifiers_key_does_not_open_and_leaves_the_database(
    verifier_state: Path, tmp_path: Path
) -> None:
    _enrol(verifier_state, "ana")
    backup = tmp_path / "b.sqlite"
    assert cli("backup", "--pki", str(verifier_state), "--to", str(backup)).returncode == 0
    before = (verifier_state / "verifier.sqlite").read_bytes()
    (verifier_state / "enrollment.key").write_bytes(bytes(32))  # another verifier's key
    error, fix = refused(cli("restore", "--pki", str(verifier_state), "--from", str(backup)))
    assert "does not open the enrollments" in error and "restore this verifier's own enrollment.key" in fix
    assert (verifier_state / "verifier.sqlite").read_bytes() == before
    error, fix = refused(cli("restore", "--pki", str(verifier_state), "--from", str(tmp_path / "none.sqlite")))
    assert "no backup at" in error
    (tmp_path / "text.sqlite").write_text("not a database")
    error, _ = refused(cli("restore", "--pki", str(verifier_state), "--from", str(tmp_path / "text.sqlite")))
    assert "cannot be read as a database" in error
