"""Device identity end to end, against the reference verifier running as a process."""

from __future__ import annotations

import asyncio
import stat

import pytest

from agent.client import VerifierClient
from agent.devstack import device_config
from agent.doctor import run_doctor
from agent.errors import ProvisioningError, VerifierError
from agent.est import simple_reenroll
from agent.identity import build_csr
from agent.provision import provision
from agent.renewal import renew


def test_provisioning_end_to_end(provisioned, verifier) -> None:
    config, identity = provisioned
    assert identity.device_id == "kiosk-1"
    assert identity.ca_certificates[0].fingerprint  # the CA the installer confirmed
    assert stat.S_IMODE(config.agent.state_dir.stat().st_mode) == 0o700
    assert b"ENCRYPTED PRIVATE KEY" in identity.key_path.read_bytes()
    report = run_doctor(config)
    assert report.ok, [(c.name, c.detail, c.fix) for c in report.checks if c.ok is False]
    assert report.facts["tls"]["tls_version"] == "TLSv1.3"
    assert report.facts["tls"]["alpn"] == "h2"


def test_a_bootstrap_token_works_once(verifier, tmp_path) -> None:
    token = verifier.new_token("kiosk-2")
    first = asyncio.run(provision(device_config(tmp_path / "a", verifier.url), token, verifier.ca_fingerprint))
    assert first.identity.device_id == "kiosk-2"
    with pytest.raises(ProvisioningError) as info:
        asyncio.run(provision(device_config(tmp_path / "b", verifier.url), token, verifier.ca_fingerprint))
    assert "already used" in str(info.value)
    assert "token new" in info.value.fix


def test_a_wrong_ca_fingerprint_stops_before_the_token_is_sent(verifier, tmp_path) -> None:
    token = verifier.new_token("kiosk-3")
    with pytest.raises(ProvisioningError, match="does not have the fingerprint"):
        asyncio.run(provision(device_config(tmp_path / "a", verifier.url), token, "ab" * 32))
    # The token was never used, so the right fingerprint still works with it.
    result = asyncio.run(provision(device_config(tmp_path / "b", verifier.url), token, verifier.ca_fingerprint))
    assert result.identity.device_id == "kiosk-3"


def test_renewal_gives_a_new_key_and_serial(provisioned) -> None:
    config, identity = provisioned
    old_key = identity.private_key().public_key().public_numbers()

    async def go():
        async with VerifierClient(config, identity) as client:
            new = await renew(config, client)
            health = await client.call("GET", "/v1/health")
            return new, health

    new, health = asyncio.run(go())
    assert new.serial_hex != identity.serial_hex
    assert new.private_key().public_key().public_numbers() != old_key
    assert not identity.directory.exists(), "the superseded key is deleted from the device"
    assert health["device_id"] == "kiosk-1"
    assert new.device_id == identity.device_id


def test_renewal_with_the_same_key_is_refused(provisioned) -> None:
    config, identity = provisioned

    async def go() -> None:
        async with VerifierClient(config, identity) as client:
            await simple_reenroll(client, build_csr(identity.private_key(), "kiosk-1"))

    with pytest.raises(VerifierError) as info:
        asyncio.run(go())
    assert info.value.status == 400 and "new EC P-256 key" in info.value.fix


def test_a_revoked_device_is_refused_on_its_next_request(provisioned, verifier) -> None:
    config, identity = provisioned

    async def go() -> None:
        async with VerifierClient(config, identity) as client:
            await client.call("GET", "/v1/health")  # fine, connection open
            verifier.revoke("kiosk-1")
            await client.call("GET", "/v1/health")  # same connection, next request

    with pytest.raises(VerifierError) as info:
        asyncio.run(go())
    assert info.value.status == 403 and "revoked" in str(info.value)
