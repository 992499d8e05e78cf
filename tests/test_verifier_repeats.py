"""A repeated POST (the same Idempotency-Key, the same bytes) is answered with its first answer, step-ups included.

Why: HTTP/2 GOAWAY can cut a request the verifier already handled, and the agent
then sends it again with the same key (DESIGN.md, protocol). A step-up's 401 is
an answer the verifier committed (its nonce spent, the step-up opened): a retry
told "nonce used" instead loses the step-up, and the person starts over.
"""

from __future__ import annotations

import uuid

from protocol import endpoints
from tests.test_biometric_api import Device, enroll_fingers, wire


def test_a_repeated_verification_gets_the_same_step_up(provisioned, synthetic_templates) -> None:
    device = Device(*provisioned)
    enroll_fingers(device, synthetic_templates, "alice", [0, 2])

    async def steps(client):
        body = await device.signed(client, endpoints.VERIFICATIONS, subject="alice",
                                   templates=[wire(synthetic_templates[0][2])])
        key = str(uuid.uuid4())
        first = await client.request("POST", endpoints.VERIFICATIONS, json=body, idempotency_key=key)
        again = await client.request("POST", endpoints.VERIFICATIONS, json=body, idempotency_key=key)
        return (first.status_code, first.json(), first.headers.get("www-authenticate")), \
            (again.status_code, again.json(), again.headers.get("www-authenticate"))

    first, again = device.run(steps)
    assert first[0] == 401 and first[1]["step_up"], first  # the device's first use asks a second finger
    assert again == first, again
