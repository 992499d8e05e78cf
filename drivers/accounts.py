"""Who a user is, in the words a permission message needs: one place for the agent and its drivers.

Why in ``drivers``: discovery (here) and the agent both name the user a refusal is about, and the agent may
import drivers but not the other way round.
"""

from __future__ import annotations

import os
import pwd


def login(uid: int | None = None) -> str:
    """The login name of ``uid`` (this process's effective user by default) as chown, usermod and install
    take it: the number when the user has no name."""
    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def user_name(uid: int | None = None) -> str:
    """``name (uid N)`` of a user id (this process's by default), for messages an installer acts on."""
    uid = os.getuid() if uid is None else uid
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
