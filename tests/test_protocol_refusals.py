"""Refusals of the protocol's smaller attacks, each against a real verifier process: a 4xx problem, no traceback.

Zero-minutiae templates, deep JSON, duplicate keys, challenge floods, a body
sent after an early refusal; groups never named to another device; stored
answers never holding a token in clear; audit event ids per device; one
device's junk claims never locking a person out everywhere; and what needs no
finger refused at the challenge.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import sqlite3
import ssl
import time

import h2.config
import h2.connection
import h2.events
import httpx
import numpy as np
import pytest

from agent.audit import ChainHead, make_event
from agent.client import VerifierClient
from agent.devstack import LocalVerifier, provision_device
from agent.errors import (
    BadTemplateError,
    GroupNotAllowedError,
    OperationNotAllowedError,
    RateLimitedError,
    SubjectLockedError,
    UnknownSubjectError,
)
from agent.verifier_api import VerifierAPI
from biometrics.fingerprint.iso19794_2 import encode
from protocol import endpoints
from protocol.audit import GENESIS, MAX_SEQ, event_hash
from protocol.messages import Decision, StepUp
from protocol.signing import sign_request
from protocol.templates import MAX_MINUTIAE_PER_VIEW, MIN_MINUTIAE_PER_VIEW, wire_template
from protocol.wire import canonical_json


def run(provisioned, steps):
    config, identity = provisioned

    async def go():
        async with VerifierClient(config, identity) as client:
            return await steps(VerifierAPI(client), client)

    return asyncio.run(go())


def no_traceback(local: LocalVerifier) -> None:
    log = local.log_path.read_text()
    assert "Traceback" not in log and '"request_failed"' not in log


def with_minutiae(template, count: int):
    m = template.minutiae
    pick = np.resize(np.arange(len(m.x)), count)
    return dataclasses.replace(
        template,
        minutiae=dataclasses.replace(m, x=m.x[pick], y=m.y[pick], angle=m.angle[pick], kind=m.kind[pick],
                                     quality=m.quality[pick]),
    )


def test_a_template_without_enough_minutiae_or_with_too_many_is_refused_at_enrollment(
    verifier, provisioned, synthetic_templates
) -> None:
    t = synthetic_templates[0]

    async def steps(api, client):
        refused = []
        for count in (0, MIN_MINUTIAE_PER_VIEW - 1, MAX_MINUTIAE_PER_VIEW + 1):
            with pytest.raises(BadTemplateError) as info:
                await api.enroll("zero", [encode(with_minutiae(t[0], count))])
            refused.append(info.value)
        with pytest.raises(UnknownSubjectError):  # nothing was stored: the id stays usable
            await api.challenge("verify", "zero")
        enrolled = await api.enroll("zero", [encode(x) for x in t[:2]])
        return refused, enrolled

    refused, enrolled = run(provisioned, steps)
    assert [e.status for e in refused] == [422, 422, 422]
    assert "has 0 minutiae; at least 8 are needed" in refused[0].message
    assert f"has {MAX_MINUTIAE_PER_VIEW + 1} minutiae; at most {MAX_MINUTIAE_PER_VIEW}" in refused[2].message
    assert enrolled.templates == 2
    no_traceback(verifier)


def test_a_view_stripped_of_its_orientation_field_is_refused_at_enrollment_and_verification(
    verifier, provisioned, synthetic_templates
) -> None:
    """The score multiplies the minutiae evidence by the fields' agreement; a device that left the field
    out would be scored with an assumed agreement (higher than most impostors'), so it is refused."""
    t = synthetic_templates[1]
    assert t[0].orientation is not None
    stripped = dataclasses.replace(t[0], orientation=None)

    async def steps(api, client):
        with pytest.raises(BadTemplateError) as at_enrollment:
            await api.enroll("fieldless", [encode(stripped), encode(t[1])])
        with pytest.raises(UnknownSubjectError):  # nothing was stored
            await api.challenge("verify", "fieldless")
        # A field whose foreground is one block (it would agree completely by chance one time in a few).
        grid = t[0].orientation.coherence
        one_block = np.zeros_like(grid)
        one_block[tuple(np.argwhere(grid > 0)[0])] = 200
        tiny = dataclasses.replace(t[0], orientation=dataclasses.replace(t[0].orientation, coherence=one_block))
        with pytest.raises(BadTemplateError) as uncovered:
            await api.enroll("fieldless", [encode(tiny), encode(t[1])])
        # The whole foreground kept but weighing ~1e-6 (coherence 1) except one block on each of its minutiae.
        hidden_weight = t[0].orientation.coherence.copy()
        hidden_weight[hidden_weight > 0] = 1
        scale = 500.0 / t[0].resolution_dpi / 16
        rows, cols = hidden_weight.shape
        by = np.minimum((t[0].minutiae.y * scale).astype(int), rows - 1)
        bx = np.minimum((t[0].minutiae.x * scale).astype(int), cols - 1)
        hidden_weight[by, bx] = 255
        concentrated = dataclasses.replace(
            t[0], orientation=dataclasses.replace(t[0].orientation, coherence=hidden_weight)
        )
        with pytest.raises(BadTemplateError) as weight_hidden:
            await api.enroll("fieldless", [encode(concentrated), encode(t[1])])
        await api.enroll("fieldless", [encode(x) for x in t[:2]])
        with pytest.raises(BadTemplateError) as at_verification:
            await api.verify("fieldless", [encode(dataclasses.replace(t[2], orientation=None))])
        accepted = await api.verify("fieldless", [encode(t[2])])
        return at_enrollment.value, at_verification.value, accepted, uncovered.value, weight_hidden.value

    at_enrollment, at_verification, accepted, uncovered, weight_hidden = run(provisioned, steps)
    assert uncovered.status == 422 and "orientation field covers" in uncovered.message, uncovered.message
    assert weight_hidden.status == 422 and "carries its weight on" in weight_hidden.message, weight_hidden.message
    assert at_enrollment.status == at_verification.status == 422
    assert "templates[0] view 0 carries no orientation field" in at_enrollment.message
    assert "agent of this release" in at_verification.message
    # The refusal used up nothing: the same finger with its field is matched (step-ups come above the threshold).
    assert isinstance(accepted, StepUp) or accepted.decision == "accept", accepted
    no_traceback(verifier)


def raw_post(verifier, identity, path: str, body: bytes) -> httpx.Response:
    ctx = ssl.create_default_context(cafile=str(verifier.pki_dir / "ca.pem"))
    ctx.set_alpn_protocols(["h2"])
    ctx.load_cert_chain(str(identity.cert_path), str(identity.key_path), password=identity.passphrase)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(http2=True, http1=False, verify=ctx, trust_env=False) as client:
            headers = {"idempotency-key": f"k-{time.monotonic_ns()}", "content-type": "application/json"}
            return await client.post(verifier.url + path, content=body, headers=headers)

    return asyncio.run(go())


@pytest.mark.parametrize("path", [endpoints.CHALLENGES, endpoints.VERIFICATIONS, endpoints.EVENTS])
def test_deep_json_and_duplicate_keys_get_a_400_problem(verifier, provisioned, path) -> None:
    _, identity = provisioned
    deep = raw_post(verifier, identity, path, b"[" * 100_000 + b"]" * 100_000)
    nested = raw_post(verifier, identity, path, b'{"a":' * 40 + b"1" + b"}" * 40)
    twice = raw_post(verifier, identity, path, b'{"operation": "verify", "operation": "identify", "events": []}')
    for response, said in ((deep, "nested deeper than"), (nested, "nested deeper than"), (twice, "appears twice")):
        problem = response.json()
        assert response.status_code == 400 and problem["type"].endswith("/bad-json"), problem
        assert said in problem["detail"]
    no_traceback(verifier)


def test_a_lone_surrogate_in_a_signed_body_or_an_event_is_a_400_not_a_500(verifier, provisioned) -> None:
    """Valid JSON that is not UTF-8 text ("\\ud800"): a typed, audited 400 bad-json, before any store or hash."""
    _, identity = provisioned
    key = identity.private_key()

    async def nonce(api, client):
        return (await api.challenge("identify")).nonce

    def signed(path: str, **fields) -> bytes:  # signed as the agent signs, sent as its canonical bytes
        return canonical_json(sign_request(key, "POST", path, {"nonce": run(provisioned, nonce), **fields}))

    event = {"id": "\ud83d", "seq": 1, "prev": "0" * 64, "type": "x", "time": "t", "data": {}}
    event["hash"] = event_hash(event)
    answers = [
        raw_post(verifier, identity, endpoints.VERIFICATIONS,
                 canonical_json(sign_request(key, "POST", endpoints.VERIFICATIONS,
                                             {"nonce": "\ud800", "subject": "alice"}))),
        raw_post(verifier, identity, "/v1/subjects/alice/enrollments",
                 signed("/v1/subjects/alice/enrollments", templates=[], session_token="\udfff")),
        raw_post(verifier, identity, endpoints.EVENTS, canonical_json({"events": [event]})),
    ]
    for answer in answers:
        problem = answer.json()
        assert answer.status_code == 400 and problem["type"].endswith("/bad-json"), problem
        assert "surrogate" in problem["detail"] and "UTF-8" in problem["fix"]
    no_traceback(verifier)
    events = [json.loads(line) for line in verifier.log_path.read_text().splitlines() if line.startswith("{")]
    refused = [e for e in events if e.get("event") in ("biometric_request_refused", "events_refused")]
    assert [(e["event"], e["status"]) for e in refused] == [("biometric_request_refused", 400)] * 2 + [
        ("events_refused", 400)]


def test_a_body_that_is_not_utf8_is_a_400_bad_json_not_a_500_nor_read_as_utf16(verifier, provisioned) -> None:
    """Bytes json.loads would guess at (UTF-16/32, a BOM) or pass through (a surrogate as raw bytes): 400 bad-json."""
    _, identity = provisioned
    key = identity.private_key()

    async def nonce(api, client):
        return (await api.challenge("identify")).nonce

    # Signed as the agent signs, over "\ud800"; sent with the surrogate as raw (CESU-8) bytes instead of the escape.
    signed = canonical_json(sign_request(key, "POST", endpoints.VERIFICATIONS, {"nonce": "\ud800", "subject": "a"}))
    raw_surrogate = signed.replace(b"\\ud800", b"\xed\xa0\x80")
    assert raw_surrogate != signed
    event = {"id": "e-1", "seq": 1, "prev": GENESIS, "type": "x", "time": "t", "data": {}}
    event["hash"] = event_hash(event)
    events = canonical_json({"events": [event]})
    verification = canonical_json(sign_request(key, "POST", endpoints.VERIFICATIONS,
                                               {"nonce": run(provisioned, nonce), "subject": "alice"}))
    sent = [
        (endpoints.VERIFICATIONS, raw_surrogate, "surrogate as raw bytes"),
        (endpoints.CHALLENGES, canonical_json({"operation": "identify"}).decode().encode("utf-16-le"), "NUL bytes"),
        (endpoints.VERIFICATIONS, verification.decode().encode("utf-32"), "UTF-32 byte order mark"),
        (endpoints.EVENTS, b"\xef\xbb\xbf" + events, "UTF-8 byte order mark"),
        (endpoints.EVENTS, events.replace(b"e-1", b"e-\xe9"), "not UTF-8"),
    ]
    for path, body, said in sent:
        answer = raw_post(verifier, identity, path, body)
        problem = answer.json()
        assert answer.status_code == 400 and problem["type"].endswith("/bad-json"), (path, said, problem)
        assert said in problem["detail"] and "byte order mark" in problem["fix"], problem
    no_traceback(verifier)


def test_an_event_seq_beyond_the_protocols_bound_is_a_422_and_leaves_the_chain_head_alone(
    verifier, provisioned
) -> None:
    """A seq SQLite cannot hold was a 500; 2**63 - 1 was stored, and the chain's next seq then could not be."""
    _, identity = provisioned

    def event(seq: int, prev: str = GENESIS) -> dict:
        made = {"id": f"e-{seq}", "seq": seq, "prev": prev, "type": "x", "time": "2026-01-01T00:00:00Z", "data": {}}
        return {**made, "hash": event_hash(made)}

    def post(*events: dict) -> httpx.Response:
        return raw_post(verifier, identity, endpoints.EVENTS, canonical_json({"events": list(events)}))

    refused = [post(event(seq)) for seq in (MAX_SEQ + 1, 2**63 - 1)]
    unparsed = [post(event(seq)) for seq in (2**63, 10**30)]  # past 64 bits: no protocol JSON at all
    first = event(1)
    chained = post(first, event(2, first["hash"]))
    for answer in refused:
        problem = answer.json()
        assert answer.status_code == 422 and problem["type"].endswith("/bad-events"), problem
        assert f"seq must be from 1 to {MAX_SEQ}" in problem["detail"]
    for answer in unparsed:
        problem = answer.json()
        assert answer.status_code == 400 and problem["type"].endswith("/bad-json"), problem
        assert "out of range" in problem["detail"]
    assert chained.status_code == 200 and chained.json() == {"accepted": 2, "duplicates": 0, "anomalies": []}
    assert post(event(MAX_SEQ)).status_code == 200  # the bound itself is a seq (a gap, reported as such)
    no_traceback(verifier)


def test_a_challenge_flood_is_rate_limited_and_no_challenge_row_outlives_its_nonce(tmp_path) -> None:
    settings = tmp_path / "verifier.toml"
    settings.write_text("device_challenges_per_min = 5\nnonce_ttl_s = 30\n")
    with LocalVerifier.running(tmp_path / "pki", extra_args=("--config", str(settings))) as local:
        provisioned = asyncio.run(provision_device(local, tmp_path / "device", "kiosk-f"))

        async def steps(api, client):
            answers = []
            for _ in range(8):
                response = await client.request("POST", endpoints.CHALLENGES, json={"operation": "identify"})
                answers.append((response.status_code, response.headers.get("retry-after"), response.json()))
            return answers

        answers = run(provisioned, steps)
        with sqlite3.connect(local.pki_dir / "verifier.sqlite") as db:
            kept = db.execute(  # the challenges' answers (201 application/json), not the provisioning's
                "SELECT MAX(expires_at - created_at) FROM idempotency WHERE status = 201"
            ).fetchone()[0]
        no_traceback(local)
    assert [status for status, _, _ in answers] == [201] * 5 + [429] * 3
    _, retry_after, problem = answers[5]
    assert problem["type"].endswith("/device-rate-limited") and int(retry_after) >= 1
    assert "too many challenges" in problem["detail"]
    assert kept <= 30 + 60, "a challenge's stored answer lives as long as its nonce, not a day"


def h2_connection(verifier, identity):
    ctx = ssl.create_default_context(cafile=str(verifier.pki_dir / "ca.pem"))
    ctx.set_alpn_protocols(["h2"])
    ctx.load_cert_chain(str(identity.cert_path), str(identity.key_path), password=identity.passphrase)
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", verifier.port), timeout=10),
                           server_hostname="127.0.0.1")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def h2_answer(sock, conn, stream_id: int) -> tuple[int, bytes]:
    status, body, done = 0, b"", False
    while not done:
        data = sock.recv(65536)
        assert data, "the verifier closed the connection"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                done = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise AssertionError("the verifier tore the connection down")
        sock.sendall(conn.data_to_send())
    return status, body


