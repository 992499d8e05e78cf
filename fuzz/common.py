"""What every harness shares: splitting fuzz bytes, the atheris entry point, FUZZ_KEEP_GOING's findings.

atheris is imported only inside :func:`main`, so the harnesses and the corpus
replay run without it (``pip install .[fuzz]`` brings it for real fuzzing).
"""

from __future__ import annotations

import hashlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
FUZZ_DIR = ROOT / "fuzz"
CORPUS = FUZZ_DIR / "corpus"
# The project's own packages: the innermost frame in one of them is where a finding happened.
PROJECT_PACKAGES = ("agent", "biometrics", "drivers", "protocol", "simulators", "verifier")


T = TypeVar("T")


class SplitDependence(AssertionError):
    """A sans-I/O codec gave other events for the same bytes fed in other pieces: a finding of its own."""


def splits(data: bytes, sizes: bytes) -> Iterator[bytes]:
    """``data`` in pieces whose lengths cycle through ``sizes`` (each byte a length 1..256): any split at all."""
    lengths = [b + 1 for b in sizes] or [len(data) or 1]
    at, i = 0, 0
    while at < len(data):
        step = lengths[i % len(lengths)]
        yield data[at : at + step]
        at, i = at + step, i + 1


class Draw:
    """Fuzz bytes read front to back as choices, lengths and strings: what a harness's build mode builds from.

    The same idea as atheris.FuzzedDataProvider, in pure Python: the harness modules
    import no atheris (the corpus replay runs without it), and the layout is fixed
    and documented, so fuzz/make_corpus.py can write a seed that builds what it names.
    Past the end every read is 0 or empty: a short input still builds something.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def more(self) -> bool:
        """Whether any byte is left."""
        return self.at < len(self.data)

    def byte(self) -> int:
        """The next byte (0 past the end)."""
        if self.at >= len(self.data):
            return 0
        self.at += 1
        return self.data[self.at - 1]

    def pick(self, options: Sequence[T]) -> T:
        """One of ``options``, by the next byte modulo their number."""
        return options[self.byte() % len(options)]

    def take(self, count: int) -> bytes:
        """Up to ``count`` next bytes."""
        out = self.data[self.at : self.at + count]
        self.at += len(out)
        return out

    def blob(self) -> bytes:
        """A length byte, then that many bytes."""
        return self.take(self.byte())

    def text(self, repeats: tuple[int, int, int, int] = (1, 1, 16, 128)) -> str:
        """A string: a form byte, a length byte, that many bytes.

        Form bits 0-1 say how the bytes become characters: ASCII (each byte's low 7
        bits), UTF-8, UTF-16-LE (any BMP character: CJK, RTL, combining marks), Latin-1
        (undecodable bytes become U+FFFD); bits 4-5 pick how many times the string is
        repeated from ``repeats``, so a short input reaches a very long value.
        """
        form, raw = self.byte(), self.blob()
        kind = form & 3
        if kind == 0:
            text = bytes(b & 0x7F for b in raw).decode("ascii")
        elif kind == 1:
            text = raw.decode("utf-8", "replace")
        elif kind == 2:
            text = raw.decode("utf-16-le", "replace")
        else:
            text = raw.decode("latin-1")
        return text * repeats[form >> 4 & 3]


def _project_frame(exc: BaseException) -> str | None:
    """``package/module.py:line in function`` of the deepest traceback frame in the project's code, if any."""
    where = None
    for frame in traceback.extract_tb(exc.__traceback__):
        try:
            rel = Path(frame.filename).resolve().relative_to(ROOT)
        except ValueError:
            continue
        if rel.parts and rel.parts[0] in PROJECT_PACKAGES:
            where = f"{rel.as_posix()}:{frame.lineno} in {frame.name}"
    return where


def innermost_project_frame(exc: BaseException) -> str:
    """Where ``exc`` happened in the project's code; else the last frame of its traceback (a harness's own check)."""
    where = _project_frame(exc)
    if where is not None:
        return where
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno} in {last.name}"


def signature(exc: BaseException) -> str:
    """One finding: the exception type and its innermost project frame (the line, not the message).

    A harness that re-raises what escaped in another thread (the local API's handler) raises its own
    exception from the original: then the original's type and frame are the finding's.
    """
    cause = exc.__cause__
    if _project_frame(exc) is None and cause is not None:
        kind = f"{type(exc).__name__}<-{type(cause).__module__}.{type(cause).__qualname__}"
        return f"{kind} @ {innermost_project_frame(cause)}"
    return f"{type(exc).__module__}.{type(exc).__qualname__} @ {innermost_project_frame(exc)}"


class FindingRecorder:
    """FUZZ_KEEP_GOING=1: each distinct finding is written once (input, traceback), and fuzzing goes on."""

    def __init__(self, harness: str, directory: Path) -> None:
        self.harness = harness
        self.directory = directory
        self.seen: set[str] = set()
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.txt"):  # a rerun does not write the same finding again
            first = old.read_text(errors="replace").splitlines()[:1]
            if first:
                self.seen.add(first[0])

    def record(self, data: bytes, exc: BaseException) -> bool:
        """Write the finding if it is new; whether it was."""
        sig = signature(exc)
        if sig in self.seen:
            return False
        self.seen.add(sig)
        name = hashlib.sha256(sig.encode()).hexdigest()[:12]
        (self.directory / f"{name}.bin").write_bytes(data)
        text = "".join(traceback.format_exception(exc))
        (self.directory / f"{name}.txt").write_text(f"{sig}\n\n{text}")
        print(f"FINDING {self.harness}: {sig} -> {self.directory / name}.bin", file=sys.stderr, flush=True)
        return True


def keep_going(harness: str, test_one_input: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """``test_one_input`` that records findings instead of stopping, when FUZZ_KEEP_GOING=1."""
    if os.environ.get("FUZZ_KEEP_GOING") != "1":
        return test_one_input
    directory = Path(os.environ.get("FUZZ_FINDINGS_DIR", FUZZ_DIR / "findings")) / harness
    recorder = FindingRecorder(harness, directory)

    def wrapped(data: bytes) -> None:
        try:
            test_one_input(data)
        except Exception as exc:  # everything a harness lets through is a finding
            recorder.record(data, exc)

    return wrapped


def main(harness: str, test_one_input: Callable[[bytes], None], argv: list[str] | None = None) -> None:
    """Fuzz ``test_one_input`` with atheris; libFuzzer's flags pass through (``-max_total_time=300``).

    The harness's dictionary (``fuzz/dicts/<harness>.dict``: tokens of its format) is used when there is one.
    Without a corpus directory in the arguments, new inputs go to ``fuzz/work/<harness>/`` (not committed) and the
    committed seeds of ``fuzz/corpus/<harness>/`` are read beside them.
    """
    import atheris  # the [fuzz] extra

    args = list(sys.argv if argv is None else argv)
    if not any(not a.startswith("-") for a in args[1:]):
        work = FUZZ_DIR / "work" / harness
        work.mkdir(parents=True, exist_ok=True)
        seeds = CORPUS / harness
        seeds.mkdir(parents=True, exist_ok=True)
        args += [str(work), str(seeds)]
    dictionary = FUZZ_DIR / "dicts" / f"{harness}.dict"
    if dictionary.exists() and not any(a.startswith("-dict=") for a in args):
        args.append(f"-dict={dictionary}")
    atheris.instrument_all()  # the project's modules are imported by now: coverage of their bytecode
    atheris.Setup(args, keep_going(harness, test_one_input))
    atheris.Fuzz()
