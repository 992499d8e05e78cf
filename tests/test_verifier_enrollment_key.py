"""The enrollment key (templates at rest): never silently replaced, refused when damaged, made whole or not at all.

Real `capture-verifier serve` processes on a state folder an operator restored,
copied or had a power cut in; the stores write real sealed rows into the real
sqlite database first.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from tests.test_verifier_operator_cli import cli, refused
from verifier.at_rest_key import EnrollmentKeyError, load_or_create_key
from verifier.enrollments import EnrollmentStore
from verifier.faces import FaceEnrollments
from verifier.store import open_database


def _enrol_one(pki: Path, store: type[EnrollmentStore] | type[FaceEnrollments]) -> bytes:
    """One sealed row, as the verifier writes it, under the key the verifier made; the key is returned."""
    conn = open_database(pki / "verifier.sqlite")
    try:
        key = load_or_create_key(pki / "enrollment.key", conn)
        store(conn, key).add("ana", "kiosk-1", [b"a template record"])
    finally:
        conn.close()
    return key


def _serve(pki: Path) -> tuple[str, str]:
    return refused(cli("serve", "--pki", str(pki), "--port", "0"))


@pytest.mark.parametrize("store", [EnrollmentStore, FaceEnrollments])
def test_a_missing_key_is_not_made_anew_over_sealed_enrollments(verifier_state: Path, store) -> None:
    """A database restored without its key: a new key would make every enrollment unreadable, so serve refuses."""
    _enrol_one(verifier_state, store)
    (verifier_state / "enrollment.key").unlink()
    error, fix = _serve(verifier_state)
    assert "enrollment.key is missing" in error and "1 enrollment(s)" in error
    assert "restore enrollment.key" in fix and "enrollment_key_file" in fix
    assert not (verifier_state / "enrollment.key").exists(), "no new key was made"


@pytest.mark.parametrize("store", [EnrollmentStore, FaceEnrollments])
def test_another_verifiers_key_is_refused_at_start(verifier_state: Path, store) -> None:
    """32 bytes, but not the key the rows were sealed under: refused at start, not at the first verification."""
    _enrol_one(verifier_state, store)
    (verifier_state / "enrollment.key").write_bytes(secrets.token_bytes(32))
    error, fix = _serve(verifier_state)
    assert "does not open the enrollments" in error
    assert "restore this verifier's own enrollment.key" in fix


def test_a_key_the_verifier_made_opens_its_rows(verifier_state: Path) -> None:
    """The good case beside the refusals: the same key opens both kinds of sealed rows (no false refusal)."""
    _enrol_one(verifier_state, EnrollmentStore)
    conn = open_database(verifier_state / "verifier.sqlite")
    try:
        key = load_or_create_key(verifier_state / "enrollment.key", conn)
        FaceEnrollments(conn, key).add("ben", "kiosk-1", [b"a face record"])
        assert load_or_create_key(verifier_state / "enrollment.key", conn) == key
    finally:
        conn.close()


@pytest.mark.parametrize(("content", "enrolled"), [(b"", False), (b"\x01" * 16, False), (b"\x01" * 16, True)])
def test_a_key_file_of_the_wrong_size_is_named_with_its_fix(
    verifier_state: Path, content: bytes, enrolled: bool
) -> None:
    """An empty file is what a power cut during the first start left (was a ValueError traceback at every start)."""
    if enrolled:
        _enrol_one(verifier_state, EnrollmentStore)
    (verifier_state / "enrollment.key").write_bytes(content)
    (verifier_state / "enrollment.key").chmod(0o600)
    error, fix = _serve(verifier_state)
    assert f"holds {len(content)} bytes, not a 32-byte key" in error
    assert "restore enrollment.key" in fix
    assert ("delete it" in fix) is not enrolled, "deleting is the fix only while nothing is sealed under it"


@pytest.mark.parametrize(("mode", "said"), [(0o644, "other users"), (0o640, "its group")])
def test_a_key_others_may_read_is_refused_with_the_chmod(verifier_state: Path, mode: int, said: str) -> None:
    """A `cp -r` under umask 022: every local user could decrypt every enrolled template."""
    _enrol_one(verifier_state, EnrollmentStore)
    (verifier_state / "enrollment.key").chmod(mode)
    error, fix = _serve(verifier_state)
    assert f"may be read by {said} (mode {mode:04o})" in error
    assert fix == f"fix: chmod 600 {verifier_state / 'enrollment.key'} (the verifier makes it so)"


def test_a_folder_in_place_of_the_key_is_named(verifier_state: Path) -> None:
    (verifier_state / "enrollment.key").mkdir()
    error, _ = _serve(verifier_state)
    assert "enrollment.key is not a regular file" in error


def test_a_new_key_is_private_whole_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Made through a temporary file linked into place: the name holds the 32 bytes or does not exist."""
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    key = load_or_create_key(folder / "enrollment.key")
    assert len(key) == 32
    assert (folder / "enrollment.key").read_bytes() == key
    assert (folder / "enrollment.key").stat().st_mode & 0o777 == 0o600
    assert os.listdir(folder) == ["enrollment.key"]
    assert load_or_create_key(folder / "enrollment.key") == key, "made once, then read"