def test_a_body_sent_after_an_early_refusal_gets_its_problem_and_the_connection_lives(tmp_path) -> None:
    """Unknown path, wrong method, too large: refused before the body is read, and the body still arrives."""
    settings = tmp_path / "verifier.toml"
    settings.write_text("max_body_bytes = 4096\n")
    with LocalVerifier.running(tmp_path / "pki", extra_args=("--config", str(settings))) as local:
        _, identity = asyncio.run(provision_device(local, tmp_path / "device", "kiosk-b"))
        sock, conn = h2_connection(local, identity)
        answers = []
        with sock:
            cases = [("POST", "/v1/nope", 3), ("PUT", endpoints.HEALTH, 3), ("POST", endpoints.CHALLENGES, 8)]
            for stream_id, (method, path, chunks) in zip((1, 3, 5), cases, strict=True):
                headers = [(":method", method), (":path", path), (":scheme", "https"), (":authority", "127.0.0.1"),
                           ("idempotency-key", f"k{stream_id}")]
                conn.send_headers(stream_id, headers)
                sock.sendall(conn.data_to_send())
                time.sleep(0.2)  # the verifier knows its answer by now; the body comes after
                for i in range(chunks):
                    conn.send_data(stream_id, b"x" * 1000, end_stream=i == chunks - 1)
                    sock.sendall(conn.data_to_send())
                    time.sleep(0.02)
                status, body = h2_answer(sock, conn, stream_id)
                answers.append((status, json.loads(body)["type"].rsplit("/", 1)[1]))
            conn.send_headers(7, [(":method", "GET"), (":path", endpoints.HEALTH), (":scheme", "https"),
                                  (":authority", "127.0.0.1")], end_stream=True)
            sock.sendall(conn.data_to_send())
            health = h2_answer(sock, conn, 7)[0]
        time.sleep(0.3)
        no_traceback(local)
    assert answers == [(404, "not-found"), (405, "method-not-allowed"), (413, "too-large")]
    assert health == 200, "the same connection still serves"


