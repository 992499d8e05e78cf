"""Signed biometric requests end to end over real mTLS: enroll, verify, identify, and the refusals."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import sqlite3

import pytest

from agent.client import VerifierClient
from agent.errors import BadSignatureError, BadTemplateError, NonceUsedError, UnknownSubjectError, VerifierError
from agent.verifier_api import VerifierAPI
from biometrics.fingerprint.iso19794_2 import encode
from protocol.endpoints import CHALLENGES
from protocol.signing import sign_request
from protocol.templates import wire_template
from tests.conftest import finger_capacity, finger_fpir_for


def wire(template) -> dict:
    return wire_template(encode(template))


class Device:
    """A provisioned device making signed requests, as the agent's sessions will."""

    def __init__(self, config, identity) -> None:
        self.config, self.identity = config, identity
        self.key = identity.private_key()

    async def signed(self, client: VerifierClient, path: str, **fields) -> dict:
        """A signed body over a plain nonce, for requests the typed client would never send as they are."""
        nonce = (await client.call("POST", CHALLENGES, json={}))["nonce"]
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
            answer = await VerifierAPI(client).enroll(subject, [encode(t) for t in templates[finger][:2]])
            assert answer.templates == 2

    device.run(steps)


def enroll_fingers(device: Device, templates: dict, subject: str, fingers: list[int]) -> None:
    async def steps(client):
        records = [encode(t) for finger in fingers for t in templates[finger][:2]]
        await VerifierAPI(client).enroll(subject, records)

    device.run(steps)


async def verify_call(device: Device, client, subject: str, template, **extra) -> tuple[int, dict]:
    body = await device.signed(client, "/v1/verifications", subject=subject, templates=[wire(template)], **extra)
    response = await client.request("POST", "/v1/verifications", json=body)
    return response.status_code, {**response.json(), "www-authenticate": response.headers.get("www-authenticate", "")}


def test_enroll_verify_genuine_and_impostor_and_identify(device, synthetic_templates) -> None:
    t = synthetic_templates
    enroll_fingers(device, t, "alice", [0, 2])
    enroll(device, t, {"bob": 1})

    async def steps(client):
        # First use of the device: the match is good, and a second finger is asked for (RFC 9470).
        first_status, first = await verify_call(device, client, "alice", t[0][2])
        stepped = await verify_call(device, client, "alice", t[2][2], step_up=first["step_up"])
        again = await verify_call(device, client, "alice", t[0][2])  # no longer the device's first use
        impostor = await verify_call(device, client, "bob", t[0][2])
        found = await client.call(
            "POST",
            "/v1/identifications",
            json=await device.signed(client, "/v1/identifications", templates=[wire(t[1][2])]),
        )
        stranger = await client.call(
            "POST",
            "/v1/identifications",
            json=await device.signed(client, "/v1/identifications", templates=[wire(t[3][0])]),
        )
        return first_status, first, stepped, again, impostor, found, stranger

    first_status, first, stepped, again, impostor, found, stranger = device.run(steps)
    assert first_status == 401 and first["reasons"] == ["first_use_of_device"]
    assert 'error="insufficient_user_authentication"' in first["www-authenticate"]
    assert 'acr_values="second_finger"' in first["www-authenticate"]
    assert stepped == (200, {**stepped[1], "decision": "accept"}) and stepped[1]["token"]
    assert again[0] == 200 and again[1]["decision"] == "accept"
    assert impostor[0] == 200 and impostor[1]["decision"] == "reject" and "token" not in impostor[1]
    assert found["candidates"][0]["subject"] == "bob"
    assert stranger["candidates"] == []


def test_a_step_up_with_the_same_finger_is_refused(device, synthetic_templates) -> None:
    t = synthetic_templates
    enroll_fingers(device, t, "alice", [0, 2])

    async def steps(client):
        _, first = await verify_call(device, client, "alice", t[0][2])
        return await verify_call(device, client, "alice", t[0][1], step_up=first["step_up"])

    status, answer = device.run(steps)
    assert status == 200 and answer["decision"] == "reject"


