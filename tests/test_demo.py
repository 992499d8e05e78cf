"""`make demo` keeps telling the whole story (a real run, every process stopped after)."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_tells_the_whole_story() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent.demo", "--port", "0"], capture_output=True, text=True, timeout=300
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    for needle in (
        "TLS version        TLSv1.3",
        "ALPN               h2",
        "Renewal: new key",
        "refused as it must be",  # the token used twice
        "ana: enrolled",
        "chloe: enrolled",
        "verifier asks for more: second_finger",
        "decision: accept",
        "decision: reject",
        "replay: refused (409",
        "network+match",
        "at its real speed, 115200 baud",  # the latency table's capture: the real line, not an unpaced one
        "match  ",
        "stopped; the temporary PKI and device state are deleted",
    ):
        assert needle in out, needle
    assert "UNEXPECTED" not in out
    # Every heading has its own lines under it, in the story's order (issue 11, item 14).
    sections: dict[str, list[str]] = {}
    heading = ""
    for line in out.splitlines():
        if line.startswith("== "):
            heading = line[3:]
            sections[heading] = []
        elif line.strip() and heading:
            sections[heading].append(line.strip())
    assert all(sections.values()), [name for name, lines in sections.items() if not lines]
    latency = next(lines for name, lines in sections.items() if name.startswith("Decision latency by phase"))
    assert latency[0].split() == ["phase", "median", "ms", "max", "ms"], latency
    renewal = next(lines for name, lines in sections.items() if name.startswith("Renewal"))
    assert not any("module on" in line for line in renewal)
    sensor = next(lines for name, lines in sections.items() if name.startswith("People at a simulated sensor"))
    assert sensor[0].startswith("module on ")