def test_a_stored_answer_never_holds_the_session_token_in_clear(verifier, provisioned, synthetic_templates) -> None:
    t = synthetic_templates

    async def steps(api, client):
        await api.enroll("alice", [encode(x) for x in t[0][:2]] + [encode(x) for x in t[2][:2]])
        first = await api.verify("alice", [encode(t[0][2])])
        if not isinstance(first, Decision):  # the device's first use: a second finger
            first = await api.verify("alice", [encode(t[2][2])], step_up=first.step_up)
        challenge = await api.challenge("verify", "alice")
        fields = {"nonce": challenge.nonce, "subject": "alice", "templates": [wire_template(encode(t[0][1]))]}
        body = sign_request(client.identity.private_key(), "POST", endpoints.VERIFICATIONS, fields)
        once = await client.call("POST", endpoints.VERIFICATIONS, json=body, idempotency_key="cut-once")
        again = await client.call("POST", endpoints.VERIFICATIONS, json=body, idempotency_key="cut-once")
        return first, once, again

    first, once, again = run(provisioned, steps)
    assert first.accepted and once["decision"] == "accept" and once["token"]
    assert again == once, "a retry after a cut connection still gets its answer, token included"
    raw = b"".join(p.read_bytes() for p in verifier.pki_dir.iterdir() if p.name.startswith("verifier.sqlite"))
    assert once["token"].encode() not in raw and first.token.encode() not in raw