def test_a_replayed_request_is_refused(device, synthetic_templates) -> None:
    enroll(device, synthetic_templates, {"alice": 0})

    async def steps(client):
        body = await device.signed(
            client, "/v1/verifications", subject="alice", templates=[wire(synthetic_templates[0][2])]
        )
        first = await client.request("POST", "/v1/verifications", json=body)
        with pytest.raises(VerifierError) as info:
            await client.call("POST", "/v1/verifications", json=body)  # captured and sent again
        return first.status_code, info.value

    first_status, error = device.run(steps)
    assert first_status == 401  # answered (a step-up), so its nonce is spent
    assert isinstance(error, NonceUsedError) and error.status == 409 and error.slug == "nonce-used"


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
    assert isinstance(info.value, BadSignatureError) and info.value.status == 401


def test_an_unknown_subject_gets_a_clear_answer(device, synthetic_templates) -> None:
    async def steps(client):
        body = await device.signed(
            client, "/v1/verifications", subject="nobody", templates=[wire(synthetic_templates[0][0])]
        )
        await client.call("POST", "/v1/verifications", json=body)

    with pytest.raises(VerifierError) as info:
        device.run(steps)
    assert isinstance(info.value, UnknownSubjectError) and info.value.status == 404
    assert "capture-agent enroll --subject nobody" in info.value.fix  # the command to run, not an API path


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
    assert isinstance(info.value, BadTemplateError) and info.value.status == 422 and "templates[0]" in str(info.value)


def test_the_database_holds_no_template_in_clear(device, synthetic_templates, verifier) -> None:
    enroll(device, synthetic_templates, {"alice": 0})
    records = [encode(t) for t in synthetic_templates[0][:2]]
    raw = b"".join(p.read_bytes() for p in verifier.pki_dir.iterdir() if p.name.startswith("verifier.sqlite"))
    with sqlite3.connect(verifier.pki_dir / "verifier.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM enrollments WHERE subject_id = 'alice'").fetchone()[0] == 2
    for record in records:
        assert record[:24] not in raw and record[24:60] not in raw  # header and first minutiae
    assert b"FMR\x00" not in raw


def test_a_device_allowed_only_to_verify_cannot_enroll(device, verifier, synthetic_templates) -> None:
    verifier.allow("kiosk-1", "verify")

    async def steps(client):
        path = "/v1/subjects/zed/enrollments"
        body = await device.signed(client, path, templates=[wire(synthetic_templates[0][0])])
        await client.call("POST", path, json=body)

    with pytest.raises(VerifierError) as info:
        device.run(steps)
    assert info.value.status == 403 and "may not enroll" in str(info.value)


def test_a_device_revoked_between_two_requests_is_refused(device, verifier, synthetic_templates) -> None:
    enroll(device, synthetic_templates, {"alice": 0})

    async def steps(client):
        body = await device.signed(
            client, "/v1/verifications", subject="alice", templates=[wire(synthetic_templates[0][2])]
        )
        verifier.revoke("kiosk-1")
        await client.call("POST", "/v1/verifications", json=body)

    with pytest.raises(VerifierError) as info:
        device.run(steps)
    assert info.value.status == 403 and "revoked" in str(info.value)


def test_repeated_failures_lock_the_subject_out_for_a_growing_time(tmp_path, synthetic_templates) -> None:
    import time

    from agent.devstack import LocalVerifier, provision_device

    settings = tmp_path / "verifier.toml"
    settings.write_text("max_failures = 2\nlockout_base_s = 1.0\n")
    with LocalVerifier.running(tmp_path / "pki", extra_args=("--config", str(settings))) as local:
        dev = Device(*asyncio.run(provision_device(local, tmp_path / "device", "kiosk-l")))
        enroll(dev, synthetic_templates, {"alice": 0})
        impostor = [wire(synthetic_templates[1][0])]

        async def attempt(client) -> tuple[int, dict]:
            body = await dev.signed(client, "/v1/verifications", subject="alice", templates=impostor)
            response = await client.request("POST", "/v1/verifications", json=body)
            return response.status_code, dict(response.headers)

        async def steps(client):
            first = [await attempt(client) for _ in range(3)]
            time.sleep(float(first[2][1]["retry-after"]) + 0.1)
            second = [await attempt(client) for _ in range(3)]
            return first, second

        first, second = dev.run(steps)
    assert [s for s, _ in first] == [200, 200, 429]
    assert [s for s, _ in second] == [200, 200, 429]
    first_wait, second_wait = int(first[2][1]["retry-after"]), int(second[2][1]["retry-after"])
    assert second_wait >= 2 * first_wait >= 2, "the second lockout is twice the first (1 s, then 2 s)"


