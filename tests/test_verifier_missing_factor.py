"""A factor rule's missing factor can be enrolled: the README's flow, against the real verifier over mTLS.

`capture-verifier subject require ana --factors finger,face` on a subject with
fingers only (or a group rule set before a face-first member joins) used to
leave no way to add the missing factor: adding needs a session token, a token
needs an accepted decision, and the rule accepts nothing without that factor.
A match of the factor the subject has now answers 403 ``factor-not-enrolled``
with an enrollment token for the missing factor only; the agent's client
(:class:`agent.verifier_api.VerifierAPI`) raises it as
:class:`agent.errors.FactorNotEnrolledError` carrying the grant.
"""

from __future__ import annotations

import pytest

from agent.devstack import verifier_cli
from agent.errors import FactorNotEnrolledError, SessionTokenRefusedError, VerifierError
from agent.verifier_api import VerifierAPI
from biometrics.fingerprint.iso19794_2 import encode as encode_finger
from protocol.face_template import ACR_FACE, ACR_FINGER
from protocol.messages import Decision, StepUp
from protocol.sensor import ReaderIdentity, SensorEnrollmentRequest, print_hash
from tests.test_biometric_api import Device
from tests.test_verifier_faces import audit, capture, face_enroll, face_verify, steps_for

READER = ReaderIdentity("virtual_device", "usb0")


@pytest.fixture
def device(provisioned) -> Device:
    return Device(*provisioned)


async def refused(coro) -> VerifierError:
    with pytest.raises(VerifierError) as info:
        await coro
    return info.value


async def add_face(api: VerifierAPI, subject: str, seed: int, token: str | None):
    challenge = await api.challenge("enroll", subject)
    return await api.enroll(subject, [], faces=[capture(seed, 0), capture(seed, 1)], session_token=token,
                            challenge=challenge, liveness=steps_for(challenge))


def test_the_readme_flow_adds_the_missing_factor_and_then_both_are_needed(
    device, verifier, synthetic_templates
) -> None:
    t = synthetic_templates
    finger = {n: [encode_finger(x) for x in t[n]] for n in t}
    pki = str(verifier.pki_dir)

    async def enroll_ana(client):
        api = VerifierAPI(client)
        await api.enroll("ana", finger[0][:2] + finger[1][:2])
        first = await api.verify("ana", [finger[0][2]])  # the device's first use: a second finger, then a token
        assert isinstance(await api.verify("ana", [finger[1][2]], step_up=first.step_up), Decision)

    device.run(enroll_ana)
    verifier_cli("subject", "require", "--pki", pki, "ana", "--factors", "finger,face")
    verifier_cli("subject", "require", "--pki", pki, "--group", "staff", "--factors", "finger,face")  # before bob

    async def ana_steps(client):
        api = VerifierAPI(client)
        out = {}
        # A finger matches; the rule's face is not enrolled: no step-up she cannot answer, a grant for a face.
        out["grant"] = (await refused(api.verify("ana", [finger[0][1]]))).grant()
        second = (await refused(api.verify("ana", [finger[0][2]]))).grant()  # another verification, another grant
        token = out["grant"].token
        # The grant is refused for anything but a face for ana: her fingers (a graft onto a factor she has).
        out["fingers with face grant"] = await refused(api.enroll("ana", [finger[0][0]], session_token=token))
        out["added"] = await add_face(api, "ana", 1, token)
        out["grant twice"] = await refused(add_face(api, "ana", 1, token))
        # The second grant was for a face she now has: never a graft onto an enrolled factor.
        out["grant once she has a face"] = await refused(add_face(api, "ana", 1, second.token))
        # Both factors now, and both needed: the finger asks the face, the face decides; the face alone asks a finger.
        out["finger"] = await api.verify("ana", [finger[0][1]])
        out["face answers"] = await face_verify(api, "ana", 1, step_up=out["finger"].step_up)
        out["face first"] = await face_verify(api, "ana", 1, shot=6)
        out["finger answers"] = await api.verify("ana", [finger[1][1]], step_up=out["face first"].step_up)
        return out

    ana = device.run(ana_steps)
    assert ana["grant"].factor == "face" and ana["grant"].expires_in > 0
    assert isinstance(ana["fingers with face grant"], SessionTokenRefusedError)
    assert (ana["added"].subject, ana["added"].templates) == ("ana", 2)
    assert isinstance(ana["grant twice"], SessionTokenRefusedError)  # single use
    assert isinstance(ana["grant once she has a face"], SessionTokenRefusedError)
    assert "has one" in ana["grant once she has a face"].message
    assert isinstance(ana["finger"], StepUp) and ana["finger"].acr_values == ACR_FACE
    assert ana["finger"].reasons == ["policy_requires_face"]
    assert isinstance(ana["face answers"], Decision) and ana["face answers"].accepted and ana["face answers"].token
    assert isinstance(ana["face first"], StepUp) and ana["face first"].acr_values == ACR_FINGER
    assert isinstance(ana["finger answers"], Decision) and ana["finger answers"].accepted

    async def bob_steps(client):
        api = VerifierAPI(client)
        out = {}
        out["joined"] = await face_enroll(api, "bob", 2, group="staff")  # the group's rule came first
        out["grant"] = (await refused(face_verify(api, "bob", 2))).grant()
        token = out["grant"].token
        out["face with finger grant"] = await refused(add_face(api, "bob", 2, token))
        # ... nor a print on a match-on-sensor reader (a finger the verifier never matches), nor another subject.
        sensor = SensorEnrollmentRequest("bob", READER, print_hash("bob-print"), session_token=token)
        out["sensor print with finger grant"] = await refused(api.signed(sensor, None, None))
        out["ana with bob's grant"] = await refused(add_face(api, "ana", 1, token))
        challenge = await api.challenge("enroll", "bob")
        out["added"] = await api.enroll("bob", finger[2][:2] + finger[3][:2], session_token=token,
                                        challenge=challenge)
        out["face"] = await face_verify(api, "bob", 2, shot=7)
        out["finger answers"] = await api.verify("bob", [finger[2][2]], step_up=out["face"].step_up)
        out["finger"] = await api.verify("bob", [finger[3][2]])
        out["face answers"] = await face_verify(api, "bob", 2, shot=8, step_up=out["finger"].step_up)
        return out

    bob = device.run(bob_steps)
    assert bob["joined"].group == "staff"
    assert bob["grant"].factor == "finger"
    assert isinstance(bob["face with finger grant"], SessionTokenRefusedError)
    assert isinstance(bob["sensor print with finger grant"], SessionTokenRefusedError)
    assert isinstance(bob["ana with bob's grant"], SessionTokenRefusedError)
    assert bob["added"].templates == 4
    assert isinstance(bob["face"], StepUp) and bob["face"].reasons == ["policy_requires_finger"]
    assert isinstance(bob["finger answers"], Decision) and bob["finger answers"].accepted
    assert isinstance(bob["finger"], StepUp) and bob["finger"].acr_values == ACR_FACE
    assert isinstance(bob["face answers"], Decision) and bob["face answers"].accepted

    events = audit(verifier)
    grants = [e for e in events if e.get("outcome") == "factor_not_enrolled"]
    assert [(e["subject"], e["modality"], e["missing_factor"], e["enrollment_token_issued"]) for e in grants] == [
        ("ana", "finger", "face", "enroll:face"), ("ana", "finger", "face", "enroll:face"),
        ("bob", "face", "finger", "enroll:finger")]
    assert all(e["audit"] is True and e["device_id"] == device.identity.device_id for e in grants)
    scoped = [(e["subject"], e.get("modality", "finger"), e["token_scope"]) for e in events
              if e.get("event") == "enrollment" and (e.get("token_scope") or "").startswith("enroll:")]
    assert scoped == [("ana", "face", "enroll:face"), ("bob", "finger", "enroll:finger")]
    refusals = [e["reason"] for e in events if e.get("event") == "biometric_request_refused"]
    assert "enrollment token for a factor the subject has" in refusals
    log_text = verifier.log_path.read_text()
    assert ana["grant"].token not in log_text and bob["grant"].token not in log_text