def test_audit_event_ids_are_per_device(verifier, provisioned, tmp_path) -> None:
    """Two devices may use the same event id: neither shadows the other's event."""
    other = asyncio.run(provision_device(verifier, tmp_path / "other", "kiosk-2"))

    def event_with_id(event_id: str) -> dict:
        event = {**make_event(ChainHead(), "reader_fault", {"port": "ttyUSB0"}), "id": event_id}
        return {**event, "hash": event_hash(event)}

    async def post(api, client):
        return await client.call("POST", endpoints.EVENTS, json={"events": [event_with_id("shared-id")]})

    first, second = run(provisioned, post), run(other, post)
    assert first["accepted"] == 1 and second == {**second, "accepted": 1, "duplicates": 0}
    again = run(other, post)  # the same device again: a duplicate, as before
    assert again["duplicates"] == 1
    with sqlite3.connect(verifier.pki_dir / "verifier.sqlite") as db:
        rows = db.execute("SELECT device_id FROM audit_events WHERE event_id = 'shared-id' ORDER BY 1").fetchall()
    assert rows == [("kiosk-1",), ("kiosk-2",)]


def test_one_devices_junk_claims_do_not_lock_the_person_out_elsewhere(tmp_path, synthetic_templates) -> None:
    """The lockout policy (README): counted per (device, subject); every device only when several are locked."""
    t = synthetic_templates
    settings = tmp_path / "verifier.toml"
    settings.write_text("max_failures = 2\nstep_up_first_use = false\nlockout_base_s = 60\n")
    with LocalVerifier.running(tmp_path / "pki", extra_args=("--config", str(settings))) as local:
        junk = asyncio.run(provision_device(local, tmp_path / "junk", "kiosk-junk"))
        lobby = asyncio.run(provision_device(local, tmp_path / "lobby", "kiosk-lobby"))

        async def junk_claims(api, client):
            await api.enroll("alice", [encode(x) for x in t[0][:2]] + [encode(x) for x in t[2][:2]])
            outcomes = [(await api.verify("alice", [encode(t[1][0])])).decision for _ in range(2)]
            with pytest.raises(SubjectLockedError) as locked:  # refused at the challenge: no finger needed
                await api.challenge("verify", "alice")
            return outcomes, locked.value

        async def genuine(api, client):
            first = await api.verify("alice", [encode(t[0][2])])
            second = await api.verify("alice", [encode(t[2][2])], step_up=first.step_up)
            return first, second

        outcomes, locked = run(junk, junk_claims)
        first, decision = run(lobby, genuine)
        no_traceback(local)
    assert outcomes == ["reject", "reject"]
    assert locked.status == 429 and locked.retry_after_s >= 59
    assert first.reasons == ["recent_failures"]  # failures elsewhere ask for a second finger, never lock
    assert isinstance(decision, Decision) and decision.accepted, "alice still verifies at the lobby"


