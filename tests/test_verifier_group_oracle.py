"""A subject of a group the device may not act on reads, to that device, exactly as an id nobody is enrolled
under: verification, its challenge's precheck (which costs no finger) and a match-on-sensor assertion answer
both alike (status, problem type, detail and fix but for the id, the same headers), so a device cannot learn
which ids exist in groups it cannot see. The operator's audit line still says it was another group's."""

from __future__ import annotations

import json

import httpx
import pytest

from protocol import endpoints
from protocol.sensor import ReaderIdentity, SensorAssertion, SensorEnrollmentRequest, print_hash
from tests.test_biometric_api import Device, wire

READER = ReaderIdentity("virtual_device", "usb0")
PRINT = print_hash("alice's print on kiosk-1's sensor")
VARYING = {"date", "server-timing", "content-length"}  # the clock, the handling time, and the id's own length


@pytest.fixture
def device(provisioned) -> Device:
    return Device(*provisioned)


def _shape(response: httpx.Response, subject: str) -> tuple[int, dict, dict]:
    """What a device can compare of two answers: the status, the body with the id made neutral, the headers
    (but the time, the handling time and the length, which the id's own length changes)."""
    body = json.loads(response.text.replace(subject, "ID"))
    headers = {k: v for k, v in response.headers.items() if k.lower() not in VARYING}
    return response.status_code, body, headers


async def _enrolled_in_staff(device, client, subject: str, templates) -> None:
    """``subject`` enrolled in group staff with ``templates`` (201)."""
    path = f"/v1/subjects/{subject}/enrollments"
    body = await device.signed(client, path, group="staff", templates=[wire(x) for x in templates])
    assert (await client.request("POST", path, json=body)).status_code == 201


def test_another_group_s_subject_reads_as_an_unknown_id(device, verifier, synthetic_templates) -> None:
    t = synthetic_templates

    async def setup(client):
        await _enrolled_in_staff(device, client, "alice", t[0][:2])
        sensor = SensorEnrollmentRequest("sam", READER, PRINT, group="staff").body()  # sam: on the sensor only
        body = await device.signed(client, endpoints.SENSOR_ENROLLMENTS, **sensor)
        assert (await client.request("POST", endpoints.SENSOR_ENROLLMENTS, json=body)).status_code == 201

    device.run(setup)
    verifier.allow("kiosk-1", groups="default", sensor="accept")

    async def ask(client, subject: str, on_sensor: str) -> dict[str, httpx.Response]:
        out = {}
        for name, asked in (("precheck", {"operation": "verify", "subject": subject}),
                            ("face precheck", {"operation": "verify", "subject": subject, "modality": "face"})):
            out[name] = await client.request("POST", endpoints.CHALLENGES, json=asked)
        body = await device.signed(client, "/v1/verifications", subject=subject, templates=[wire(t[0][2])])
        out["verification"] = await client.request("POST", "/v1/verifications", json=body)
        assertion = SensorAssertion(on_sensor, READER, PRINT, "match").body()
        body = await device.signed(client, endpoints.SENSOR_VERIFICATIONS, **assertion)
        out["sensor verification"] = await client.request("POST", endpoints.SENSOR_VERIFICATIONS, json=body)
        return out

    async def both(client):
        return await ask(client, "alice", "sam"), await ask(client, "nobody", "nobody")

    hidden, unknown = device.run(both)
    for name in hidden:
        subject = "sam" if name.startswith("sensor") else "alice"
        assert _shape(hidden[name], subject) == _shape(unknown[name], "nobody"), name
        assert hidden[name].status_code == 404, name
    assert json.loads(hidden["verification"].text)["type"].endswith("/unknown-subject")
    assert json.loads(hidden["sensor verification"].text)["type"].endswith("/sensor-enrollment-unknown")

    # The operator's audit log names the group and why (the answers do not).
    lines = [json.loads(line) for line in verifier.log_path.read_text().splitlines() if line.startswith("{")]
    told = [line for line in lines if line.get("subject") in ("alice", "sam") and line.get("group") == "staff"
            and "group not allowed" in str(line.get("reason", ""))]
    assert {line["subject"] for line in told} == {"alice", "sam"} and len(told) >= 4
    assert all(line["audit"] and line["device_id"] == "kiosk-1" and line["status"] == 404 for line in told)
    assert not any(line.get("subject") in ("alice", "sam") and line.get("outcome") in ("accept", "reject", "step_up")
                   for line in lines)


def test_an_unknown_id_reads_alike_to_a_device_that_may_not_see_the_default_group(device, verifier) -> None:
    """A device allowed only 'staff' asking for an id nobody holds: 404 unknown-subject, as for any hidden id
    (was 403 group-not-allowed: the id counted as 'default', a group it may not see)."""
    verifier.allow("kiosk-1", groups="staff")

    async def ask(client):
        return await client.request("POST", endpoints.CHALLENGES, json={"operation": "verify", "subject": "nobody"})

    answer = device.run(ask)
    assert answer.status_code == 404 and json.loads(answer.text)["type"].endswith("/unknown-subject")


def test_verification_of_a_visible_subject_is_unchanged(device, verifier, synthetic_templates) -> None:
    """The device's own group: its subject is matched as before (a first use asks for a step-up)."""
    t = synthetic_templates

    async def setup(client):
        await _enrolled_in_staff(device, client, "dana", t[0][:2])

    device.run(setup)
    verifier.allow("kiosk-1", groups="staff")

    async def verify(client):
        body = await device.signed(client, "/v1/verifications", subject="dana", templates=[wire(t[0][2])])
        return await client.request("POST", "/v1/verifications", json=body)

    assert device.run(verify).status_code == 401

