"""A subject holds a bounded number of templates: adding to one's own enrollment cannot grow the gallery for ever.

Why: an enrolled person adds templates with a session token from their own
verification, and nothing bounded how many. A stolen kiosk whose holder is
enrolled (or any subject it enrolled itself) could verify and add ten views,
again and again (some 300 a minute at the default rates): the database grew
without end, and so did the gallery every device's identification and every
enrollment's duplicate search go through, whose thresholds tighten with its size
until genuine people are no longer found (identification-unreachable for every
device of that group) and new people are refused as duplicates of the bloated
subject. Past ``max_templates_per_subject`` (100 by default: ten fingers of ten
captures each) an addition is refused 409 ``subject-full`` before its search.
"""

from __future__ import annotations

import sqlite3

import pytest

from tests.test_biometric_api import Device, enroll_fingers, verify_call, wire

DEFAULT_MAX = 100  # VerifierSettings.max_templates_per_subject's default


@pytest.mark.verifier_settings("step_up_first_use = false", "device_comparisons_per_min = 1000000")
def test_a_subject_full_of_templates_takes_no_more(provisioned, verifier, synthetic_templates) -> None:
    t = synthetic_templates
    device = Device(*provisioned)
    enroll_fingers(device, t, "mallory", [0])  # 2 views
    path = "/v1/subjects/mallory/enrollments"

    async def add_ten_views(client) -> list[tuple[int, dict]]:
        answers = []
        for _ in range(10):  # 2 + 9 x 10 = 92 views; the tenth addition would make 102
            status, verified = await verify_call(device, client, "mallory", t[0][2])
            assert status == 200 and verified["decision"] == "accept", verified
            body = await device.signed(client, path, templates=[wire(t[0][2])] * 10, session_token=verified["token"])
            response = await client.request("POST", path, json=body)
            answers.append((response.status_code, response.json()))
        return answers

    answers = device.run(add_ten_views)
    assert [status for status, _ in answers[:9]] == [201] * 9, answers
    status, problem = answers[9]
    assert status == 409 and problem["type"].endswith("subject-full"), problem
    assert "max_templates_per_subject" in problem["fix"], problem
    with sqlite3.connect(verifier.pki_dir / "verifier.sqlite") as db:
        rows = db.execute("SELECT COUNT(*) FROM enrollments WHERE subject_id = 'mallory'").fetchone()[0]
    assert rows == 2 + 9 * 10 <= DEFAULT_MAX  # one view a record here: nothing of the refused addition stored
