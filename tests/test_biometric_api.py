"""Signed biometric requests end to end over real mTLS: enroll, verify, identify, and the refusals."""

from __future__ import annotations

import asyncio
import base64
import copy
import sqlite3

import pytest

from agent.client import VerifierClient
from agent.errors import VerifierError
from agent.signing import sign_request
from biometrics.fingerprint.iso19794_2 import encode


def wire(template) -> dict:
    return {"format": "iso19794-2:2005", "data": base64.b64encode(encode(template)).decode()}


class Device:
    """A provisioned device making signed requests, as the agent's sessions will."""

    def __init__(self, config, identity) -> None:
        self.config, self.identity = config, identity
        self.key = identity.private_key()

    async def signed(self, client: VerifierClient, path: str, **fields) -> dict:
        nonce = (await client.call("POST", "/v1/challenges", json={}))["nonce"]
        return sign_request(self.key, "POST", path, {"nonce": nonce, **fields})

    def run(self, steps):
        async def go():
            async with VerifierClient(self.config, self.identity) as client:
                return await steps(client)

        return asyncio.run(go())


@pytest.fixture
def device(provisioned) -> Device:
    return Device(*provisioned)


def enroll(device: Device, templates: dict, subjects: dict[str, int]) -> None:
    async def steps(client):
        for subject, finger in subjects.items():
            path = f"/v1/subjects/{subject}/enrollments"
            body = await device.signed(client, path, templates=[wire(t) for t in templates[finger][:2]])
            assert (await client.call("POST", path, json=body))["templates"] == 2

    device.run(steps)


def test_enroll_verify_genuine_and_impostor_and_identify(device, synthetic_templates) -> None:
    enroll(device, synthetic_templates, {"alice": 0, "bob": 1, "carol": 2})

    async def steps(client):
        probe_alice = [wire(synthetic_templates[0][2])]  # a third impression, not enrolled
        genuine = await client.call(
            "POST",
            "/v1/verifications",
            json=await device.signed(client, "/v1/verifications", subject="alice", templates=probe_alice),
        )
        impostor = await client.call(
            "POST",
            "/v1/verifications",
            json=await device.signed(client, "/v1/verifications", subject="bob", templates=probe_alice),
        )
        found = await client.call(
            "POST",
            "/v1/identifications",
            json=await device.signed(client, "/v1/identifications", templates=[wire(synthetic_templates[1][2])]),
        )
        stranger = await client.call(
            "POST",
            "/v1/identifications",
            json=await device.signed(client, "/v1/identifications", templates=[wire(synthetic_templates[3][0])]),
        )
        return genuine, impostor, found, stranger

    genuine, impostor, found, stranger = device.run(steps)
    assert genuine["decision"] == "accept" and genuine["score"] >= genuine["threshold"]
    assert impostor["decision"] == "reject" and impostor["score"] < impostor["threshold"]
    assert found["candidates"][0]["subject"] == "bob"
    assert stranger["candidates"] == []


def test_a_replayed_request_is_refused(device, synthetic_templates) -> None:
    enroll(device, synthetic_templates, {"alice": 0})

    async def steps(client):
        body = await device.signed(
            client, "/v1/verifications", subject="alice", templates=[wire(synthetic_templates[0][2])]
        )
        first = await client.call("POST", "/v1/verifications", json=body)
        with pytest.raises(VerifierError) as info:
            await client.call("POST", "/v1/verifications", json=body)  # captured and sent again
        return first, info.value

    first, error = device.run(steps)
    assert first["decision"] == "accept"
    assert error.status == 409 and "already used" in str(error)


def test_a_template_altered_in_transit_is_refused(device, synthetic_templates) -> None:
    enroll(device, synthetic_templates, {"alice": 0})

    async def steps(client):
        body = await device.signed(
            client, "/v1/verifications", subject="alice", templates=[wire(synthetic_templates[1][0])]
        )
        altered = copy.deepcopy(body)
        altered["templates"] = [wire(synthetic_templates[0][2])]  # a proxy swaps in alice's finger
        await client.call("POST", "/v1/verifications", json=altered)

    with pytest.raises(VerifierError) as info:
        device.run(steps)
    assert info.value.status == 401 and "signature" in str(info.value)


def test_an_unknown_subject_gets_a_clear_answer(device, synthetic_templates) -> None:
    async def steps(client):
        body = await device.signed(
            client, "/v1/verifications", subject="nobody", templates=[wire(synthetic_templates[0][0])]
        )
        await client.call("POST", "/v1/verifications", json=body)

    with pytest.raises(VerifierError) as info:
        device.run(steps)
    assert info.value.status == 404 and "enroll the subject first" in info.value.fix


def test_a_malformed_template_is_a_typed_refusal(device) -> None:
    async def steps(client):
        body = await device.signed(
            client,
            "/v1/subjects/alice/enrollments",
            templates=[{"format": "iso19794-2:2005", "data": base64.b64encode(b"FMR\0junk").decode()}],
        )
        await client.call("POST", "/v1/subjects/alice/enrollments", json=body)

    with pytest.raises(VerifierError) as info:
        device.run(steps)
    assert info.value.status == 422 and "templates[0]" in str(info.value)


def test_the_database_holds_no_template_in_clear(device, synthetic_templates, verifier) -> None:
    enroll(device, synthetic_templates, {"alice": 0})
    records = [encode(t) for t in synthetic_templates[0][:2]]
    raw = b"".join(p.read_bytes() for p in verifier.pki_dir.iterdir() if p.name.startswith("verifier.sqlite"))
    with sqlite3.connect(verifier.pki_dir / "verifier.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM enrollments WHERE subject_id = 'alice'").fetchone()[0] == 2
    for record in records:
        assert record[:24] not in raw and record[24:60] not in raw  # header and first minutiae
    assert b"FMR\x00" not in raw
