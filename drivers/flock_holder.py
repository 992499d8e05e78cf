"""Who holds a ``flock`` on a file, from /proc/locks: for a refusal that names the process to stop.

Why the kernel's table and not a PID file: a file's PID may be stale (its writer killed, or unable to write on a
read-only disk), and a fix saying `kill PID` must name the process that holds the lock now.
"""

from __future__ import annotations

import os


def flock_holder(info: os.stat_result) -> int | None:
    """The PID holding a flock on the file ``info`` describes, or None when /proc/locks cannot tell."""
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            lines = locks.read(1 << 20).splitlines()
    except OSError:
        return None
    wanted = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter, not the holder
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted and fields[4].isdigit():
            return int(fields[4])
    return None