def test_a_high_risk_subject_always_gets_a_step_up(device, verifier, synthetic_templates) -> None:
    t = synthetic_templates
    enroll_fingers(device, t, "vip", [0, 2])

    async def first_use_cleared(client):
        _, first = await verify_call(device, client, "vip", t[0][2])
        return await verify_call(device, client, "vip", t[2][2], step_up=first["step_up"])

    assert device.run(first_use_cleared)[1]["decision"] == "accept"
    verifier.mark_high_risk("vip")

    async def again(client):
        return await verify_call(device, client, "vip", t[0][2])

    status, answer = device.run(again)
    assert status == 401 and answer["reasons"] == ["high_risk_subject"]


def test_a_device_limited_to_a_group_acts_only_on_that_group(device, verifier, synthetic_templates) -> None:
    t = synthetic_templates

    async def enroll_in(client, subject: str, group: str, finger: int) -> tuple[int, dict]:
        path = f"/v1/subjects/{subject}/enrollments"
        body = await device.signed(client, path, group=group, templates=[wire(x) for x in t[finger][:2]])
        response = await client.request("POST", path, json=body)
        return response.status_code, response.json()

    async def identify(client, finger: int) -> list[str]:
        body = await device.signed(client, "/v1/identifications", templates=[wire(t[finger][2])])
        return [c["subject"] for c in (await client.call("POST", "/v1/identifications", json=body))["candidates"]]

    async def setup(client):
        return await enroll_in(client, "alice", "staff", 0), await enroll_in(client, "bob", "visitors", 1)

    alice, bob = device.run(setup)
    assert alice == (201, {**alice[1], "group": "staff"}) and bob[0] == 201
    verifier.allow("kiosk-1", groups="staff")

    async def restricted(client):
        return (
            await verify_call(device, client, "bob", t[1][2]),
            await verify_call(device, client, "alice", t[0][2]),
            await identify(client, 1),
            await identify(client, 0),
            await enroll_in(client, "carol", "visitors", 2),
            await enroll_in(client, "alice", "visitors", 0),
            await enroll_in(client, "dave", "staff", 3),
        )

    verify_bob, verify_alice, found_bob, found_alice, carol, alice_moved, dave = device.run(restricted)
    # bob reads as an id nobody holds (test_verifier_group_oracle); the audit log names his group, for the operator.
    assert verify_bob[0] == 404 and verify_bob[1]["type"].endswith("unknown-subject")
    assert "visitors" not in json.dumps(verify_bob[1])
    assert verify_alice[0] in (200, 401)  # matched (a first use asks for a step-up), not refused
    assert found_bob == [] and found_alice == ["alice"]  # bob is outside the device's groups: never a candidate
    assert carol[0] == 403 and alice_moved[0] == 409 and "subject group" in alice_moved[1]["fix"]
    assert "staff" not in json.dumps(alice_moved[1])  # alice's group is not told to a device asking "visitors"
    assert dave == (201, {**dave[1], "group": "staff"})
    refusals = [
        json.loads(line)
        for line in verifier.log_path.read_text().splitlines()
        if line.startswith("{") and '"biometric_request_refused"' in line
    ]
    assert {(r["subject"], r["reason"]) for r in refusals} >= {
        ("bob", "subject group not allowed for this device"),
        ("carol", "subject group not allowed for this device"),
        ("alice", "enrollment names another group"),
    }
    assert all(r["audit"] and r["device_id"] == "kiosk-1" for r in refusals)

    # The operator moves bob into staff: now the device may verify him.
    verifier.set_subject_group("bob", "staff")

    async def after_move(client):
        return await identify(client, 1)

    assert device.run(after_move) == ["bob"]


