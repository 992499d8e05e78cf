"""Shrink a finding's input while it gives the same finding: ``python -m fuzz.minimize HARNESS INPUT [-o OUT]``.

The same finding is the same signature (exception type and innermost project
frame, :func:`fuzz.common.signature`). Chunks are cut, halving their size down to
one byte, then bytes are replaced by ``0`` (``b"0"``: a digit, so a number stays a
number) where that keeps the finding. Pure Python and in-process, like the replay:
no atheris needed. A reproducer for a report or a test, not a replacement for
reading the traceback.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from fuzz.common import signature
from fuzz.replay import harness


def _finding(test_one_input: Callable[[bytes], None], data: bytes) -> str | None:
    try:
        test_one_input(data)
    except Exception as exc:  # a finding, whatever it is
        return signature(exc)
    return None


def minimize(test_one_input: Callable[[bytes], None], data: bytes, budget_s: float = 60.0) -> bytes:
    """The shortest ``data`` found within ``budget_s`` that still gives ``data``'s finding."""
    wanted = _finding(test_one_input, data)
    if wanted is None:
        raise SystemExit("minimize: error: the input gives no finding (fix: give a finding's input and its harness)")
    end = time.monotonic() + budget_s
    chunk = max(1, len(data) // 2)
    while chunk >= 1 and time.monotonic() < end:
        at, cut = 0, False
        while at < len(data) and time.monotonic() < end:
            candidate = data[:at] + data[at + chunk :]
            if _finding(test_one_input, candidate) == wanted:
                data, cut = candidate, True
            else:
                at += chunk
        if not cut:
            chunk //= 2
    for at in range(len(data)):
        if time.monotonic() >= end:
            break
        candidate = data[:at] + b"0" + data[at + 1 :]
        if data[at : at + 1] != b"0" and _finding(test_one_input, candidate) == wanted:
            data = candidate
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.minimize", description=__doc__.split("\n\n")[0])
    parser.add_argument("harness")
    parser.add_argument("input", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="where to write it (default: INPUT.min)")
    parser.add_argument("--seconds", type=float, default=60.0, help="time to spend (default 60)")
    args = parser.parse_args(argv)
    data = minimize(harness(args.harness), args.input.read_bytes(), args.seconds)
    out = args.output or args.input.with_name(args.input.name + ".min")
    out.write_bytes(data)
    print(f"{out}: {len(data)} bytes: {data[:200]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
