"""DESIGN.md's package table, checked on every import statement of the code (lazy ones included).

A package importing what the table does not let it import couples what was
meant to stay apart: an algorithm tested by a simulator built from that same
algorithm, a verifier depending on device drivers, an agent on the verifier.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"agent", "bench", "biometrics", "drivers", "protocol", "simulators", "tests", "verifier"}

# Which of our packages each may import (itself always), from DESIGN.md's table.
MAY_IMPORT = {
    "protocol": set(),
    "biometrics": set(),
    "drivers": set(),
    "simulators": {"drivers"},
    "agent": {"protocol", "biometrics", "drivers"},
    "verifier": {"protocol", "biometrics"},
}

# The one exception, and why: `make demo` tells the whole story with simulated
# hardware, and its face chapter drives the camera simulator in-process (a person
# turning her head on cue). The daemon itself never imports a simulator.
DEMO_MODULES = {"agent/demo.py", "agent/demo_faces.py", "agent/demo_story.py"}


def imports_of(source: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names imported from it) for each absolute import in ``source``."""
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [alias.name for alias in node.names]


def violations(package: str) -> list[str]:
    found = []
    for source in sorted((ROOT / package).rglob("*.py")):
        where = source.relative_to(ROOT).as_posix()
        allowed = MAY_IMPORT[package] | {package} | ({"simulators"} if where in DEMO_MODULES else set())
        for line, module, names in imports_of(source):
            top = module.split(".")[0]
            if top in OURS and top not in allowed:
                found.append(f"{where}:{line} imports {module}")
            elif package == "simulators" and top == "drivers" and any(name.startswith("_") for name in names):
                found.append(f"{where}:{line} takes private names {names} from {module}")
    return found


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_each_package_imports_only_what_the_design_lets_it(package: str) -> None:
    assert violations(package) == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path, monkeypatch) -> None:
    """The rule above must be able to fail: a verifier module importing a driver is reported."""
    fake_root = tmp_path / "root"
    (fake_root / "verifier").mkdir(parents=True)
    (fake_root / "verifier" / "bad.py").write_text("def f():\n    from drivers.zfm import codec\n")
    monkeypatch.setitem(globals(), "ROOT", fake_root)
    assert violations("verifier") == ["verifier/bad.py:2 imports drivers.zfm"]


def test_the_simulators_ground_truth_uses_the_extractors_minutia_codes() -> None:
    """The synthetic fingers keep their own copy of the two codes: it must stay equal to the extractor's."""
    from biometrics.fingerprint import types
    from simulators import fingers

    assert (fingers.KIND_ENDING, fingers.KIND_BIFURCATION) == (types.KIND_ENDING, types.KIND_BIFURCATION)
