"""The verifier's modules use each other through public names only.

A module that calls another's ``_name`` depends on what that module may change
without notice: the routes (biometric, faces, sensor assertions) share their
gate, refusals and checks as public methods with docstrings instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

VERIFIER = Path(__file__).resolve().parent.parent / "verifier"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def cross_module_private_uses(source: str) -> list[str]:
    """``from verifier.x import _name`` and ``obj._name`` where ``obj`` is not the module's own self, cls or super()."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("verifier"):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue  # a method overriding its base's (hypercorn's protocol in verifier/server.py)
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scan_finds_what_it_looks_for() -> None:
    source = (
        "from verifier.biometric import _locked\n"
        "class A:\n    def f(self):\n        self.bio._refused(); self._own(); super()._read()\n"
    )
    assert cross_module_private_uses(source) == ["line 1: import _locked", "line 4: self.bio._refused"]


def test_no_verifier_module_reaches_into_another_modules_private_names() -> None:
    uses = {
        path.name: found
        for path in sorted(VERIFIER.glob("*.py"))
        if (found := cross_module_private_uses(path.read_text()))
    }
    assert uses == {}, "use or add a public function or method with a docstring: " + repr(uses)