def test_templates_are_added_to_an_enrolled_subject_only_with_their_live_token(
    device, verifier, synthetic_templates, tmp_path
) -> None:
    """Nobody attaches a finger to someone else: a token of this subject, from this device, used once,
    for captures that match the subject (issue 10: one identity, one person)."""
    from agent.devstack import provision_device

    t = synthetic_templates
    enroll_fingers(device, t, "alice", [0, 2])
    enroll(device, t, {"bob": 1})
    path = "/v1/subjects/alice/enrollments"

    async def add(client, template, **extra) -> tuple[int, dict]:
        body = await device.signed(client, path, templates=[wire(template)], **extra)
        response = await client.request("POST", path, json=body)
        return response.status_code, response.json()

    async def steps(client):
        without = await add(client, t[0][1])
        _, first = await verify_call(device, client, "alice", t[0][2])  # first use: step-up
        _, alice = await verify_call(device, client, "alice", t[2][2], step_up=first["step_up"])
        _, bob = await verify_call(device, client, "bob", t[1][2])
        with_bobs = await add(client, t[0][1], session_token=bob["token"])
        graft = await add(client, t[3][0], session_token=alice["token"])  # a finger that is not alice's
        after_graft = await add(client, t[0][1], session_token=alice["token"])  # the refused try spent it
        _, fresh = await verify_call(device, client, "alice", t[2][2])
        with_alices = await add(client, t[0][1], session_token=fresh["token"])
        reused = await add(client, t[2][1], session_token=fresh["token"])
        _, again = await verify_call(device, client, "alice", t[2][2])
        return without, with_bobs, graft, after_graft, with_alices, reused, again["token"]

    without, with_bobs, graft, after_graft, with_alices, reused, alice_token = device.run(steps)
    assert without[0] == 401 and without[1]["type"].endswith("verification-required")
    assert "verify the subject first" in without[1]["fix"]
    assert with_bobs[0] == 401 and with_bobs[1]["type"].endswith("session-token-refused")
    assert graft[0] == 403 and graft[1]["type"].endswith("not-the-verified-person"), graft
    # One token, one try: a refused graft does not leave the token for another finger to try its luck.
    assert after_graft[0] == 401 and after_graft[1]["type"].endswith("session-token-refused"), after_graft
    assert with_alices == (201, {**with_alices[1], "templates": 1})
    assert reused[0] == 401 and reused[1]["type"].endswith("session-token-refused"), reused  # single use

    # The same token from another device is refused: tokens are bound to the device they were issued to.
    other = Device(*asyncio.run(provision_device(verifier, tmp_path / "other", "kiosk-2")))

    async def from_other(client):
        body = await other.signed(client, path, templates=[wire(t[0][2])], session_token=alice_token)
        response = await client.request("POST", path, json=body)
        return response.status_code, response.json()

    status, problem = other.run(from_other)
    assert status == 401 and problem["type"].endswith("session-token-refused")

    # The grafted finger never became alice's.
    async def grafted(client):
        return await verify_call(device, client, "alice", t[3][1])

    status, answer = device.run(grafted)
    assert status == 200 and answer["decision"] == "reject"


def test_one_person_cannot_hold_two_identities(device, synthetic_templates) -> None:
    """Every enrollment is searched 1:N: bob's finger under a new id is a 409 that names nobody."""
    t = synthetic_templates
    enroll(device, t, {"alice": 0, "bob": 1})

    async def steps(client):
        path = "/v1/subjects/robert/enrollments"
        body = await device.signed(client, path, templates=[wire(t[1][2])])
        response = await client.request("POST", path, json=body)
        fresh = await device.signed(client, "/v1/subjects/carol/enrollments", templates=[wire(t[3][0])])
        return (
            response.status_code,
            response.json(),
            await client.call("POST", "/v1/subjects/carol/enrollments", json=fresh),
        )

    status, problem, carol = device.run(steps)
    assert status == 409 and problem["type"].endswith("duplicate-identity"), problem
    assert "bob" not in json.dumps(problem) and "alice" not in json.dumps(problem)
    assert carol["templates"] == 1  # a new person enrolls


