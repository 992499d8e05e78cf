"""Faces on the verifier, end to end over real mTLS: enroll, 1:1, 1:N, the liveness claim, factor rules.

The embeddings here are synthetic unit vectors (a person is a random direction,
a capture that direction plus noise): the verifier's logic does not depend on
how the device made them, and the real pipeline is exercised by the agent's
face session tests.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag

from agent.devstack import verifier_cli
from agent.errors import BadRequestError, BadTemplateError, StepUpUnknownError, UnknownSubjectError
from agent.verifier_api import VerifierAPI
from biometrics.face import challenge_for
from biometrics.fingerprint.iso19794_2 import encode as encode_finger
from protocol.face_template import ACR_FACE, ACR_FINGER, encode
from protocol.messages import Decision, StepUp
from tests.test_biometric_api import Device

MODEL = "sface-2021dec-int8bq"


@pytest.fixture
def device(provisioned) -> Device:
    return Device(*provisioned)


def person(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=128)
    return v / np.linalg.norm(v)


def capture(seed: int, shot: int, noise: float = 0.35) -> bytes:
    """One face template of person ``seed``: genuine pairs score about 0.9, impostors about 0."""
    v = person(seed) + noise * np.random.default_rng(1000 * seed + shot).normal(size=128) / np.sqrt(128)
    return encode(MODEL, (v / np.linalg.norm(v)).tolist())


def steps_for(challenge) -> tuple[str, ...]:
    return challenge_for(challenge.nonce.encode("ascii")).steps


async def face_enroll(api: VerifierAPI, subject: str, seed: int, **extra):
    challenge = await api.challenge("enroll", subject, extra.get("group"))
    return await api.enroll(subject, [], faces=[capture(seed, 0), capture(seed, 1)], challenge=challenge,
                            liveness=steps_for(challenge), **extra)


async def face_verify(api: VerifierAPI, subject: str, seed: int, shot: int = 5, **extra):
    challenge = await api.challenge("verify", subject)
    return await api.verify(subject, [], faces=[capture(seed, shot)], challenge=challenge,
                            liveness=steps_for(challenge), **extra)


def audit(verifier) -> list[dict]:
    return [json.loads(line) for line in verifier.log_path.read_text().splitlines() if line.startswith("{")]


def test_face_enroll_verify_identify(device, verifier) -> None:
    async def steps(client):
        api = VerifierAPI(client)
        enrolled = await face_enroll(api, "alice", 1)
        await face_enroll(api, "bob", 2)
        genuine = await face_verify(api, "alice", 1)
        impostor = await face_verify(api, "bob", 1)
        challenge = await api.challenge("identify")
        found = await api.identify([], faces=[capture(2, 7)], challenge=challenge, liveness=steps_for(challenge))
        challenge = await api.challenge("identify")
        stranger = await api.identify([], faces=[capture(3, 0)], challenge=challenge, liveness=steps_for(challenge))
        return enrolled, genuine, impostor, found, stranger

    enrolled, genuine, impostor, found, stranger = device.run(steps)
    assert enrolled.templates == 2
    # The device's first verification: the face matched, and the step-up policy asks a finger on top.
    assert isinstance(genuine, StepUp) and genuine.acr_values == ACR_FINGER
    assert genuine.reasons == ["first_use_of_device"]
    assert isinstance(impostor, Decision) and impostor.decision == "reject" and impostor.token is None
    assert [c.subject for c in found.candidates] == ["bob"]
    assert stranger.candidates == []
    events = audit(verifier)
    asked = [e for e in events if e.get("event") == "face_liveness"]
    assert len(asked) == 6 and all(e["audit"] and e["liveness_asked"].count("look_at_camera") == 2 for e in asked)
    attempts = [e for e in events if e.get("event") == "verification_attempt" and e.get("modality") == "face"]
    assert [e["outcome"] for e in attempts] == ["step_up", "reject"]
    assert not any("data" in e or "faces" in e for e in events)  # no template in the audit


def test_face_enrollment_is_encrypted_at_rest_and_bound_to_its_subject(device, verifier) -> None:
    async def steps(client):
        api = VerifierAPI(client)
        await face_enroll(api, "alice", 1)
        await face_enroll(api, "bob", 2)

    device.run(steps)
    conn = sqlite3.connect(verifier.pki_dir / "verifier.sqlite")
    rows = conn.execute("SELECT subject_id, ciphertext FROM face_enrollments").fetchall()
    raw = capture(1, 0)
    assert len(rows) == 4 and all(raw[10:40] not in bytes(c) and b"FEMB" not in bytes(c) for _, c in rows)
    # A row moved to another subject no longer decrypts: the subject id is the associated data.
    conn.execute("UPDATE face_enrollments SET subject_id = 'bob' WHERE subject_id = 'alice'")
    conn.commit()
    from verifier.at_rest_key import load_or_create_key
    from verifier.faces import FaceEnrollments

    store = FaceEnrollments(conn, load_or_create_key(verifier.pki_dir / "enrollment.key"))
    with pytest.raises(InvalidTag):
        store.embeddings("bob")
    conn.close()


def test_a_liveness_claim_for_another_nonce_or_none_is_refused(device, verifier) -> None:
    async def steps(client):
        api = VerifierAPI(client)
        await face_enroll(api, "alice", 1)
        errors = []
        for liveness in ("other", None):
            challenge = await api.challenge("verify", "alice")
            steps = steps_for(challenge)
            if liveness == "other":  # the replay of a session made for another nonce
                flipped = {"turn_head_left": "turn_head_right", "turn_head_right": "turn_head_left"}
                steps = tuple(flipped.get(s, s) for s in steps)
            body_liveness = steps if liveness else ()
            try:
                await api.verify("alice", [], faces=[capture(1, 3)], challenge=challenge, liveness=body_liveness)
            except BadRequestError as exc:
                errors.append(exc)
        return errors

    mismatch, missing = device.run(steps)
    assert mismatch.slug == "liveness-mismatch" and "nonce" in str(mismatch)
    assert isinstance(missing, BadTemplateError) or missing.slug == "bad-template"
    refused = [e for e in audit(verifier) if e.get("reason") == "liveness challenge not the nonce's"]
    assert len(refused) == 1 and refused[0]["liveness_asked"] != refused[0]["liveness_claimed"]


def test_malformed_face_records_are_refused(device) -> None:
    async def steps(client):
        api = VerifierAPI(client)
        good = bytearray(capture(1, 0))
        good[-1] ^= 0x40  # the norm is no longer 1
        challenge = await api.challenge("enroll", "alice")
        with pytest.raises(BadRequestError) as info:
            await api.enroll("alice", [], faces=[bytes(good)], challenge=challenge, liveness=steps_for(challenge))
        return info.value

    error = device.run(steps)
    assert error.slug == "bad-template" and "faces[0]" in str(error)


def test_a_request_with_fingers_and_faces_together_is_refused(device, synthetic_templates) -> None:
    async def steps(client):
        api = VerifierAPI(client)
        await face_enroll(api, "alice", 1)
        challenge = await api.challenge("verify", "alice")
        with pytest.raises(BadRequestError) as info:
            await api.verify("alice", [encode_finger(synthetic_templates[0][0])], faces=[capture(1, 2)],
                             challenge=challenge, liveness=steps_for(challenge))
        return info.value

    error = device.run(steps)
    assert error.slug == "bad-template" and "not both" in str(error)
    assert error.status == 422  # as the README's Faces section says (it said a 400)


def test_a_policy_asks_for_the_face_after_the_finger_and_the_finger_after_the_face(
    device, verifier, synthetic_templates
) -> None:
    t = synthetic_templates

    async def enroll(client):  # fingers and a face: a subject with no face gets no step-up asking one
        await enroll_fingers_then_face(VerifierAPI(client), t)  # (tests/test_verifier_missing_factor.py)

    device.run(enroll)  # first: `subject require` refuses an id nobody is enrolled under (a typo protects nobody)
    verifier_cli("subject", "require", "--pki", str(verifier.pki_dir), "alice", "--factors", "finger,face")

    async def steps(client):
        api = VerifierAPI(client)
        finger_first = await api.verify("alice", [encode_finger(t[0][2])])
        challenge = await api.challenge("verify", "alice")
        # Faces are added to an enrolled subject with a session token only.
        with pytest.raises(Exception) as no_token:
            await api.enroll("alice", [], faces=[capture(1, 0)], challenge=challenge, liveness=steps_for(challenge))
        # A finger sent where a face was asked is refused.
        with pytest.raises(StepUpUnknownError):
            await api.verify("alice", [encode_finger(t[0][1])], step_up=finger_first.step_up)
        return finger_first, no_token.value

    finger_first, no_token = device.run(steps)
    assert isinstance(finger_first, StepUp) and finger_first.acr_values == ACR_FACE
    assert finger_first.reasons == ["policy_requires_face"]
    assert no_token.slug == "verification-required"


async def enroll_fingers_then_face(api: VerifierAPI, t) -> None:
    """alice's two fingers; the device's first use (a second finger) gives the session token that adds her face."""
    await api.enroll("alice", [encode_finger(x) for x in t[0][:2] + t[1][:2]])
    first = await api.verify("alice", [encode_finger(t[0][2])])
    token = (await api.verify("alice", [encode_finger(t[1][2])], step_up=first.step_up)).token
    challenge = await api.challenge("enroll", "alice")
    await api.enroll("alice", [], faces=[capture(1, 0), capture(1, 1)], session_token=token,
                     challenge=challenge, liveness=steps_for(challenge))


def test_face_step_up_then_face_first(device, verifier, synthetic_templates) -> None:
    t = synthetic_templates

    async def steps(client):
        api = VerifierAPI(client)
        await enroll_fingers_then_face(api, t)
        verifier_cli("subject", "require", "--pki", str(verifier.pki_dir), "alice", "--factors", "finger,face")
        finger = await api.verify("alice", [encode_finger(t[0][1])])
        wrong_face = await face_verify(api, "alice", 9, step_up=finger.step_up)
        finger = await api.verify("alice", [encode_finger(t[0][1])])
        face = await face_verify(api, "alice", 1, step_up=finger.step_up)
        face_first = await face_verify(api, "alice", 1)
        then_finger = await api.verify("alice", [encode_finger(t[0][2])], step_up=face_first.step_up)
        with pytest.raises(UnknownSubjectError) as unknown:
            await face_verify(api, "carol", 1)
        return finger, wrong_face, face, face_first, then_finger, unknown.value

    finger, wrong_face, face, face_first, then_finger, unknown = device.run(steps)
    assert isinstance(finger, StepUp) and finger.acr_values == ACR_FACE
    assert isinstance(wrong_face, Decision) and wrong_face.decision == "reject"
    assert isinstance(face, Decision) and face.accepted and face.token
    assert isinstance(face_first, StepUp) and face_first.acr_values == ACR_FINGER
    assert isinstance(then_finger, Decision) and then_finger.accepted
    # The decision names the factor that decided it (its score is that factor's): the step-up's, not the first.
    assert (wrong_face.modality, face.modality, then_finger.modality) == ("face", "face", "finger")
    assert then_finger.public()["modality"] == "finger"
    assert unknown.slug == "unknown-subject"


def first_use_done(verifier, device_id: str) -> bool:
    conn = sqlite3.connect(verifier.pki_dir / "verifier.sqlite")
    try:
        return conn.execute("SELECT 1 FROM device_first_use WHERE device_id = ?", (device_id,)).fetchone() is not None
    finally:
        conn.close()


def test_a_face_meets_the_step_up_policy_a_finger_does(device, second_device, verifier, synthetic_templates) -> None:
    """A matched face is no way around the step-up policy: first use, failures and high risk each ask a finger.

    Until the finger answers, no session token is issued and the new device's first use is not done.
    """
    t = synthetic_templates
    kiosk = Device(*second_device)

    async def enroll_both(client):  # on kiosk-1: fingers, its first use's second finger, then faces with the token
        await enroll_fingers_then_face(VerifierAPI(client), t)

    async def first_use(client):
        api = VerifierAPI(client)
        face = await face_verify(api, "alice", 1)
        done_before = first_use_done(verifier, "kiosk-2")
        finger = await api.verify("alice", [encode_finger(t[0][2])], step_up=face.step_up)
        return face, done_before, finger, await face_verify(api, "alice", 1, shot=6)

    async def risk(client):
        api = VerifierAPI(client)
        impostor = await face_verify(api, "alice", 9)
        after_failure = await face_verify(api, "alice", 1, shot=7)
        verifier.mark_high_risk("alice")
        finger = await api.verify("alice", [encode_finger(t[1][2])], step_up=after_failure.step_up)
        return impostor, after_failure, finger, await face_verify(api, "alice", 1, shot=8)

    device.run(enroll_both)
    face, done_before, finger, again = kiosk.run(first_use)
    assert isinstance(face, StepUp) and face.acr_values == ACR_FINGER and face.reasons == ["first_use_of_device"]
    assert not done_before  # the face alone did not end the device's first use
    assert isinstance(finger, Decision) and finger.accepted and finger.token and finger.modality == "finger"
    assert first_use_done(verifier, "kiosk-2")
    assert isinstance(again, Decision) and again.accepted and again.token  # nothing left to ask: the face decides
    impostor, after_failure, finger, high_risk = kiosk.run(risk)
    assert isinstance(impostor, Decision) and impostor.decision == "reject"
    assert isinstance(after_failure, StepUp) and after_failure.reasons == ["recent_failures"]
    assert isinstance(finger, Decision) and finger.accepted
    assert isinstance(high_risk, StepUp) and high_risk.reasons == ["high_risk_subject"]
    asked = [e for e in audit(verifier) if e.get("event") == "verification_attempt" and e.get("outcome") == "step_up"
             and e.get("modality") == "face"]
    assert [e["reasons"] for e in asked] == ["first_use_of_device", "recent_failures", "high_risk_subject"]


def test_a_group_rule_and_a_bad_factor_on_the_command_line(verifier) -> None:
    ok = verifier_cli("subject", "require", "--pki", str(verifier.pki_dir), "--group", "staff", "--factors", "face")
    assert "group staff: a verification needs face" in ok.stdout
    bad = verifier_cli("subject", "require", "--pki", str(verifier.pki_dir), "alice", "--factors", "iris", check=False)
    assert bad.returncode != 0 and "finger, face" in bad.stderr and "fix:" in bad.stderr
    both = verifier_cli("subject", "require", "--pki", str(verifier.pki_dir), "alice", "--group", "x",
                        "--factors", "face", check=False)
    assert both.returncode != 0 and "not both" in both.stderr


@pytest.mark.verifier_settings("identify_fpir = 3e-9")  # face identification's capacity: one comparison
def test_an_identification_past_the_capacity_is_refused_with_its_fix(device, verifier) -> None:
    """At this rate one probe against alice's two embeddings already needs a cosine above 1: nobody could be named,
    alice included (the threshold is never clamped, verifier/ranking.py). That was an empty 200, which a kiosk said
    as "nobody recognised"; it is a 422 ``identification-unreachable`` the agent raises as its own error, with
    ranking's fix and no count (the gallery's size is the operator's), and the operator's log says why, counts
    included."""
    from agent.errors import IdentificationUnreachableError
    from verifier.ranking import UNREACHABLE_FIX

    async def steps(client):
        api = VerifierAPI(client)
        await face_enroll(api, "alice", 1)
        challenge = await api.challenge("identify")
        with pytest.raises(IdentificationUnreachableError) as refused:
            await api.identify([], faces=[capture(1, 7)], challenge=challenge, liveness=steps_for(challenge))
        return refused.value

    refused = device.run(steps)
    assert refused.status == 422 and refused.slug == "identification-unreachable" and refused.fix == UNREACHABLE_FIX
    assert "2 templates" not in refused.message, refused.message  # the gallery's size: not told
    assert not {"comparisons", "largest_search", "templates"} & refused.problem.keys(), refused.problem
    assert "this face identification (1 view) would search more templates" in refused.message, refused.message
    events = audit(verifier)
    capacity = [e for e in events if e.get("event") == "identification_capacity" and e["modality"] == "face"]
    assert capacity and capacity[0]["largest_search"] == 1
    unreachable = [e for e in events if e.get("event") == "identification_unreachable"]
    assert len(unreachable) == 1, unreachable
    assert unreachable[0]["modality"] == "face" and unreachable[0]["comparisons"] == 2
    assert unreachable[0]["setting"] == "identify_fpir", "no face_identify_fpir: the shared rate is the one to raise"
    assert unreachable[0]["templates"] == 2 and unreachable[0]["largest_search"] == 1
    assert unreachable[0]["level"] == "warning" and unreachable[0]["fix"] == UNREACHABLE_FIX
    assert not [e for e in events if e.get("event") == "identification_attempt"], "nothing was matched for it"


@pytest.mark.parametrize(("finger_fpir", "face_fpir"), [
    pytest.param(("finger_identify_fpir", 1e-6), ("identify_fpir", 1e-3), id="finger-override",
                 marks=pytest.mark.verifier_settings("finger_identify_fpir = 1e-6")),
    pytest.param(("identify_fpir", 1e-3), ("face_identify_fpir", 1e-6), id="face-override",
                 marks=pytest.mark.verifier_settings("face_identify_fpir = 1e-6")),
    # Fingers stricter than faces could be: at identify_fpir 1e-10 alone no face comparison could be identified and
    # the verifier refused to start; the face override lets it, fingers keeping the shared rate.
    pytest.param(("identify_fpir", 1e-10), ("face_identify_fpir", 1e-3), id="fingers-stricter-than-faces-allow",
                 marks=pytest.mark.verifier_settings("identify_fpir = 1e-10", "face_identify_fpir = 0.001")),
])
def test_each_modalitys_identification_keeps_its_own_fpir(
    device, verifier, synthetic_templates, finger_fpir: tuple[str, float], face_fpir: tuple[str, float]
) -> None:
    """finger_identify_fpir and face_identify_fpir override identify_fpir for their modality only: fingers' and
    faces' score tails differ (faces reach a cosine of 1 first), so one shared rate kept an operator from asking
    fingers for a stricter one than faces allow. Each identification's threshold, and the capacity logged at start,
    follow the rate in force for its modality, and the log names its key."""
    from biometrics.face import threshold_for_fmr as face_threshold
    from biometrics.fingerprint import threshold_for_fmr as finger_threshold
    from verifier.ranking import reported_threshold
    from verifier.settings import VerifierSettings

    t = synthetic_templates

    async def steps(client):
        api = VerifierAPI(client)
        await face_enroll(api, "alice", 1)  # 2 embeddings
        await api.enroll("bob", [encode_finger(v) for v in t[1][:2]])  # 2 templates
        challenge = await api.challenge("identify")
        face = await api.identify([], faces=[capture(1, 7)], challenge=challenge, liveness=steps_for(challenge))
        return face, await api.identify([encode_finger(t[1][2])])

    face, finger = device.run(steps)
    target_fmr = VerifierSettings().target_fmr

    def told(threshold_for_fmr, fpir: float) -> float:  # one view against 2 templates
        return reported_threshold(threshold_for_fmr, fpir, views=1, templates=2,
                                  verify_threshold=threshold_for_fmr(target_fmr))

    other = {1e-6: 1e-3, 1e-3: 1e-6, 1e-10: 1e-3}  # a rate whose threshold differs: the test tells them apart
    assert finger.threshold == told(finger_threshold, finger_fpir[1]) != told(finger_threshold, other[finger_fpir[1]])
    assert face.threshold == told(face_threshold, face_fpir[1]) != told(face_threshold, other[face_fpir[1]])
    capacity = {e["modality"]: e for e in audit(verifier) if e.get("event") == "identification_capacity"}
    assert (capacity["finger"]["setting"], capacity["finger"]["identify_fpir"]) == finger_fpir, capacity
    assert (capacity["face"]["setting"], capacity["face"]["identify_fpir"]) == face_fpir, capacity


def test_the_faces_of_one_request_must_be_of_one_person(device, verifier) -> None:
    """A first face enrollment took whatever faces it carried (only a face added to a subject's was matched
    against theirs): faces of two people under one id let either verify as it. A verification's or an
    identification's faces of several people were that many tries at one nonce."""

    async def steps(client):
        api = VerifierAPI(client)
        mixed = [capture(1, 0), capture(1, 1), capture(2, 0)]
        refused = []
        challenge = await api.challenge("enroll", "alice")
        with pytest.raises(BadRequestError) as enrolling:
            await api.enroll("alice", [], faces=mixed, challenge=challenge, liveness=steps_for(challenge))
        refused.append(enrolling.value)
        enrolled = await face_enroll(api, "alice", 1)  # her own faces, of one person, are enrolled
        challenge = await api.challenge("verify", "alice")
        with pytest.raises(BadRequestError) as verifying:
            await api.verify("alice", [], faces=[capture(2, 5), capture(1, 5)], challenge=challenge,
                             liveness=steps_for(challenge))
        refused.append(verifying.value)
        challenge = await api.challenge("identify")
        with pytest.raises(BadRequestError) as identifying:
            await api.identify([], faces=[capture(3, 0), capture(1, 6)], challenge=challenge,
                               liveness=steps_for(challenge))
        refused.append(identifying.value)
        challenge = await api.challenge("identify")  # views of one person, the same one twice: taken
        found = await api.identify([], faces=[capture(1, 7), capture(1, 7)], challenge=challenge,
                                   liveness=steps_for(challenge))
        return refused, enrolled, found

    refused, enrolled, found = device.run(steps)
    assert [e.slug for e in refused] == ["bad-template"] * 3
    assert "faces[2] is not of the person of faces[0]" in str(refused[0]) and "one person" in str(refused[0])
    assert "faces[1] is not of the person of faces[0]" in str(refused[1])
    assert enrolled.templates == 2 and [c.subject for c in found.candidates] == ["alice"]
    events = [e for e in audit(verifier) if e.get("reason") == "faces of more than one person"]
    assert [(e["operation"], e["item"]) for e in events] == [("enroll", "faces[2]"), ("verify", "faces[1]"),
                                                             ("identify", "faces[1]")]
    conn = sqlite3.connect(verifier.pki_dir / "verifier.sqlite")
    try:
        assert conn.execute("SELECT COUNT(*) FROM face_enrollments").fetchone() == (2,)  # none of the mixed three
    finally:
        conn.close()


