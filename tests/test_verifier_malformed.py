"""Malformed content on every signed biometric route, against a real verifier over mTLS: an audited refusal.

A device that passed the access rule, the rate and the signature, and then sends
a template that does not parse (bad base64, a truncated or wrong-version ISO/IEC
19794-2 record, a NaN or short face embedding, fingers and faces together, a
body that is not JSON), or a claimed subject, a group or a challenge request
that is none, is refused with a typed problem whose fix names what to send, and
the refusal is an audit event naming the route (for templates the item and the
check that failed): never the bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from dataclasses import dataclass

from agent.devstack import LocalVerifier, provision_device
from biometrics.face import challenge_for
from biometrics.fingerprint.iso19794_2 import encode
from protocol import endpoints
from protocol.face_template import wire_faces, wire_liveness
from protocol.signing import sign_request
from protocol.templates import wire_template
from tests.test_biometric_api import Device
from tests.test_verifier_faces import capture


def enrollments(subject: str) -> str:
    return f"/v1/subjects/{subject}/enrollments"


def audit(verifier) -> list[dict]:
    lines = verifier.log_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def wrong_version(record: bytes) -> bytes:
    return record[:4] + b" 30\x00" + record[8:]


def nan_face() -> bytes:
    good = capture(1, 0)
    return good[:-4] + struct.pack("<f", math.nan)


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    fields: dict  # the body's content (the nonce and the signature are added)
    slug: str
    fix_says: str
    reason: str
    item: str
    secret: bytes = b""  # the malformed bytes, which must appear nowhere in the log


async def sent(device: Device, client, case: Case) -> tuple[int, dict]:
    nonce = (await client.call("POST", endpoints.CHALLENGES, json={}))["nonce"]
    fields = dict(case.fields)
    if "faces" in fields:  # the liveness claim of this very nonce: only the face itself is wrong
        fields["liveness"] = wire_liveness(challenge_for(nonce.encode("ascii")).steps)
    body = sign_request(device.key, "POST", case.path, {"nonce": nonce, **fields})
    response = await client.request("POST", case.path, json=body)
    return response.status_code, response.json()


def test_malformed_templates_on_every_route_are_audited_refusals_naming_the_fix(
    provisioned, verifier, synthetic_templates
) -> None:
    t = synthetic_templates
    device = Device(*provisioned)
    good = encode(t[0][2])
    truncated = good[:-7]
    version = wrong_version(encode(t[1][2]))
    nan, short = nan_face(), capture(2, 0)[:-4]
    finger_fix, face_fix = "19794-2", "face embedding"

    async def steps(client):
        # A pending step-up (the device's first use) that a malformed answer must not use up.
        enrolled = await client.request(
            "POST", enrollments("alice"),
            json=sign_request(device.key, "POST", enrollments("alice"), {
                "nonce": (await client.call("POST", endpoints.CHALLENGES, json={}))["nonce"],
                "templates": [wire_template(encode(x)) for x in t[0][:2] + t[2][:2]],
            }),
        )
        assert enrolled.status_code == 201, enrolled.json()
        first = await sent(device, client, Case("first", endpoints.VERIFICATIONS,
                                                {"subject": "alice", "templates": [wire_template(good)]},
                                                "", "", "", ""))
        assert first[0] == 401, first
        step = first[1]["step_up"]
        cases = [
            Case("enroll: bad base64", enrollments("bob"),
                 {"templates": [{"format": "iso19794-2:2005", "data": "not base64!"}]},
                 "bad-template", finger_fix, "malformed fingerprint template", "templates[0]"),
            Case("verify: truncated record", endpoints.VERIFICATIONS,
                 {"subject": "alice", "templates": [wire_template(truncated)]},
                 "bad-template", finger_fix, "malformed fingerprint template", "templates[0]", truncated),
            Case("identify: wrong version", endpoints.IDENTIFICATIONS,
                 {"templates": [wire_template(version)]},
                 "bad-template", finger_fix, "malformed fingerprint template", "templates[0]", version),
            Case("step-up: truncated second record", endpoints.VERIFICATIONS,
                 {"subject": "alice", "step_up": step, "templates": [wire_template(good), wire_template(truncated)]},
                 "bad-template", finger_fix, "malformed fingerprint template", "templates[1]", truncated),
            Case("verify: NaN embedding", endpoints.VERIFICATIONS,
                 {"subject": "alice", "faces": wire_faces([nan])},
                 "bad-template", face_fix, "malformed face template", "faces[0]", nan),
            Case("enroll: embedding of the wrong length", enrollments("carol"),
                 {"faces": wire_faces([short])},
                 "bad-template", face_fix, "malformed face template", "faces[0]", short),
            # Non-ASCII inside base64 ("é", "–"): base64.b64decode raises a plain ValueError for such a str,
            # not binascii.Error; it was a 500, unaudited.
            Case("verify: non-ASCII in a template's base64", endpoints.VERIFICATIONS,
                 {"subject": "alice", "templates": [{"format": "iso19794-2:2005", "data": "AA\u00e9A"}]},
                 "bad-template", finger_fix, "malformed fingerprint template", "templates[0]"),
            Case("enroll: non-ASCII in a face's base64", enrollments("erin"),
                 {"faces": [{"format": "face-embedding", "data": "RkVN\u2013Qg=="}]},
                 "bad-template", face_fix, "malformed face template", "faces[0]"),
            Case("identify: fingers and faces together", endpoints.IDENTIFICATIONS,
                 {"templates": [wire_template(good)], "faces": wire_faces([capture(1, 1)])},
                 "bad-template", "its own request", "fingers and faces in one request", ""),
        ]
        answers = [(case, await sent(device, client, case)) for case in cases]
        fields = [  # signed bodies whose other fields are malformed, and a challenge request
            Case("verify: no subject", endpoints.VERIFICATIONS, {"subject": "", "templates": [wire_template(good)]},
                 "bad-subject", '"subject"', "malformed subject", ""),
            Case("enroll: a path subject that is no subject id", enrollments("-dora"),
                 {"templates": [wire_template(good)]}, "bad-subject", endpoints.ID_RULE, "malformed subject", ""),
            Case("enroll: a group name that is none", enrollments("dora"),
                 {"group": "no such group!", "templates": [wire_template(good)]},
                 "bad-group", endpoints.ID_RULE, "malformed group", ""),
        ]
        answers += [(case, await sent(device, client, case)) for case in fields]
        challenge = await client.request("POST", endpoints.CHALLENGES, json={"operation": "fly"})
        answers.append((Case("challenge: an unknown operation", endpoints.CHALLENGES, {}, "bad-challenge",
                             '"operation"', "malformed challenge request", ""),
                        (challenge.status_code, challenge.json())))
        # The step-up is still pending: the malformed answer did not use it up.
        second = await sent(device, client, Case("second", endpoints.VERIFICATIONS,
                                                 {"subject": "alice", "step_up": step,
                                                  "templates": [wire_template(encode(t[2][2]))]},
                                                 "", "", "", ""))
        return answers, second

    answers, second = device.run(steps)
    assert second[0] == 200 and second[1]["decision"] == "accept", second
    refused = [e for e in audit(verifier) if e.get("event") == "biometric_request_refused"]
    log_text = verifier.log_path.read_text()
    for case, (status, problem) in answers:
        expected = 422 if case.slug == "bad-template" else 400
        assert (status, problem["type"].rsplit("/", 1)[-1]) == (expected, case.slug), (case.name, problem)
        assert case.fix_says in problem["fix"], (case.name, problem["fix"])
        if case.item:  # a template's place in the body (the other refusals name no item)
            assert case.item in problem["detail"], (case.name, problem["detail"])
        matching = [e for e in refused if e["path"] == case.path and e["reason"] == case.reason
                    and e.get("item", "") == case.item and e["audit"] is True]
        assert matching, (case.name, refused)
        assert all(e["device_id"] == device.identity.device_id for e in matching), matching
        if case.slug == "bad-template":
            assert all(e["defect"] for e in matching), matching
        if case.secret:  # the record, in any form the request carried it, is nowhere in the log
            assert base64.b64encode(case.secret).decode() not in log_text, case.name
            assert case.secret[20:40].hex() not in log_text and repr(case.secret[20:40])[2:-1] not in log_text


def test_bodies_that_do_not_parse_spend_the_device_rate_and_are_audited(tmp_path) -> None:
    """A device sending bodies that are not JSON is refused (400, audited) and its rate counts them."""
    settings = tmp_path / "verifier.toml"
    settings.write_text("device_requests_per_min = 3\n")
    with LocalVerifier.running(tmp_path / "pki", extra_args=("--config", str(settings))) as local:
        device = Device(*asyncio.run(provision_device(local, tmp_path / "device", "kiosk-r")))

        async def steps(client):
            answers = []
            for _ in range(3):
                response = await client.request("POST", endpoints.VERIFICATIONS, content=b"\x00 not json",
                                                headers={"content-type": "application/json"})
                answers.append((response.status_code, response.json()["type"].rsplit("/", 1)[-1]))
            body = await device.signed(client, endpoints.IDENTIFICATIONS,
                                       templates=[{"format": "iso19794-2:2005", "data": "AAAA"}])
            response = await client.request("POST", endpoints.IDENTIFICATIONS, json=body)
            answers.append((response.status_code, response.json()["type"].rsplit("/", 1)[-1]))
            return answers

        answers = device.run(steps)
        events = [e for e in audit(local) if e.get("event") == "biometric_request_refused"]
    assert answers == [(400, "bad-json")] * 3 + [(429, "device-rate-limited")], answers
    assert [e["reason"] for e in events] == ["body not protocol JSON"] * 3 + ["device rate limit"]


def test_a_signature_that_is_not_ascii_is_an_audited_bad_signature(provisioned, verifier) -> None:
    """A signature field holding "é" or "–" is checked before the signature itself, so any device with a valid
    certificate could send it: a 401 ``bad-signature`` audited as a refused request (it was a 500, unaudited)."""
    device = Device(*provisioned)

    async def steps(client):
        answers = []
        for signature in ("\u00e9", "MEUC\u2013IQ=="):
            nonce = (await client.call("POST", endpoints.CHALLENGES, json={}))["nonce"]
            body = {"nonce": nonce, "subject": "alice", "faces": wire_faces([capture(1, 0)]), "signature": signature}
            response = await client.request("POST", endpoints.VERIFICATIONS, json=body)
            answers.append((response.status_code, response.json()["type"].rsplit("/", 1)[-1], response.json()))
        return answers

    answers = device.run(steps)
    assert [(status, slug) for status, slug, _ in answers] == [(401, "bad-signature")] * 2, answers
    assert all("not base64" in problem["detail"] for _, _, problem in answers), answers
    refused = [e for e in audit(verifier) if e.get("event") == "biometric_request_refused"
               and e["path"] == endpoints.VERIFICATIONS and e["audit"] is True]
    assert [e["status"] for e in refused] == [401, 401], refused
    assert all("not base64" in e["reason"] and e["device_id"] == device.identity.device_id for e in refused), refused
    assert "request_failed" not in verifier.log_path.read_text()