def test_what_needs_no_finger_is_refused_at_the_challenge(verifier, provisioned, synthetic_templates) -> None:
    t = synthetic_templates

    async def setup(api, client):
        await api.enroll("alice", [encode(x) for x in t[0][:2]], group="visitors")
        with pytest.raises(UnknownSubjectError) as unknown:
            await api.challenge("verify", "nobody")
        return unknown.value

    unknown = run(provisioned, setup)
    assert unknown.status == 404 and unknown.fix == "enroll the subject first: capture-agent enroll --subject nobody"
    verifier.allow("kiosk-1", "verify", groups="staff")

    async def restricted(api, client):
        with pytest.raises(OperationNotAllowedError) as operation:
            await api.challenge("enroll", "carol")
        with pytest.raises(UnknownSubjectError) as group:  # another group's: read as an unknown id
            await api.challenge("verify", "alice")
        return operation.value, group.value

    operation, group = run(provisioned, restricted)
    assert operation.status == 403 and "capture-verifier device allow kiosk-1" in operation.fix
    assert group.status == 404 and group.fix == "enroll the subject first: capture-agent enroll --subject alice"
    assert "visitors" not in json.dumps(group.problem)
    lines = verifier.log_path.read_text().splitlines()
    refusals = [json.loads(line) for line in lines if '"biometric_request_refused"' in line]
    assert {(r["path"], r["reason"]) for r in refusals} >= {
        (endpoints.CHALLENGES, "unknown subject"),
        (endpoints.CHALLENGES, "operation not allowed for this device"),
        (endpoints.CHALLENGES, "subject group not allowed for this device"),
    }
    assert any(r.get("group") == "visitors" for r in refusals), "the audit log names the group, for the operator"