def test_a_full_disk_leaves_no_key_and_no_partial_file(tiny_filesystem: Path) -> None:
    """The write fails (as a power cut would stop it): the name is not left holding a part of a key."""
    from tests.conftest import fill_filesystem

    fill_filesystem(tiny_filesystem)
    with pytest.raises(EnrollmentKeyError, match="cannot make") as raised:
        load_or_create_key(tiny_filesystem / "enrollment.key")
    assert "free space" in raised.value.fix
    assert os.listdir(tiny_filesystem) == ["filler"], "neither the key's name nor its temporary file is left"


def test_a_key_on_a_file_system_without_modes_is_refused_naming_the_file_system(
    tmp_path: Path, verifier_state: Path, modeless_filesystem: Path
) -> None:
    """The data folder on a vfat stick mounted with umask=022: every file there is 0755 whatever chmod does, so
    "chmod 600" (the fix said before) could never work and the verifier could never start. The fix names the
    file system and what to do about it."""
    key = _enrol_one(verifier_state, EnrollmentStore)
    (modeless_filesystem / "enrollment.key").write_bytes(key)
    os.chmod(modeless_filesystem / "enrollment.key", 0o600)  # what the old fix said: it takes and changes nothing
    assert (modeless_filesystem / "enrollment.key").stat().st_mode & 0o777 == 0o755
    settings = tmp_path / "verifier.toml"
    settings.write_text(f'enrollment_key_file = "{modeless_filesystem / "enrollment.key"}"\n')
    error, fix = refused(cli("serve", "--pki", str(verifier_state), "--port", "0", "--config", str(settings)))
    assert "may be read by other users (mode 0755)" in error
    assert "does not keep file modes" in error
    assert "chmod 600" not in fix
    assert "ext4" in fix and "umask=077" in fix and str(modeless_filesystem) in fix


def test_the_file_system_check_tells_a_modeless_folder_from_a_real_one(
    tmp_path: Path, modeless_filesystem: Path
) -> None:
    from verifier.at_rest_key import keeps_modes

    assert keeps_modes(tmp_path) and not keeps_modes(modeless_filesystem)
    assert os.listdir(modeless_filesystem) == [], "its probe file is removed"


def test_a_key_made_on_a_file_system_without_modes_is_refused_at_once(modeless_filesystem: Path) -> None:
    """Made 0600, shown 0755: refused at the first start, before anything is sealed under a key others may read."""
    with pytest.raises(EnrollmentKeyError) as raised:
        load_or_create_key(modeless_filesystem / "enrollment.key")
    assert "does not keep file modes" in str(raised.value) and "umask=077" in raised.value.fix


def test_a_key_refused_as_it_was_made_is_not_left_behind(modeless_filesystem: Path) -> None:
    """The key just made was shown 0755, readable by every local user: left in place, a start after the mount was
    fixed (umask=077) would take it and seal every template under a key others may have copied. Nothing was sealed
    under it yet, so it is removed: that next start makes a fresh one."""
    with pytest.raises(EnrollmentKeyError):
        load_or_create_key(modeless_filesystem / "enrollment.key")
    assert os.listdir(modeless_filesystem) == [], "neither the exposed key nor a temporary file is left"
