"""Files `sudo capture-verifier ...` makes in the verifier's folder stay the folder owner's (the unit's user).

Real files and a real folder owned by another user; the check needs root (only root may give a file away), as the
CI machine runs it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root makes files for another user")


@pytest.fixture
def units_folder(tmp_path: Path) -> Path:
    """The verifier's folder as the package makes it: owned by its user (here nobody), 0700."""
    folder = tmp_path / "capture-verifier"
    folder.mkdir(mode=0o700)
    os.chown(folder, NOBODY, NOBODY)
    return folder


def test_an_enrollment_key_root_makes_is_the_folder_owners(units_folder: Path) -> None:
    """`sudo capture-verifier serve` on a new folder made enrollment.key root's, 0600: the unit's serve, as the
    verifier's user, could then not read it (after the database, given away since, it was the next file)."""
    from verifier.at_rest_key import load_or_create_key

    key = load_or_create_key(units_folder / "enrollment.key", sqlite3.connect(":memory:"))
    made = (units_folder / "enrollment.key").stat()
    assert len(key) == 32 and (made.st_uid, made.st_gid) == (NOBODY, NOBODY) and made.st_mode & 0o777 == 0o600


def test_serves_lock_file_root_makes_is_the_folder_owners(units_folder: Path) -> None:
    """The lock serve holds (verifier.sqlite.lock), made by root, could not be opened for writing by the unit's
    serve after: "cannot lock ... Permission denied"."""
    from verifier.serve_lock import hold_database, lock_path

    database = units_folder / "verifier.sqlite"
    with hold_database(database):
        pass
    made = lock_path(database).stat()
    assert (made.st_uid, made.st_gid) == (NOBODY, NOBODY) and made.st_mode & 0o777 == 0o600
