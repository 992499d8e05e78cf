"""The matching allowance's 429 tells a device no more of a gallery's size than an answer's threshold does.

Why: an identification is charged views times the templates it searches
(``device_comparisons_per_min``), an enrollment views times every template
enrolled. Charged exactly, the point where a device's requests start getting
429 ``device-work-limited`` gave the size of its groups' gallery (and through
an enrollment, of the whole gallery, every group's) to the template: the very
number the reported threshold (the search's decade) and the missing
Server-Timing were made not to tell (README, "Lockouts"). The charge is now
the same for every gallery of one decade.
"""

from __future__ import annotations

import asyncio

import pytest

from agent.devstack import provision_device
from tests.test_biometric_api import Device, wire


def _probe(device: Device, view) -> list[int]:
    """Two identifications of seven views each, as one device's first requests of a minute: their statuses."""

    async def steps(client):
        statuses = []
        for _ in range(2):
            body = await device.signed(client, "/v1/identifications", templates=[wire(view)] * 7)
            statuses.append((await client.request("POST", "/v1/identifications", json=body)).status_code)
        return statuses

    return device.run(steps)


@pytest.mark.verifier_settings("device_comparisons_per_min = 100")
def test_two_galleries_of_one_decade_cost_a_device_the_same(verifier, provisioned, synthetic_templates,
                                                               tmp_path) -> None:
    """Four templates in group g1, four more in g2 (both in the decade 1 to 9). A probe allowed g1 and one allowed
    g1 and g2 send the same two identifications under an allowance of 100 comparisons a minute: charged exactly
    (7 x 4 twice, 7 x 8 twice) the first device got two answers and the second a 429, which told them apart."""
    t = synthetic_templates
    desk = Device(*provisioned)

    async def enroll(client):
        for subject, group, finger in (("a", "g1", 0), ("b", "g1", 1), ("c", "g2", 2), ("d", "g2", 3)):
            path = f"/v1/subjects/{subject}/enrollments"
            body = await desk.signed(client, path, group=group, templates=[wire(x) for x in t[finger][:2]])
            await client.call("POST", path, json=body)

    desk.run(enroll)
    small = Device(*asyncio.run(provision_device(verifier, tmp_path / "small", "probe-small")))
    large = Device(*asyncio.run(provision_device(verifier, tmp_path / "large", "probe-large")))
    verifier.allow("probe-small", groups="g1")
    verifier.allow("probe-large", groups="g1,g2")
    assert _probe(small, t[0][2]) == _probe(large, t[0][2])

