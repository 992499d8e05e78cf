"""Replay inputs through a harness in-process, without atheris: ``python -m fuzz.replay HARNESS [PATH ...]``.

PATH is a file or a directory of inputs (default: the harness's committed corpus,
``fuzz/corpus/HARNESS/``). Each input's outcome is one line; a finding prints its
signature and traceback. Exit status 1 when any input was a finding. What a
fuzzing run found goes through here to be checked once fixed, and then into the
corpus (fuzz/README.md).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from fuzz import HARNESSES
from fuzz.common import CORPUS, signature


def harness(name: str) -> Callable[[bytes], None]:
    """The ``TestOneInput`` of harness ``name`` (a module of fuzz/)."""
    if name not in HARNESSES:
        raise SystemExit(f"replay: error: no harness {name!r} (fix: one of {', '.join(HARNESSES)})")
    return importlib.import_module(f"fuzz.{name}").TestOneInput


def close(name: str) -> None:
    """End what harness ``name`` started for its inputs (a server, a loop thread), if it started anything.

    Why: a harness keeps its server for the life of a fuzzing process (one per input would be most of the run), so
    a replay inside a test process left them running, listening, for every later test of that process.
    """
    closer = getattr(importlib.import_module(f"fuzz.{name}"), "close", None)
    if closer is not None:
        closer()


def inputs(paths: list[Path]) -> Iterator[Path]:
    """Every file named, and every file in each directory named (sorted: a replay is repeatable)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            yield path
        else:
            raise SystemExit(f"replay: error: {path} does not exist (fix: give an input file or a folder of them)")


def replay(test_one_input: Callable[[bytes], None], path: Path) -> BaseException | None:
    """The finding ``path``'s bytes give, or None when the harness took them quietly."""
    try:
        test_one_input(path.read_bytes())
    except Exception as exc:  # a finding: anything the harness let through
        return exc
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("harness", help=f"one of {', '.join(HARNESSES)}")
    parser.add_argument("paths", nargs="*", type=Path, help="input files or folders (default: its corpus)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print findings only")
    args = parser.parse_args(argv)
    test_one_input = harness(args.harness)
    found = 0
    try:
        for path in inputs(args.paths or [CORPUS / args.harness]):
            exc = replay(test_one_input, path)
            if exc is None:
                if not args.quiet:
                    print(f"ok      {path}")
                continue
            found += 1
            print(f"FINDING {path}: {signature(exc)}")
            traceback.print_exception(exc, file=sys.stdout)
    finally:
        close(args.harness)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