def test_a_subject_claimed_too_often_is_rate_limited(tmp_path, synthetic_templates) -> None:
    """Many claims of one subject (from any device) are slowed down, before any matching; others are not."""
    from agent.devstack import LocalVerifier, provision_device

    settings = tmp_path / "verifier.toml"
    settings.write_text("subject_requests_per_min = 2\nstep_up_first_use = false\n")
    with LocalVerifier.running(tmp_path / "pki", extra_args=("--config", str(settings))) as local:
        dev = Device(*asyncio.run(provision_device(local, tmp_path / "device", "kiosk-r")))
        enroll(dev, synthetic_templates, {"alice": 0, "bob": 1})

        async def steps(client):
            alice = [await verify_call(dev, client, "alice", synthetic_templates[0][2]) for _ in range(3)]
            bob = await verify_call(dev, client, "bob", synthetic_templates[1][2])
            return alice, bob

        alice, bob = dev.run(steps)
        log = local.log_path.read_text()
    assert [status for status, _ in alice] == [200, 200, 429]
    assert alice[2][1]["type"].endswith("subject-rate-limited") and "wait" in alice[2][1]["detail"]
    assert bob[0] == 200 and bob[1]["decision"] == "accept"
    assert '"outcome": "subject_rate_limited"' in log


def test_a_genuine_match_after_a_failure_asks_for_a_second_finger(device, synthetic_templates) -> None:
    t = synthetic_templates
    enroll_fingers(device, t, "alice", [0, 2])

    async def steps(client):
        _, first = await verify_call(device, client, "alice", t[0][2])  # the device's first use
        await verify_call(device, client, "alice", t[2][2], step_up=first["step_up"])
        impostor = await verify_call(device, client, "alice", t[1][2])
        genuine = await verify_call(device, client, "alice", t[0][2])
        satisfied = await verify_call(device, client, "alice", t[2][2], step_up=genuine[1]["step_up"])
        return impostor, genuine, satisfied

    impostor, genuine, satisfied = device.run(steps)
    assert impostor[1]["decision"] == "reject"
    assert genuine[0] == 401 and genuine[1]["reasons"] == ["recent_failures"]
    assert satisfied[0] == 200 and satisfied[1]["decision"] == "accept"


def test_a_locked_out_subject_s_factors_are_not_told_by_a_challenge(tmp_path, synthetic_templates) -> None:
    """A challenge naming the face (asked so that a subject without one is told before the head turns) checked the
    face before the lockout: whoever asked learned whether a locked-out subject had a face enrolled."""
    from agent.devstack import LocalVerifier, provision_device

    settings = tmp_path / "verifier.toml"
    settings.write_text("max_failures = 1\nlockout_base_s = 60.0\n")
    with LocalVerifier.running(tmp_path / "pki", extra_args=("--config", str(settings))) as local:
        dev = Device(*asyncio.run(provision_device(local, tmp_path / "device", "kiosk-l")))
        enroll(dev, synthetic_templates, {"alice": 0})  # a finger, no face

        async def steps(client):
            asked = {"operation": "verify", "subject": "alice", "modality": "face"}
            before = await client.request("POST", CHALLENGES, json=asked)
            status, _ = await verify_call(dev, client, "alice", synthetic_templates[1][0])  # an impostor: locked
            after = await client.request("POST", CHALLENGES, json=asked)
            return before.json(), status, after.status_code, after.json()

        before, status, after_status, after = dev.run(steps)
    assert before["type"].endswith("/face-not-enrolled"), before  # unlocked: said before the head turns
    assert status == 200
    assert after_status == 429 and after["type"].endswith("/subject-locked"), after


