"""Who this process is and which folder shuts it out: the words of every permission error the agent gives.

Why a module of its own: the config file, the state directory and the local API's socket
are all opened by the agent's unprivileged user, and each refusal must name the user and
the folder to open, not only "Permission denied"; this module imports nothing heavy, so the
config (loaded before anything else) can use it too.
"""

from __future__ import annotations

import os
from pathlib import Path

from drivers.accounts import user_name

__all__ = ["closed_parent", "user_name"]


def closed_parent(path: Path) -> Path | None:
    """The first folder above ``path`` (from the root down) this user may not pass through (search, x), or None.

    Why: below such a folder every stat, open and ``Path.exists()`` fails with EACCES, which says
    neither where nor what to open; the fix is that folder's mode, not the file's.
    """
    for folder in reversed(path.absolute().parents):
        if not os.access(folder, os.X_OK):
            return folder
    return None