def test_views_of_one_person_that_differ_more_than_a_verification_allows_are_still_one_person(device, verifier) -> None:
    """The one-person check used the 1:1 threshold (0.535), under which 3.9 % of ORL's same-person pairs fall: an
    enrollment's three views (three pairs) refused about one genuine person in nine. Views scoring 0.44 to 0.57
    with each other (a person turning between the challenge's phases) are one person's."""
    from biometrics.face import threshold_for_fmr
    from protocol.face_template import decode

    views = [capture(5, shot, noise=1.0) for shot in range(3)]
    values = np.array([decode(v).values for v in views])
    scores = (values @ values.T)[np.triu_indices(3, 1)]
    # under a verification's threshold (FMR 1e-4), above one a stranger passes once in a hundred (FMR 1e-2)
    assert threshold_for_fmr(1e-2) <= scores.min() and scores.min() < threshold_for_fmr(1e-4), scores

    async def steps(client):
        api = VerifierAPI(client)
        challenge = await api.challenge("enroll", "dora")
        return await api.enroll("dora", [], faces=views, challenge=challenge, liveness=steps_for(challenge))

    assert device.run(steps).templates == 3


def test_liveness_steps_are_the_challenges_prompt_codes_and_no_device_text_reaches_the_audit(device, verifier) -> None:
    """A step was any string of any length, and a claim not the nonce's was audited whole (``liveness_claimed``):
    a device wrote up to a request body of its own text into the verifier's audit trail with each refusal."""
    from biometrics.face import liveness
    from protocol.face_template import LIVENESS_STEPS

    assert set(LIVENESS_STEPS) == {liveness.TURN_LEFT, liveness.TURN_RIGHT, liveness.LOOK_BACK}
    planted = "PLANTED-" + "x" * 50_000

    async def steps(client):
        api = VerifierAPI(client)
        await face_enroll(api, "alice", 1)
        refused = []
        for claimed in ((planted,), ("turn_head_up", "look_at_camera")):
            challenge = await api.challenge("verify", "alice")
            with pytest.raises(BadRequestError) as info:
                await api.verify("alice", [], faces=[capture(1, 3)], challenge=challenge, liveness=claimed)
            refused.append(info.value)
        return refused

    refused = device.run(steps)
    assert [e.slug for e in refused] == ["bad-template", "bad-template"]
    assert "turn_head_left, turn_head_right, look_at_camera" in str(refused[1]) and "PLANTED" not in str(refused[0])
    text = verifier.log_path.read_text()
    assert "PLANTED" not in text and "turn_head_up" not in text
    assert max(len(line) for line in text.splitlines()) < 4096
