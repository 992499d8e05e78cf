"""The durations a device reads from the verifier's answers never tell it how large a gallery is.

``Server-Timing`` on an identification's answer said ``match;dur=...`` (and ``app``, its whole handling):
both grow with the templates the probe is compared with, so a device read its groups' gallery size from them
and saw each enrollment into it, which the 422 ``identification-unreachable`` and the decade-rounded threshold
were changed not to tell. An enrollment's duplicate search (every group's templates) said the same. The
durations are the operator's, in the verifier's log; a verification (the claimed subject's own templates)
keeps its ``match`` entry.
"""

from __future__ import annotations

import json

import httpx
import pytest

from agent.client import server_timing
from protocol import endpoints
from tests.test_biometric_api import Device, wire

NO_FIRST_USE = pytest.mark.verifier_settings("step_up_first_use = false")  # a verification answers 200 at once


def _log(verifier, event: str) -> list[dict]:
    lines = verifier.log_path.read_text().splitlines()
    return [r for r in (json.loads(line) for line in lines if line.startswith("{")) if r.get("event") == event]


@NO_FIRST_USE
def test_identification_and_enrollment_answers_carry_no_duration_and_the_log_has_it(
    provisioned, verifier, synthetic_templates
) -> None:
    device = Device(*provisioned)
    t = synthetic_templates

    async def steps(client):
        answers = {}
        for subject, finger in (("alice", 0), ("bob", 1)):
            path = f"/v1/subjects/{subject}/enrollments"
            body = await device.signed(client, path, templates=[wire(x) for x in t[finger][:2]])
            answers[f"enroll {subject}"] = await client.request("POST", path, json=body)
        body = await device.signed(client, endpoints.IDENTIFICATIONS, templates=[wire(t[0][2])])
        answers["identify"] = await client.request("POST", endpoints.IDENTIFICATIONS, json=body)
        body = await device.signed(client, endpoints.VERIFICATIONS, subject="alice", templates=[wire(t[0][2])])
        answers["verify"] = await client.request("POST", endpoints.VERIFICATIONS, json=body)
        return {name: (r.status_code, r.json(), r.headers.get_list("server-timing")) for name, r in answers.items()}

    answers = device.run(steps)
    status, found, timing = answers["identify"]
    assert status == 200 and found["candidates"][0]["subject"] == "alice", found
    assert timing == [], f"an identification's answer told its matching time: {timing}"
    for name in ("enroll alice", "enroll bob"):
        status, _, timing = answers[name]
        assert status == 201 and timing == [], (name, timing)  # bob's duplicate search saw alice's templates
    status, decided, timing = answers["verify"]
    assert status == 200 and decided["decision"] == "accept", decided
    assert "match" in server_timing_of(timing), timing  # the claimed subject's own templates: still told
    identified = _log(verifier, "identification_attempt")
    assert identified and isinstance(identified[-1]["match_ms"], float), identified  # the operator still has it
    enrolled = [r for r in _log(verifier, "enrollment") if r.get("subject") == "bob"]
    assert enrolled and isinstance(enrolled[-1]["match_ms"], float), enrolled


def server_timing_of(values: list[str]) -> dict[str, float]:
    """``Server-Timing`` header values as the agent reads them (agent.client.server_timing)."""
    return server_timing(httpx.Response(200, headers=[("server-timing", v) for v in values]))