@pytest.mark.verifier_settings("identify_fpir = 0.00001")
def test_the_identification_threshold_grows_with_what_it_searches(device, synthetic_templates) -> None:
    """A stranger is compared with every template searched, once per view: the threshold keeps the chance that an
    identification names someone at identify_fpir, so it rises with the gallery and the views (verifier/ranking)."""
    from biometrics.fingerprint import threshold_for_fmr
    from verifier.ranking import rounded_down
    from verifier.settings import VerifierSettings

    t = synthetic_templates
    enroll_fingers(device, t, "alice", [0, 2])  # 4 templates
    enroll(device, t, {"bob": 1})  # 2 templates

    async def steps(client):
        answers = []
        for views in ([t[1][2]], [t[1][2], t[3][0]]):  # the second with a stranger's view beside
            body = await device.signed(client, "/v1/identifications", templates=[wire(v) for v in views])
            answers.append(await client.call("POST", "/v1/identifications", json=body))
        return answers

    one_view, two_views = device.run(steps)
    verify_threshold = threshold_for_fmr(VerifierSettings().target_fmr)
    # The answer's is for the decade of the 6 templates (1), so as not to tell the gallery's size (verifier/ranking).
    expected = [max(verify_threshold, threshold_for_fmr(1e-5 / (views * 1))) for views in (1, 2)]
    assert [one_view["threshold"], two_views["threshold"]] == [rounded_down(x) for x in expected]
    assert verify_threshold < expected[0] < expected[1], "stricter than 1:1, and more so for more views"
    assert one_view["candidates"][0]["subject"] == "bob", "a genuine mate still clears it"
    assert all(c["score"] >= two_views["threshold"] for c in two_views["candidates"])


@pytest.mark.verifier_settings("max_views_per_request = 40")
def test_an_identifications_threshold_does_not_tell_its_groups_gallery_size(device, synthetic_templates) -> None:
    """The answer's threshold was the exact one, a known function of the views and the templates searched: at 4
    decimals 40 templates gave 0.0490 and 41 gave 0.0492, so a device read its groups' gallery size off it, and saw
    each enrollment into them. It is the threshold of the search's decade now: the same for 40 and 41 templates,
    with one view or several (the views are the device's to choose). The decision is still the exact threshold's:
    the genuine mate is named, every candidate at or above what the answer says."""
    from biometrics.fingerprint import threshold_for_fmr
    from verifier.ranking import identification_threshold
    from verifier.settings import VerifierSettings

    t = synthetic_templates
    settings = VerifierSettings()
    verify_threshold = threshold_for_fmr(settings.target_fmr)
    exact = {n: round(identification_threshold(threshold_for_fmr, settings.identify_fpir, n, verify_threshold), 4)
             for n in (40, 41)}
    assert exact[40] != exact[41], "the old answer told 40 templates from 41"
    alice_views = [t[0][n % 3] for n in range(40)]

    async def identify_twice(api: VerifierAPI):
        one = await api.identify([encode(t[1][2])])  # bob's finger: named once bob is enrolled
        three = await api.identify([encode([t[1][2], t[3][0], t[2][1]])])  # bob's and two strangers'
        return one, three

    async def steps(client):
        api = VerifierAPI(client)
        answer = await api.enroll("alice", [encode(alice_views[n:n + 10]) for n in range(0, 40, 10)])
        assert answer.templates == 4  # records, of 10 views each: 40 templates in the gallery
        forty = await identify_twice(api)
        assert (await api.enroll("bob", [encode(t[1][0])])).templates == 1
        return forty, await identify_twice(api)

    forty, forty_one = device.run(steps)
    assert [a.threshold for a in forty] == [a.threshold for a in forty_one], (forty, forty_one)
    assert forty[0].threshold != exact[40] and forty_one[0].threshold != exact[41]
    assert forty[0].threshold <= forty[1].threshold, "more views, a stricter threshold: the device's own choice"
    assert [c.subject for c in forty_one[0].candidates][:1] == ["bob"], "a genuine mate still clears it"
    for answer in (*forty, *forty_one):
        assert all(c.score >= answer.threshold for c in answer.candidates), answer


# One view against the 42 templates below at a per-comparison rate 35 times the lowest reachable (the margin a
# genuine mate cleared at identify_fpir 3e-9): some 1,470 comparisons, faces left at identify_fpir's default.
PAST_CAPACITY_FPIR = finger_fpir_for(35 * 42)


