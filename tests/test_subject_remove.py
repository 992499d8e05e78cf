"""`capture-verifier subject remove`: a subject's biometric data deleted, also while `serve` runs.

Real verifier processes over mTLS on 127.0.0.1 (the `verifier` fixture, stopped by it), the real command line in
its own process, and the agent's client for the requests: what a removed subject meets afterwards at a running
server (verification refused as unknown, never named by an identification, a first enrollment accepted), and what
the command refuses (an id nobody is enrolled under).
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.errors import UnknownSubjectError, VerificationRequiredError
from agent.verifier_api import VerifierAPI
from biometrics.face import challenge_for
from biometrics.fingerprint.iso19794_2 import encode as encode_finger
from protocol import endpoints
from protocol.face_template import FACES, LIVENESS, wire_faces, wire_liveness
from protocol.sensor import ReaderIdentity, SensorAssertion, SensorEnrollmentRequest, print_hash
from protocol.signing import sign_request
from tests.test_biometric_api import Device, wire
from tests.test_verifier_faces import capture, face_enroll, steps_for
from tests.test_verifier_operator_cli import cli, refused, rows
from verifier.app import VerifierApp
from verifier.http import Deferred, Request
from verifier.matching import Budget
from verifier.pki import init_pki
from verifier.problems import Problem
from verifier.registry import Device as RegisteredDevice
from verifier.settings import VerifierSettings
from verifier.store import open_database
from verifier.subjects import remove_subject

READER = ReaderIdentity("virtual_device", "usb0")


@pytest.fixture
def device(provisioned) -> Device:
    return Device(*provisioned)


def remove(pki: Path, subject: str, *more: str) -> tuple[list[str], dict]:
    """`subject remove`, exit 0: its printed lines and its audit line (the command's structlog, on stderr)."""
    done = cli("subject", "remove", "--pki", str(pki), subject, *more)
    assert done.returncode == 0, (done.stdout, done.stderr)
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    [event] = [e for e in events if e.get("event") == "subject_removed"]
    return done.stdout.splitlines(), event


async def identified(api: VerifierAPI, finger=None, face: bytes | None = None) -> list[str]:
    """The subjects a 1:N search names for one finger view or one face."""
    if face is None:
        found = await api.identify([encode_finger(finger)])
    else:
        challenge = await api.challenge("identify")
        found = await api.identify([], faces=[face], challenge=challenge, liveness=steps_for(challenge))
    return [c.subject for c in found.candidates]


async def face_verified(api: VerifierAPI, subject: str, seed: int) -> object:
    challenge = await api.challenge("verify", subject)
    return await api.verify(subject, [], faces=[capture(seed, 5)], challenge=challenge, liveness=steps_for(challenge))


def test_a_subject_removed_while_serve_runs_is_unknown_never_identified_and_enrolls_again_as_new(
    device, verifier, synthetic_templates
) -> None:
    """Fingers and a face of alice, searched (the server's galleries hold her), removed by the operator beside the
    running server: her verifications are refused as unknown, no 1:N search names her, a first enrollment of her id
    is accepted; bob and bea, enrolled beside her (a finger, a face), are matched as before. The command's audit
    line holds counts, no template.
    """
    t = synthetic_templates
    alice_fingers = [encode_finger(x) for x in t[0][:2] + t[1][:2]]

    async def before(client):
        api = VerifierAPI(client)
        await api.enroll("alice", alice_fingers)
        first = await api.verify("alice", [encode_finger(t[0][2])])  # the device's first use: a second finger
        token = (await api.verify("alice", [encode_finger(t[1][2])], step_up=first.step_up)).token
        challenge = await api.challenge("enroll", "alice")
        await api.enroll("alice", [], faces=[capture(1, 0), capture(1, 1)], session_token=token,
                         challenge=challenge, liveness=steps_for(challenge))
        assert (await api.verify("alice", [encode_finger(t[3][0])])).decision == "reject"  # a lockout count
        await api.enroll("bob", [encode_finger(x) for x in t[2][:2]])
        await face_enroll(api, "bea", 2)
        return await identified(api, t[0][2]), await identified(api, face=capture(1, 7))

    assert device.run(before) == (["alice"], ["alice"])  # loaded into the server's galleries
    lines, event = remove(verifier.pki_dir, "alice")
    assert lines[0] == ("removed subject alice: 4 finger templates, 2 face templates, 0 match-on-sensor print "
                        "records (0 live tokens and 2 lockout counts dropped)"), lines
    assert lines[-1] == "next: the person can enroll again as a first enrollment: capture-agent enroll --subject alice"
    assert rows(verifier.pki_dir, "SELECT subject_id FROM enrollments WHERE subject_id = 'alice'") == []
    assert rows(verifier.pki_dir, "SELECT subject_id FROM face_enrollments WHERE subject_id = 'alice'") == []

    async def after(client):
        api = VerifierAPI(client)
        with pytest.raises(UnknownSubjectError) as by_finger:
            await api.verify("alice", [encode_finger(t[0][2])])
        with pytest.raises(UnknownSubjectError) as by_face:
            await face_verified(api, "alice", 1)
        named = (await identified(api, t[0][2]), await identified(api, t[1][2]),
                 await identified(api, face=capture(1, 7)))
        bob = (await identified(api, t[2][2]), await identified(api, face=capture(2, 7)))
        again = await api.enroll("alice", [encode_finger(x) for x in t[0][:2]])  # a first enrollment: no token
        return by_finger.value, by_face.value, named, bob, again, await identified(api, t[0][2])

    by_finger, by_face, named, bob, again, named_again = device.run(after)
    assert by_finger.slug == by_face.slug == "unknown-subject"
    assert named == ([], [], []), "a removed subject is never a candidate"
    assert bob == (["bob"], ["bea"])
    assert (again.subject, again.templates) == ("alice", 2)
    assert named_again == ["alice"]  # the new enrollment, searched by the same running server

    # The audit line: who and how many, nothing of a template.
    assert event["audit"] is True and event["subject"] == "alice" and event["forget"] is False
    assert (event["finger_templates"], event["face_templates"], event["sensor_prints"]) == (4, 2, 0)
    assert all(isinstance(v, bool | int) or len(str(v)) < 40 for v in event.values()), event
    said = "\n".join(lines) + json.dumps(event)
    for record in [*alice_fingers, capture(1, 0)]:
        assert base64.b64encode(record)[8:48].decode() not in said and record.hex()[16:80] not in said
    reloaded = [json.loads(line) for line in verifier.log_path.read_text().splitlines()
                if '"removed_subjects_forgotten"' in line]
    assert reloaded and reloaded[0]["finger_subjects_dropped"] == 1 and reloaded[0]["face_subjects_dropped"] == 1


def test_a_replayed_enrollment_answer_brings_nothing_back(device, verifier, synthetic_templates) -> None:
    """The idempotency store answers a repeat with the first answer and runs nothing: the removed rows stay gone."""
    t = synthetic_templates
    path = "/v1/subjects/carol/enrollments"

    async def post(client, body: dict) -> int:
        return (await client.request("POST", path, json=body, idempotency_key="enroll-carol-1")).status_code

    async def first(client):
        body = await device.signed(client, path, templates=[wire(x) for x in t[3][:2]])
        return body, await post(client, body)

    body, status = device.run(first)
    assert status == 201
    remove(verifier.pki_dir, "carol")

    async def replay(client):
        status = await post(client, body)
        with pytest.raises(UnknownSubjectError):
            await VerifierAPI(client).verify("carol", [encode_finger(t[3][2])])
        return status

    assert device.run(replay) == 201  # the stored answer of the first request
    assert rows(verifier.pki_dir, "SELECT subject_id FROM enrollments WHERE subject_id = 'carol'") == []


def test_a_subject_whose_sensor_print_is_unreadable_enrolls_again_in_its_group(device, verifier) -> None:
    """Recovery: dave's print on the match-on-sensor reader no longer reads, and `enroll --add` would verify with it.
    A first enrollment is refused while dave is enrolled; once removed (serve running), it is accepted, and dave is
    in the group he was in (the rules are kept without --forget)."""

    def enroll_on_sensor(print_name: str, group: str | None = None):
        async def steps(client):
            api = VerifierAPI(client)
            return await api.signed(SensorEnrollmentRequest("dave", READER, print_hash(print_name), group), None, None)

        return device.run(steps)

    assert enroll_on_sensor("dave-print", "night-shift")["group"] == "night-shift"
    with pytest.raises(VerificationRequiredError):
        enroll_on_sensor("dave-new-print")
    lines, event = remove(verifier.pki_dir, "dave")
    assert event["sensor_prints"] == 1
    assert any(line.startswith("kept: group night-shift;") and "--forget dave" in line for line in lines), lines
    assert any("reader keeps the print" in line for line in lines), lines
    again = enroll_on_sensor("dave-new-print")
    assert again["group"] == "night-shift"
    assert rows(verifier.pki_dir, "SELECT print_hash FROM sensor_enrollments WHERE subject_id = 'dave'") == [
        (print_hash("dave-new-print"),)
    ]


def seed_subject(pki: Path, subject: str) -> None:
    """A subject as the server leaves one (a sensor print, a group, a mark, a factor rule, a live token, a lockout
    count), written through the verifier's own stores: no server is needed for the command's own checks."""
    from verifier.faces import FactorRules
    from verifier.policy import Lockouts
    from verifier.sensor_prints import SensorPrints
    from verifier.sessions import SessionTokens
    from verifier.stepup import StepUpPolicy
    from verifier.store import open_database
    from verifier.subjects import SubjectGroups

    conn = open_database(pki / "verifier.sqlite")
    try:
        SensorPrints(conn).record(subject, "kiosk-1", "virtual_device", "usb0", print_hash(subject))
        SubjectGroups(conn).assign(subject, "staff")
        StepUpPolicy(conn).mark_high_risk(subject)
        FactorRules(conn).set("subject", subject, ["finger", "face"])
        SessionTokens(conn).issue("kiosk-1", subject)
        Lockouts(conn).record("kiosk-1", subject, False)
    finally:
        conn.close()


def test_an_unknown_or_malformed_id_is_refused_with_its_fix_and_nothing_changes(verifier_state) -> None:
    seed_subject(verifier_state, "erin")
    before = rows(verifier_state, "SELECT subject_id FROM sensor_enrollments")
    for subject in ("Erin", "nobody"):
        error, fix = refused(cli("subject", "remove", "--pki", str(verifier_state), subject))
        assert error == f"error: no subject {subject!r} is enrolled (ids are case-sensitive)"
        assert "subject list --pki DIR" in fix and "nothing was removed" in fix
    error, fix = refused(cli("subject", "remove", "--pki", str(verifier_state), "../erin"))
    assert "is not a subject id" in error and "letters" in fix
    assert rows(verifier_state, "SELECT subject_id FROM sensor_enrollments") == before == [("erin",)]


def test_remove_keeps_the_rules_and_forget_drops_them_after(verifier_state) -> None:
    """Default: the biometric rows and the per-subject state go, the operator's rules stay (and say how to drop
    them); on the removed id only --forget has something left to do, and then nothing names it."""
    seed_subject(verifier_state, "erin")
    lines, event = remove(verifier_state, "erin")
    assert (event["sensor_prints"], event["session_tokens"], event["lockout_rows"]) == (1, 1, 2)
    assert lines[1] == ("kept: group staff, high-risk mark, factor rule finger,face; a re-enrollment of erin is "
                        "under them (to drop them: capture-verifier subject remove --pki DIR --forget erin)")
    assert "for an erasure, run there: capture-agent forget --subject erin" in lines[2], lines  # the sensor's copy
    for table in ("sensor_enrollments", "session_tokens", "lockouts"):
        assert rows(verifier_state, f"SELECT * FROM {table} WHERE subject_id = 'erin'") == [], table  # noqa: S608
    assert rows(verifier_state, "SELECT group_name FROM subject_groups WHERE subject_id = 'erin'") == [("staff",)]

    error, fix = refused(cli("subject", "remove", "--pki", str(verifier_state), "erin"))
    assert "only its rules are kept: group staff, high-risk mark, factor rule finger,face" in error
    assert fix == "fix: to drop them too: capture-verifier subject remove --pki DIR --forget erin"
    lines, event = remove(verifier_state, "erin", "--forget")
    assert event["rules_dropped"] == "group,high_risk,factor_rule"
    assert lines[1] == ("nothing names erin any more but the audit trail (dropped: group staff, high-risk mark, "
                        "factor rule finger,face)")
    with sqlite3.connect(verifier_state / "verifier.sqlite") as conn:
        for table, column in (("subject_groups", "subject_id"), ("subject_risk", "subject_id"),
                              ("required_factors", "name")):
            assert conn.execute(f"SELECT * FROM {table} WHERE {column} = 'erin'").fetchall() == [], table  # noqa: S608
    assert refused(cli("subject", "remove", "--pki", str(verifier_state), "erin", "--forget"))[0].startswith(
        "error: no subject 'erin' is enrolled")


# ---------------------------------------------------------------- a removal while a decision is being matched


@pytest.fixture
def in_process(tmp_path: Path, ca) -> Iterator[tuple[VerifierApp, Callable[..., Request]]]:
    """The verifier's app in this process on a fresh PKI and database, and a maker of kiosk-1's signed requests
    (a real signature over a real nonce): the handlers, their matching and their decisions are called one by one,
    so a removal can come exactly between a request's matching and its decision."""
    init_pki(tmp_path / "pki")
    app = VerifierApp(VerifierSettings(pki_dir=tmp_path / "pki"))
    key, cert = ca.issue_key_and_cert(["kiosk-1"], client=True)

    def signed(path: str, on: str = "", faces: list[bytes] | None = None, **fields: object) -> Request:
        """A request to ``path`` (``on``: the subject of an /v1/subjects/{id}/... path) with ``fields`` signed;
        ``faces`` go with the liveness steps of the request's nonce."""
        nonce, _ = app.biometric.challenges.issue("kiosk-1")
        if faces:
            steps = challenge_for(nonce.encode("ascii")).steps
            fields = {**fields, FACES: wire_faces(faces), LIVENESS: wire_liveness(steps)}
        body = sign_request(key, "POST", path, {"nonce": nonce, **fields})
        kiosk = RegisteredDevice("kiosk-1", "active", "01")
        return Request("POST", path, {}, json.dumps(body).encode(), kiosk, cert, on)

    try:
        yield app, signed
    finally:
        app.pool.close()
        app.conn.close()


def matched_then_removed(app: VerifierApp, deferred: Deferred, subject: str) -> object:
    """``deferred``'s matching done, then ``subject`` removed by the command's own transaction on its own
    connection (as `subject remove` beside `serve`): what the decision then gets to see."""
    outcome = deferred.work(Budget(time.monotonic() + 60))
    conn = open_database(app.settings.database)
    try:
        remove_subject(conn, subject)
    finally:
        conn.close()
    return outcome


def test_a_decision_matched_before_a_removal_names_and_admits_nobody_removed(in_process, synthetic_templates) -> None:
    """A verification and an identification matched on alice's templates, decided after she was removed: the
    verification is refused as unknown (was a decision on erased templates, with its session token), the
    identification does not name her (was her name, from the gallery its job had searched)."""
    app, signed = in_process
    t = synthetic_templates
    app.biometric.enrollments.add("alice", "kiosk-1", [encode_finger(x) for x in t[0][:2]])
    app.biometric.enrollments.add("bob", "kiosk-1", [encode_finger(x) for x in t[1][:2]])

    verification = app.biometric.verify(signed("/v1/verifications", subject="alice", templates=[wire(t[0][2])]))
    outcome = matched_then_removed(app, verification, "alice")
    with pytest.raises(Problem) as refused_:
        verification.finish(outcome)
    assert refused_.value.slug == "unknown-subject"

    app.biometric.enrollments.add("alice", "kiosk-1", [encode_finger(x) for x in t[0][:2]])  # enrolled again
    for probe, expected in ((t[0][2], []), (t[1][2], ["bob"])):
        identification = app.biometric.identify(signed("/v1/identifications", templates=[wire(probe)]))
        answer = identification.finish(matched_then_removed(app, identification, "alice"))
        assert [c["subject"] for c in json.loads(answer.body)["candidates"]] == expected


def test_a_face_decision_matched_before_a_removal_names_and_admits_nobody_removed(in_process) -> None:
    """The same for faces: fay's face verification refused as unknown, the face identification naming only gil."""
    app, signed = in_process
    app.biometric.faces.store.add("fay", "kiosk-1", [capture(6, 0), capture(6, 1)])
    app.biometric.faces.store.add("gil", "kiosk-1", [capture(7, 0), capture(7, 1)])

    verification = app.biometric.verify(signed("/v1/verifications", subject="fay", faces=[capture(6, 5)]))
    outcome = matched_then_removed(app, verification, "fay")
    with pytest.raises(Problem) as refused_:
        verification.finish(outcome)
    assert refused_.value.slug == "unknown-subject"

    app.biometric.faces.store.add("fay", "kiosk-1", [capture(6, 0), capture(6, 1)])  # enrolled again
    for probe, expected in ((capture(6, 7), []), (capture(7, 7), ["gil"])):
        identification = app.biometric.identify(signed("/v1/identifications", faces=[probe]))
        answer = identification.finish(matched_then_removed(app, identification, "fay"))
        assert [c["subject"] for c in json.loads(answer.body)["candidates"]] == expected


def test_templates_added_while_the_subject_is_removed_are_refused_and_its_token_stays_gone(
    in_process, synthetic_templates
) -> None:
    """An enrollment adding to alice with her session token, decided after her removal: refused as unknown (was
    stored: part of an erased enrollment back); one the verifier could not decide (busy) does not give her token
    back (the removal deleted it: given back, it would add to whoever enrolls the id next)."""
    app, signed = in_process
    t = synthetic_templates
    path = "/v1/subjects/alice/enrollments"

    def adding() -> Deferred:
        app.biometric.enrollments.add("alice", "kiosk-1", [encode_finger(x) for x in t[0][:2]])
        token = app.biometric.sessions.issue("kiosk-1", "alice")["token"]
        return app.biometric.enroll(signed(path, on="alice", templates=[wire(t[0][2])], session_token=token))

    enrollment = adding()
    outcome = matched_then_removed(app, enrollment, "alice")
    with pytest.raises(Problem) as refused_:
        enrollment.finish(outcome)
    assert refused_.value.slug == "unknown-subject" and "removed it" in refused_.value.detail
    assert "capture-agent enroll --subject alice" in refused_.value.fix
    assert app.conn.execute("SELECT COUNT(*) FROM enrollments WHERE subject_id = 'alice'").fetchone() == (0,)

    undecided = adding()
    matched_then_removed(app, undecided, "alice")
    undecided.undo()
    assert app.conn.execute("SELECT COUNT(*) FROM session_tokens WHERE subject_id = 'alice'").fetchone() == (0,)


def first_enrolled(app: VerifierApp, signed: Callable[..., Request], subject: str, **fields: object) -> object:
    """A first enrollment of ``subject`` through the server's own handler (which sees the removals first), its
    matching and its decision, committed to the galleries: a new person taking a removed id."""
    enrollment = app.biometric.enroll(signed(f"/v1/subjects/{subject}/enrollments", on=subject, **fields))
    answer = enrollment.finish(enrollment.work(Budget(time.monotonic() + 60)))
    app.biometric.committed()
    return answer


def removed(app: VerifierApp, subject: str) -> None:
    conn = open_database(app.settings.database)
    try:
        remove_subject(conn, subject)
    finally:
        conn.close()


def decided_after_the_id_was_taken(
    app: VerifierApp, signed: Callable[..., Request], subject: str, *, probe: dict, taker: dict
) -> tuple[Problem, list]:
    """A verification of ``subject`` and an identification, both with ``probe`` (the enrolled person's capture),
    matched; then ``subject`` removed and first-enrolled by another person (``taker``); then both decided: the
    verification's refusal, and the identification's candidates."""
    verification = app.biometric.verify(signed("/v1/verifications", subject=subject, **probe))
    identification = app.biometric.identify(signed("/v1/identifications", **probe))
    verified = verification.work(Budget(time.monotonic() + 60))
    found = identification.work(Budget(time.monotonic() + 60))
    removed(app, subject)
    first_enrolled(app, signed, subject, **taker)
    with pytest.raises(Problem) as refused:
        verification.finish(verified)
    return refused.value, json.loads(identification.finish(found).body)["candidates"]


def test_a_removed_id_enrolled_by_another_person_is_not_theirs_in_the_galleries(
    in_process, synthetic_templates
) -> None:
    """alice removed, then the id enrolled by another person (templates of t[2]) through the running server: an
    identification with the first alice's finger names nobody, the new one's names alice; likewise for faces."""
    app, signed = in_process
    t = synthetic_templates
    app.biometric.enrollments.add("alice", "kiosk-1", [encode_finger(x) for x in t[0][:2]])
    app.biometric.faces.store.add("fay", "kiosk-1", [capture(6, 0), capture(6, 1)])

    def named(**probe: object) -> list[str]:
        identification = app.biometric.identify(signed("/v1/identifications", **probe))
        answer = identification.finish(identification.work(Budget(time.monotonic() + 60)))
        return [c["subject"] for c in json.loads(answer.body)["candidates"]]

    assert named(templates=[wire(t[0][2])]) == ["alice"]  # the gallery loaded with the first alice
    assert named(faces=[capture(6, 5)]) == ["fay"]
    removed(app, "alice")
    removed(app, "fay")
    first_enrolled(app, signed, "alice", templates=[wire(x) for x in t[2][:2]])
    first_enrolled(app, signed, "fay", faces=[capture(8, 0), capture(8, 1)])
    assert named(templates=[wire(t[0][2])]) == []
    assert named(templates=[wire(t[2][2])]) == ["alice"]
    assert named(faces=[capture(6, 5)]) == []
    assert named(faces=[capture(8, 5)]) == ["fay"]


def test_a_decision_matched_on_a_removed_person_is_not_given_to_the_one_who_took_the_id(
    in_process, synthetic_templates
) -> None:
    """alice's verification and identification matched on her templates, then alice removed and the id enrolled
    by another person (t[2]) before the decisions: the verification is refused as unknown and the identification
    does not name alice (both were the first alice's match, given to the new one's id)."""
    app, signed = in_process
    t = synthetic_templates
    app.biometric.enrollments.add("alice", "kiosk-1", [encode_finger(x) for x in t[0][:2]])
    refused, candidates = decided_after_the_id_was_taken(
        app, signed, "alice", probe={"templates": [wire(t[0][2])]}, taker={"templates": [wire(x) for x in t[2][:2]]}
    )
    assert refused.slug == "unknown-subject"
    assert candidates == []


def test_a_face_decision_matched_on_a_removed_person_is_not_given_to_the_one_who_took_the_id(in_process) -> None:
    """The same for faces: fay's face verification and identification, fay removed and enrolled again by gil's
    face before the decisions."""
    app, signed = in_process
    app.biometric.faces.store.add("fay", "kiosk-1", [capture(6, 0), capture(6, 1)])
    refused, candidates = decided_after_the_id_was_taken(
        app, signed, "fay", probe={"faces": [capture(6, 5)]}, taker={"faces": [capture(7, 0), capture(7, 1)]}
    )
    assert refused.slug == "unknown-subject"
    assert candidates == []


def test_templates_added_by_a_removed_person_do_not_go_to_the_one_who_took_the_id(
    in_process, synthetic_templates
) -> None:
    """alice adds a template with her session token; she is removed and the id enrolled by another person before
    the decision: refused as unknown (was stored: the first alice's finger under the new alice's id)."""
    app, signed = in_process
    t = synthetic_templates
    app.biometric.enrollments.add("alice", "kiosk-1", [encode_finger(x) for x in t[0][:2]])
    token = app.biometric.sessions.issue("kiosk-1", "alice")["token"]
    adding = app.biometric.enroll(signed("/v1/subjects/alice/enrollments", on="alice",
                                         templates=[wire(t[0][2])], session_token=token))
    checked = adding.work(Budget(time.monotonic() + 60))
    removed(app, "alice")
    first_enrolled(app, signed, "alice", templates=[wire(x) for x in t[2][:2]])

    with pytest.raises(Problem) as refused_:
        adding.finish(checked)
    assert refused_.value.slug == "unknown-subject"
    assert app.conn.execute("SELECT COUNT(*) FROM enrollments WHERE subject_id = 'alice'").fetchone() == (2,)


def test_a_removed_persons_step_up_is_not_finished_by_the_sensor_of_the_one_who_took_the_id(in_process) -> None:
    """fay's face verification asks for her finger (her factor rule); fay is removed and the id enrolled again on
    kiosk-1's sensor (another print, another person): that sensor's assertion answering the old step-up is
    step-up-unknown (was an accept of the new fay on the removed fay's face)."""
    app, signed = in_process
    app.biometric.faces.store.add("fay", "kiosk-1", [capture(6, 0), capture(6, 1)])
    app.conn.execute("INSERT INTO required_factors (scope, name, factors) VALUES ('subject', 'fay', 'finger,face')")
    sensor = app.routes[("POST", endpoints.SENSOR_ENROLLMENTS)].handler.__self__
    sensor.policy.set("kiosk-1", "accept")
    verification = app.biometric.verify(signed("/v1/verifications", subject="fay", faces=[capture(6, 5)]))
    asked = verification.finish(verification.work(Budget(time.monotonic() + 60)))
    assert asked.status == 401
    step_up = json.loads(asked.body)["step_up"]
    removed(app, "fay")

    new_print = print_hash("another person's print")
    enrolled = sensor.enroll(signed(endpoints.SENSOR_ENROLLMENTS, **SensorEnrollmentRequest("fay", READER,
                                                                                               new_print).body()))
    assert enrolled.status == 201
    with pytest.raises(Problem) as refused_:
        sensor.verify(signed(endpoints.SENSOR_VERIFICATIONS,
                             **SensorAssertion("fay", READER, new_print, "match", step_up).body()))
    assert refused_.value.slug == "step-up-unknown"


@pytest.mark.parametrize("modality", ["finger", "face"])
def test_a_removed_persons_step_up_is_not_given_back_to_the_one_who_took_the_id(
    in_process, synthetic_templates, modality: str
) -> None:
    """alice's first finger asks a step-up (kiosk-1's first use; her face rule); her answer to it is matched,
    then she is removed and the id enrolled by another person, and the verifier cannot decide (over budget):
    the step-up is not given back, and the new alice's answer to it is step-up-unknown (was an accept on the
    removed alice's first finger)."""
    app, signed = in_process
    t = synthetic_templates
    app.biometric.enrollments.add("alice", "kiosk-1", [encode_finger(x) for x in t[0][:2] + t[1][:2]])
    second: dict[str, object] = {"templates": [wire(t[1][2])]}
    again: dict[str, object] = {"templates": [wire(t[3][2])]}
    if modality == "face":
        app.biometric.faces.store.add("alice", "kiosk-1", [capture(6, 0), capture(6, 1)])
        app.conn.execute("INSERT INTO required_factors (scope, name, factors) "
                         "VALUES ('subject', 'alice', 'finger,face')")
        second, again = {"faces": [capture(6, 5)]}, {"faces": [capture(7, 5)]}
    first = app.biometric.verify(signed("/v1/verifications", subject="alice", templates=[wire(t[0][2])]))
    asked = first.finish(first.work(Budget(time.monotonic() + 60)))
    assert asked.status == 401
    step_up = json.loads(asked.body)["step_up"]

    answering = app.biometric.verify(signed("/v1/verifications", subject="alice", step_up=step_up, **second))
    answering.work(Budget(time.monotonic() + 60))
    removed(app, "alice")
    taking = {"templates": [wire(x) for x in t[2][:2] + t[3][:2]]}
    if modality == "face":
        taking["faces"] = [capture(7, 0), capture(7, 1)]
        first_enrolled(app, signed, "alice", templates=taking["templates"])
        token = app.biometric.sessions.issue("kiosk-1", "alice")["token"]
        first_enrolled(app, signed, "alice", faces=taking["faces"], session_token=token)
    else:
        first_enrolled(app, signed, "alice", **taking)
    answering.undo()  # undecided: what its checks took would be given back

    with pytest.raises(Problem) as refused_:
        app.biometric.verify(signed("/v1/verifications", subject="alice", step_up=step_up, **again))
    assert refused_.value.slug == "step-up-unknown"


def test_the_log_of_a_removal_seen_by_serve_counts_the_subjects_it_dropped_that_time(
    in_process, synthetic_templates
) -> None:
    """alice removed, then bob: the second `removed_subjects_forgotten` drops one subject, bob (counted alice
    again, whose removed id the server keeps a generation of)."""
    from structlog.testing import capture_logs

    app, signed = in_process
    t = synthetic_templates
    for subject, finger in (("alice", 0), ("bob", 1), ("cyd", 2)):
        app.biometric.enrollments.add(subject, "kiosk-1", [encode_finger(x) for x in t[finger][:2]])
    identification = app.biometric.identify(signed("/v1/identifications", templates=[wire(t[0][2])]))
    identification.finish(identification.work(Budget(time.monotonic() + 60)))  # the gallery loaded: all three

    dropped = []
    for subject in ("alice", "bob"):
        removed(app, subject)
        with capture_logs() as logs:
            app.biometric.identify(signed("/v1/identifications", templates=[wire(t[2][2])]))
        dropped += [e["finger_subjects_dropped"] for e in logs if e["event"] == "removed_subjects_forgotten"]
    assert dropped == [1, 1]


def test_an_undecided_enrollment_keeps_its_token_when_someone_else_was_removed(in_process, synthetic_templates) -> None:
    """alice adds a template with her session token; bob is removed while it is matched and the verifier cannot
    decide (over budget): alice's token is given back, so the agent's retry with it is served (was lost: any
    removal counted as hers)."""
    app, signed = in_process
    t = synthetic_templates
    app.biometric.enrollments.add("alice", "kiosk-1", [encode_finger(x) for x in t[0][:2]])
    app.biometric.enrollments.add("bob", "kiosk-1", [encode_finger(x) for x in t[1][:2]])
    token = app.biometric.sessions.issue("kiosk-1", "alice")["token"]
    adding = app.biometric.enroll(signed("/v1/subjects/alice/enrollments", on="alice",
                                         templates=[wire(t[0][2])], session_token=token))
    matched_then_removed(app, adding, "bob")
    adding.undo()

    retry = app.biometric.enroll(signed("/v1/subjects/alice/enrollments", on="alice",
                                        templates=[wire(t[0][2])], session_token=token))
    answer = retry.finish(retry.work(Budget(time.monotonic() + 60)))
    assert answer.status == 201


@pytest.mark.parametrize("held", [False, True], ids=["nothing-held-yet", "a-pack-held"])
def test_a_pack_built_for_a_removed_subject_is_not_kept_in_memory(in_process, synthetic_templates, held) -> None:
    """alice's verification is handled, then she is removed and another request's handler sees the removal, and
    only then is her verification matched (its pack of her templates built and written back) and decided: refused
    as unknown, and the server keeps no pack of hers. ``held``: an earlier verification of hers had already left
    a pack in memory when the removal came (the removal dropped that one), or none had.

    Before, the late pack stayed in memory (unused: its generation was behind hers, or with nothing held the
    removal did not even move her generation) until the next removal: an erased person's templates in RAM."""
    app, signed = in_process
    t = synthetic_templates
    app.biometric.enrollments.add("alice", "kiosk-1", [encode_finger(x) for x in t[0][:2]])
    app.biometric.enrollments.add("bob", "kiosk-1", [encode_finger(x) for x in t[1][:2]])

    def verification(subject: str, finger: int) -> Deferred:
        return app.biometric.verify(signed("/v1/verifications", subject=subject, templates=[wire(t[finger][2])]))

    late = verification("alice", 0)
    if held:
        earlier = verification("alice", 0)
        earlier.finish(earlier.work(Budget(time.monotonic() + 60)))  # (a step-up: this kiosk's first use)
        assert "alice" in set(app.biometric._packs)  # the pack the removal must drop (names only: no template shown)
    removed(app, "alice")
    other = verification("bob", 1)  # its handler sees the removal first (BiometricRoutes.sync_removals)
    other.finish(other.work(Budget(time.monotonic() + 60)))

    with pytest.raises(Problem) as refused_:
        late.finish(late.work(Budget(time.monotonic() + 60)))
    assert refused_.value.slug == "unknown-subject"
    # A private read: nothing public shows what the server keeps in memory, and this is what must be gone.
    # Its names only, so a failure prints no template.
    packed = set(app.biometric._packs)
    assert "alice" not in packed
    assert "bob" in packed  # (packs are kept: bob's, built after the removal, is)
