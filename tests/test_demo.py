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
    from agent.demo_faces import faces_folder

    if faces_folder() is None:  # the demo says why it skipped the faces
        assert "skipped: the ORL faces are not at" in out
    else:
        for needle in (
            "liveness challenge from the verifier's nonce: turn_head_",
            "camera: Slowly turn your head to your",
            "Ana's face: enrolled, 3 embeddings",
            "s from her face appearing",
            "verifier asks for more: face (policy_requires_face)",
            "): a finger and her face",
            "refused on the device, nothing sent: the liveness challenge failed: no movement was seen",
        ):
            assert needle in out, needle
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
    if faces_folder() is not None:
        face = next(lines for name, lines in sections.items() if name.startswith("Ana verifies by face"))
        assert any(line.startswith("decision: accept") for line in face), face