def test_a_device_locked_out_of_a_subject_learns_nothing_of_it_through_identification(
    tmp_path, synthetic_templates
) -> None:
    """1:N drops the subjects a device is locked out of (fingers and faces), and counts a device's identifications.

    Without it a device locked out of alice after guessing keeps testing probes
    against her through /v1/identifications: no lockout, no failure, her name and score.
    """
    from tests.test_verifier_faces import capture, steps_for

    t = synthetic_templates
    settings = tmp_path / "verifier.toml"
    # Six 1:N searches a minute: the two enrollments (each searched against everyone) and four identifications.
    settings.write_text("max_failures = 2\nstep_up_first_use = false\nlockout_base_s = 60\n"
                        "device_identifications_per_min = 6\n")
    with LocalVerifier.running(tmp_path / "pki", extra_args=("--config", str(settings))) as local:
        junk = asyncio.run(provision_device(local, tmp_path / "junk", "kiosk-junk"))
        lobby = asyncio.run(provision_device(local, tmp_path / "lobby", "kiosk-lobby"))

        async def identify(api, finger=None, face=None):
            challenge = await api.challenge("identify")
            if face is None:
                found = await api.identify([encode(finger)], challenge=challenge)
            else:
                found = await api.identify([], faces=[face], challenge=challenge, liveness=steps_for(challenge))
            return [c.subject for c in found.candidates]

        async def guess_then_identify(api, client):
            await api.enroll("alice", [encode(x) for x in t[0][:2]])
            challenge = await api.challenge("enroll", "bob")
            await api.enroll("bob", [], faces=[capture(2, 0), capture(2, 1)], challenge=challenge,
                             liveness=steps_for(challenge))
            for _ in range(2):  # wrong fingers for alice, wrong faces for bob: locked out of both
                await api.verify("alice", [encode(t[1][0])])
                challenge = await api.challenge("verify", "bob")
                await api.verify("bob", [], faces=[capture(9, 0)], challenge=challenge, liveness=steps_for(challenge))
            found = [await identify(api, finger=t[0][2]), await identify(api, face=capture(2, 5))]
            found += [await identify(api, finger=t[0][1]), await identify(api, face=capture(2, 6))]
            with pytest.raises(RateLimitedError) as limited:  # the 7th 1:N search of the minute
                await identify(api, finger=t[0][2])
            return found, limited.value

        async def elsewhere(api, client):
            return [await identify(api, finger=t[0][2]), await identify(api, face=capture(2, 5))]

        found, limited = run(junk, guess_then_identify)
        found_elsewhere = run(lobby, elsewhere)
        no_traceback(local)
        events = [json.loads(line) for line in local.log_path.read_text().splitlines() if line.startswith("{")]
    assert found == [[], [], [], []], "a locked-out device learns nothing of alice or bob through 1:N"
    assert found_elsewhere == [["alice"], ["bob"]], "another device still identifies them"
    assert limited.status == 429 and limited.slug == "device-rate-limited" and limited.retry_after_s > 0
    attempts = [e for e in events if e.get("event") == "identification_attempt"]
    assert [(e["device_id"], e["locked_out"]) for e in attempts] == [("kiosk-junk", 1)] * 4 + [("kiosk-lobby", 0)] * 2
    assert any(e.get("reason") == "identification rate limit" for e in events)


