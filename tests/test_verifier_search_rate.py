"""An enrollment's duplicate search is a 1:N search: it spends the device's identification rate.

Why: every finger or face enrollment is searched against every subject, in every
group (one person, one identity), and its answer says whether the probe matched
someone: 409 ``duplicate-identity`` or 201. So a stolen kiosk allowed only to
``enroll`` (into one group) could test probes against the whole gallery, other
groups and subjects it is locked out of included, at ``device_requests_per_min``
(60 a minute, 10 views each), where ``device_identifications_per_min`` (20) is
the documented bound on guessing through 1:N (README, "Lockouts").
"""

from __future__ import annotations

import sqlite3

import pytest

from tests.test_biometric_api import Device, wire


@pytest.mark.verifier_settings("device_identifications_per_min = 2")
def test_enrollments_and_identifications_share_the_rate_of_1_to_n_searches(
    provisioned, verifier, synthetic_templates
) -> None:
    t = synthetic_templates
    device = Device(*provisioned)

    async def steps(client):
        statuses = []
        for subject, finger in (("ana", 0), ("ben", 1), ("cai", 2)):  # three new people: each a search of everyone
            path = f"/v1/subjects/{subject}/enrollments"
            body = await device.signed(client, path, templates=[wire(x) for x in t[finger][:2]])
            answer = await client.request("POST", path, json=body)
            statuses.append((answer.status_code, answer.json().get("type", ""), answer.headers.get("retry-after")))
        body = await device.signed(client, "/v1/identifications", templates=[wire(t[0][2])])
        answer = await client.request("POST", "/v1/identifications", json=body)
        statuses.append((answer.status_code, answer.json().get("type", ""), answer.headers.get("retry-after")))
        return statuses

    statuses = device.run(steps)
    assert [s for s, _, _ in statuses[:2]] == [201, 201], statuses
    assert statuses[2][0] == 429 and statuses[2][1].endswith("device-rate-limited") and statuses[2][2], statuses
    assert statuses[3][0] == 429, statuses  # the same rate: an identification is refused too
    with sqlite3.connect(verifier.pki_dir / "verifier.sqlite") as db:
        enrolled = {row[0] for row in db.execute("SELECT DISTINCT subject_id FROM enrollments")}
    assert enrolled == {"ana", "ben"}  # the third was refused before its search
