"""Every committed fuzz input (fuzz/corpus/<harness>/) goes through its harness in-process, without atheris.

A harness returns quietly when the project answers its input with its own typed
error; anything else escaping is a finding. The corpus holds seeds and the
inputs of findings since fixed, so this is the regression test of each fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz import HARNESSES
from fuzz.common import CORPUS, FindingRecorder, signature
from fuzz.replay import harness, inputs, replay
from protocol.problems import problem_type

CASES = [(name, path) for name in HARNESSES for path in inputs([CORPUS / name])]


def test_every_harness_has_seeds_and_every_corpus_folder_a_harness() -> None:
    folders = {p.name for p in CORPUS.iterdir() if p.is_dir()}
    assert folders == set(HARNESSES)
    assert all(any((CORPUS / name).iterdir()) for name in HARNESSES)


# The EST findings are certificates a fuzzer mangled: cryptography warns, loading them, of what a later release
# will refuse (a serial number that is not positive, PKCS#7 in BER); the agent refuses them either way.
@pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")
@pytest.mark.filterwarnings("ignore:PKCS#7 certificates could not be parsed as DER")
@pytest.mark.parametrize(("name", "path"), CASES, ids=[f"{n}/{p.name}" for n, p in CASES])
def test_corpus_input_gives_no_finding(name: str, path: Path) -> None:
    exc = replay(harness(name), path)
    assert exc is None, f"{path.relative_to(CORPUS.parent.parent)}: {signature(exc)}: {exc}"


def test_keep_going_records_each_distinct_finding_once_where_the_project_raised_it(tmp_path: Path) -> None:
    """FUZZ_KEEP_GOING's recorder: one file pair per (exception type, innermost project frame), whatever the input."""

    def unknown_slug(data: bytes) -> None:
        problem_type(data.decode())  # a KeyError from inside protocol/problems.py for any unregistered slug

    recorder = FindingRecorder("example", tmp_path)
    for data in (b"no-such-slug", b"another"):
        exc = replay(unknown_slug, _written(tmp_path / "in", data))
        assert exc is not None
        recorder.record(data, exc)
    assert len(list(tmp_path.glob("*.bin"))) == 1
    (text,) = tmp_path.glob("*.txt")
    first = text.read_text().splitlines()[0]
    assert first.startswith("builtins.KeyError @ protocol/problems.py:")
    assert first.endswith(" in problem_type")
    assert FindingRecorder("example", tmp_path).seen == {first}  # a rerun does not write it again


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_finding_re_raised_from_another_thread_is_named_by_its_original(tmp_path: Path) -> None:
    """The local API harness re-raises what escaped in the server's thread from it: the original names the finding."""

    class Escaped(Exception):
        pass

    def escaped(data: bytes) -> None:
        try:
            problem_type(data.decode())
        except KeyError as exc:
            raise Escaped("escaped the handler") from exc

    exc = replay(escaped, _written(tmp_path / "in", b"no-such-slug"))
    assert exc is not None
    assert signature(exc).startswith("Escaped<-builtins.KeyError @ protocol/problems.py:")