def test_a_grant_is_no_decision_and_no_session(device, verifier, synthetic_templates) -> None:
    """The step-up policy's own reasons come first (a grant stands where a token would have been issued); the 403
    carries no decision and no session token, names the fix, and counts as no accept: the failure before it still
    steps the next verification up."""
    t = synthetic_templates
    finger = {n: [encode_finger(x) for x in t[n]] for n in t}

    async def enroll(client):
        api = VerifierAPI(client)
        await api.enroll("ana", finger[0][:2] + finger[1][:2])
        first = await api.verify("ana", [finger[0][2]])
        await api.verify("ana", [finger[1][2]], step_up=first.step_up)

    device.run(enroll)
    verifier_cli("subject", "require", "--pki", str(verifier.pki_dir), "ana", "--factors", "finger,face")

    async def steps(client):
        api = VerifierAPI(client)
        rejected = await api.verify("ana", [finger[2][0]])  # someone else's finger: a failure on the count
        matched = await api.verify("ana", [finger[0][1]])  # recent failures: a second finger first
        error = await refused(api.verify("ana", [finger[1][1]], step_up=matched.step_up))
        again = await api.verify("ana", [finger[0][2]])  # the grant reset nothing: still a second finger
        return rejected, matched, error, again

    rejected, matched, error, again = device.run(steps)
    assert isinstance(rejected, Decision) and not rejected.accepted
    assert isinstance(matched, StepUp) and matched.acr_values == "second_finger"
    assert matched.reasons == ["recent_failures"]
    assert isinstance(error, FactorNotEnrolledError) and error.status == 403 and error.slug == "factor-not-enrolled"
    assert error.grant().factor == "face"
    assert "decision" not in error.problem and "token" not in error.problem
    assert "--face --subject ana --add" in error.fix
    assert isinstance(again, StepUp) and again.reasons == ["recent_failures"]
    attempts = [e for e in audit(verifier) if e.get("event") == "verification_attempt" and e.get("subject") == "ana"]
    assert [e["outcome"] for e in attempts][-4:] == ["reject", "step_up", "factor_not_enrolled", "step_up"]
