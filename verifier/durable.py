"""Making a file, or a name in a folder, survive a power cut: fsync, the one way the kernel promises it.

Why a module: the enrollment key and a backup both report success only once what they wrote is on disk,
and a new name lasts only when its folder is flushed too (rename and link are changes of the folder).
"""

from __future__ import annotations

import os
from pathlib import Path


def flush(path: Path) -> None:
    """fsync ``path``: a file's bytes, or a folder's entries (a name made or renamed in it)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
