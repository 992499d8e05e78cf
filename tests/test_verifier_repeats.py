"""A repeated POST (the same Idempotency-Key, the same bytes) is answered with its first answer, step-ups included.

Why: HTTP/2 GOAWAY can cut a request the verifier already handled, and the agent
then sends it again with the same key (DESIGN.md, protocol). A step-up's 401 is
an answer the verifier committed (its nonce spent, the step-up opened): a retry
told "nonce used" instead loses the step-up, and the person starts over.
"""

from __future__ import annotations

import uuid

import pytest

from protocol import endpoints
from tests.test_biometric_api import Device, enroll_fingers, wire


def sent_twice(provisioned, synthetic_templates, read):
    """alice enrolled, then one verification of her sent twice with the same Idempotency-Key and the same bytes:
    ``read`` of each answer, the first and the repeat."""
    device = Device(*provisioned)
    enroll_fingers(device, synthetic_templates, "alice", [0, 2])

    async def steps(client):
        body = await device.signed(client, endpoints.VERIFICATIONS, subject="alice",
                                   templates=[wire(synthetic_templates[0][2])])
        key = str(uuid.uuid4())
        first = await client.request("POST", endpoints.VERIFICATIONS, json=body, idempotency_key=key)
        again = await client.request("POST", endpoints.VERIFICATIONS, json=body, idempotency_key=key)
        return read(first), read(again)

    return device.run(steps)


def test_a_repeated_verification_gets_the_same_step_up(provisioned, synthetic_templates) -> None:
    first, again = sent_twice(provisioned, synthetic_templates, lambda answer: (
        answer.status_code, answer.json(), answer.headers.get("www-authenticate")))
    assert first[0] == 401 and first[1]["step_up"], first  # the device's first use asks a second finger
    assert again == first, again


@pytest.mark.verifier_settings("step_up_first_use = false")  # the first verification is decided, not stepped up
def test_a_repeated_verification_carries_its_own_server_timing_not_the_first_matching(
    provisioned, synthetic_templates
) -> None:
    """The first verification was matched (``Server-Timing: match;dur=...``); its repeat is answered from the
    store, with nothing matched. Before, the repeat said the first one's matching time as its own (the stored
    answer kept the header), so an operator reading the agent's timings saw matching that never ran. The repeat
    carries the verifier's own ``app`` entry for the lookup, and the same answer. (It was an identification's:
    those answer without Server-Timing now, tests/test_verifier_gallery_timing.py.)"""
    from agent.client import server_timing

    first, again = sent_twice(provisioned, synthetic_templates, lambda answer: (
        answer.status_code, answer.json(), server_timing(answer), answer.headers.get_list("server-timing")))
    assert first[0] == 200 and first[1]["decision"] == "accept", first
    assert "match" in first[2] and "app" in first[2], first[2]
    assert again[:2] == first[:2], again  # the same answer
    assert "match" not in again[2], f"the repeat said the first one's matching: {again[3]}"
    assert "app" in again[2], again[3]  # its own handling
