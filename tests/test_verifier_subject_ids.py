"""Subject ids that differ only in letter case: one id to the verifier, one person to whoever reads its answers.

The real verifier over mTLS. A device (a stolen one, or a careless enrollment
desk) enrolling its holder as "ALICE" beside the enrolled "alice" would get
accepts naming "ALICE": a door controller, a directory or a person reading them
folds case and lets the holder in as alice.
"""

from __future__ import annotations

import pytest

from agent.errors import SubjectError, VerifierError
from agent.verifier_api import VerifierAPI
from biometrics.fingerprint.iso19794_2 import encode
from protocol.endpoints import CHALLENGES
from protocol.sensor import ReaderIdentity, SensorEnrollmentRequest, print_hash
from tests.test_biometric_api import Device, enroll
from tests.test_verifier_malformed import audit as audit_lines


@pytest.fixture
def device(provisioned) -> Device:
    return Device(*provisioned)


def test_a_first_enrollment_under_an_enrolled_id_but_for_case_is_refused(device, verifier, synthetic_templates):
    t = synthetic_templates
    enroll(device, t, {"alice": 0})

    async def steps(client):
        api = VerifierAPI(client)
        refused = {}
        for name, attempt in (
            ("finger", lambda: api.enroll("ALICE", [encode(x) for x in t[1][:2]])),
            ("sensor", lambda: api.signed(
                SensorEnrollmentRequest("Alice", ReaderIdentity("virtual_device", "usb0"), print_hash("p")), None, None
            )),
        ):
            try:
                await attempt()
                refused[name] = None
            except VerifierError as exc:
                refused[name] = exc
        challenge = await client.request("POST", CHALLENGES, json={"operation": "enroll", "subject": "aLiCe"})
        fresh = await api.enroll("alicia", [encode(x) for x in t[2][:2]])  # a new id of her own still enrolls
        return refused, challenge, fresh

    refused, challenge, fresh = device.run(steps)
    for name, exc in refused.items():
        assert isinstance(exc, SubjectError) and exc.problem["type"].endswith("/subject-id-taken"), (name, exc)
        assert "alice'" not in exc.problem["detail"]  # the enrolled id is not named
    assert challenge.status_code == 409 and challenge.json()["type"].endswith("/subject-id-taken")
    assert fresh.templates == 2
    reasons = [e["reason"] for e in audit_lines(verifier) if e.get("subject") in ("ALICE", "Alice", "aLiCe")]
    assert reasons.count("subject id taken but for letter case") == 3, reasons


def test_the_case_check_seeks_an_index_in_every_table_never_scans_it(tmp_path) -> None:
    """A first enrollment asks every enrollment table for a case variant: with tens of thousands of subjects a
    scan of each would hold the request path; each table has an index under NOCASE for it."""
    import sqlite3

    from verifier import enrollments, faces, sensor_prints, subjects

    conn = sqlite3.connect(tmp_path / "plan.db")
    for module in (subjects, enrollments, faces, sensor_prints):
        conn.executescript(module.SCHEMA)
    for table in ("subject_groups", *subjects.ENROLLMENT_TABLES.values()):
        plan = " ".join(
            str(row[-1])
            for row in conn.execute(
                f"EXPLAIN QUERY PLAN SELECT 1 FROM {table} "  # noqa: S608 (table names of our own)
                "WHERE subject_id = ? COLLATE NOCASE AND subject_id != ? LIMIT 1",
                ("alice", "alice"),
            )
        )
        assert f"USING INDEX {table}_nocase" in plan or f"USING COVERING INDEX {table}_nocase" in plan, plan
    conn.close()