def test_an_enrollment_naming_a_subject_of_a_group_the_device_may_not_see_is_a_403_not_the_409(
    verifier, provisioned, second_device
) -> None:
    """A lobby restricted to visitors enrolling a staff subject gets 403 group-not-allowed, not a 409 telling it
    the id exists "in another group" (and suggesting it enroll without --group); its verification reads as an
    unknown id (404, test_verifier_group_oracle)."""
    from protocol.messages import Challenge
    from tests.test_verifier_faces import capture, face_enroll, steps_for

    async def hr_enrolls_ceo(api, client):
        await face_enroll(api, "ceo", 1, group="staff")

    run(provisioned, hr_enrolls_ceo)
    verifier.allow("kiosk-2", groups="visitors")

    async def lobby(api, client):
        with pytest.raises(UnknownSubjectError) as verifying:
            await api.challenge("verify", "ceo")
        assert verifying.value.status == 404
        refused = []
        for operation, group in (("enroll", "visitors"), ("enroll", None)):
            with pytest.raises(GroupNotAllowedError) as info:
                await api.challenge(operation, "ceo", group)
            refused.append(info.value)
        # The signed enrollment itself, on a plain nonce (no precheck at the challenge).
        plain = Challenge.from_json(await client.call("POST", endpoints.CHALLENGES, json={}))
        with pytest.raises(GroupNotAllowedError) as signed:
            await api.enroll("ceo", [], faces=[capture(2, 0)], group="visitors", challenge=plain,
                             liveness=steps_for(plain))
        visitor = await api.challenge("enroll", "guest", "visitors")  # a new visitor still enrolls
        return refused, signed.value, visitor

    refused, signed, visitor = run(second_device, lobby)
    for error in (*refused, signed):
        assert error.status == 403 and error.slug == "group-not-allowed", error.problem
        assert "staff" not in json.dumps(error.problem) and "another group" not in json.dumps(error.problem)
    assert visitor.nonce
    no_traceback(verifier)
