"""udev rules for every USB reader libfprint supports, made from libfprint's own hwdb.

libfprint ships ``60-autosuspend-libfprint-2.hwdb`` listing, driver by driver,
the USB ids it supports (and a section of known unsupported ones, skipped
here). ``python -m drivers.fprint.udev [HWDB]`` prints the rule lines that give
the agent's group access to them; systemd/60-capture-agent.rules holds its
output between the BEGIN/END markers, and a test checks it is current.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HWDB = Path("/lib/udev/hwdb.d/60-autosuspend-libfprint-2.hwdb")
BEGIN = "# BEGIN libfprint readers (python -m drivers.fprint.udev)"
END = "# END libfprint readers"
_SECTION = re.compile(r"^# Supported by libfprint driver (\S+)")
_ID = re.compile(r"^usb:v([0-9A-Fa-f]{4})p([0-9A-Fa-f]{4})\*")


def supported_ids(text: str) -> dict[str, list[tuple[str, str]]]:
    """{driver: [(vendor, product), ...]} from the hwdb text (lower-case hex), unsupported devices left out."""
    drivers: dict[str, list[tuple[str, str]]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            match = _SECTION.match(line)
            current = match.group(1) if match else None
            continue
        found = _ID.match(line)
        if found and current is not None:
            drivers.setdefault(current, []).append((found.group(1).lower(), found.group(2).lower()))
    return drivers


def rules(text: str) -> str:
    lines = [BEGIN]
    for driver, ids in sorted(supported_ids(text).items()):
        lines.append(f"# libfprint driver {driver}")
        lines += [
            f'SUBSYSTEM=="usb", ENV{{DEVTYPE}}=="usb_device", ATTR{{idVendor}}=="{v}", ATTR{{idProduct}}=="{p}", '
            'GROUP="capture-readers", MODE="0660"'
            for v, p in ids
        ]
    lines.append(END)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the rules made from HWDB (or the hwdb file given); a usage or a missing file is one error line.

    Why not a traceback: ``--help`` was read as the hwdb's path, and a machine without libfprint
    (where the hwdb is absent) got FileNotFoundError's traceback instead of what to install.
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m drivers.fprint.udev",
        description="Print the udev rule lines that give the capture-readers group every USB reader libfprint "
        "supports, from libfprint's hwdb; systemd/60-capture-agent.rules holds them between the BEGIN/END markers.",
    )
    parser.add_argument("hwdb", nargs="?", type=Path, default=HWDB, help=f"libfprint's hwdb file (default {HWDB})")
    args = parser.parse_args(argv)
    try:
        text = args.hwdb.read_text()
    except OSError as exc:
        fix = "install libfprint (apt-get install libfprint-2-2), or give the path of its hwdb file"
        print(f"{parser.prog}: error: cannot read {args.hwdb}: {exc.strerror or exc} (fix: {fix})", file=sys.stderr)
        return 2
    sys.stdout.write(rules(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