@pytest.mark.verifier_settings(f"finger_identify_fpir = {PAST_CAPACITY_FPIR!r}", "max_views_per_request = 64")
def test_an_identification_past_its_capacity_is_a_typed_refusal_naming_the_fix(
    device, verifier, synthetic_templates
) -> None:
    """At this finger_identify_fpir a finger identification can make some 1,470 comparisons before its threshold
    passes the highest score (verifier/ranking.py), whatever the calibration's tail (the rate is computed from it).
    One view against the 42 enrolled templates is well within: bob is named. Enough views of bob's own finger to
    pass it (36 against them: 1,512) could name nobody, bob included: that was an empty 200 (a kiosk told bob
    "nobody recognised", the installer learned nothing); it is a 422 ``identification-unreachable`` whose fix is
    ranking's, raised by the agent as its own error. Its detail says the search is too large, not how large: it gave
    the templates this device may search (42) and the comparisons, in prose and as members, so a device learned its
    groups' gallery size by asking too much; the counts are in the verifier's log, for the operator.
    Nothing is matched for it; the next identification within the capacity is answered as before."""
    from agent.errors import IdentificationUnreachableError
    from verifier.ranking import UNREACHABLE_FIX

    t = synthetic_templates
    alice_views = [t[0][n % 3] for n in range(40)]

    async def enroll_alice(client):  # 4 records of 10 views: 40 templates
        await VerifierAPI(client).enroll("alice", [encode(alice_views[n:n + 10]) for n in range(0, 40, 10)])

    device.run(enroll_alice)
    enroll(device, t, {"bob": 1})  # 2 templates: 42 in the gallery
    largest = finger_capacity(PAST_CAPACITY_FPIR)
    views = largest // 42 + 1  # the fewest views of one finger past the capacity
    comparisons = views * 42
    assert 42 <= largest < comparisons and views <= 64, "the story needs one view within the capacity, views past"

    async def steps(client):
        api = VerifierAPI(client)
        normal = await api.identify([encode(t[1][2])])
        with pytest.raises(IdentificationUnreachableError) as past:  # records of at most 16 views of one finger
            await api.identify([encode([t[1][2]] * min(16, views - n)) for n in range(0, views, 16)])
        return normal, past.value, await api.identify([encode(t[1][2])])

    normal, refused, again = device.run(steps)
    assert [c.subject for c in normal.candidates][:1] == ["bob"] and normal.threshold <= 1.0
    assert again.candidates == normal.candidates and again.threshold == normal.threshold
    assert refused.status == 422 and refused.slug == "identification-unreachable"
    assert refused.fix == UNREACHABLE_FIX and "raise identify_fpir" in str(refused)
    told = json.dumps(refused.problem)
    said = (str(comparisons), f"{comparisons:,}", "42 templates", str(largest), f"{largest:,}")
    assert not any(count in told for count in said), told
    assert not {"comparisons", "largest_search", "templates"} & refused.problem.keys(), refused.problem
    assert f"({views} views) would search more templates than" in refused.message, refused.message
    events = [json.loads(line) for line in verifier.log_path.read_text().splitlines() if line.startswith("{")]
    unreachable = [e for e in events if e.get("event") == "identification_unreachable"]
    assert len(unreachable) == 1 and unreachable[0]["fix"] == UNREACHABLE_FIX, unreachable
    assert unreachable[0]["setting"] == "finger_identify_fpir", "the operator's log names the rate to raise"
    assert (unreachable[0]["comparisons"], unreachable[0]["largest_search"]) == (comparisons, largest)
    refusals = [e for e in events if e.get("event") == "biometric_request_refused" and e.get("status") == 422]
    assert len(refusals) == 1 and refusals[0]["audit"] and refusals[0]["comparisons"] == comparisons, refusals
    assert (unreachable[0]["templates"], refusals[0]["templates"], unreachable[0]["views"]) == (42, 42, views)
    assert refusals[0]["groups"] == "*", "the refusal says the groups searched, as an identification_attempt does"
    attempts = [e for e in events if e.get("event") == "identification_attempt"]
    assert len(attempts) == 2, "the refused search was never matched: only the two within the capacity were"
