"""Invariant 3 and the logging rule: a whole run's logs hold no key, token or KEK.

Runs provisioning, calls, a renewal and a refused token against the real
verifier, capturing the agent's logs at debug level and the verifier's log
file, then looks for every secret the run handled.
"""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from cryptography.hazmat.primitives import serialization

from agent.client import VerifierClient
from agent.devstack import device_config
from agent.errors import ProvisioningError
from agent.logs import configure_logging
from agent.provision import provision
from agent.renewal import renew


def pem_body_lines(pem: bytes) -> list[str]:
    return [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]


def test_a_whole_run_logs_no_secret(verifier, tmp_path) -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    config = device_config(tmp_path / "device", verifier.url)
    token = verifier.new_token("kiosk-logs")
    keys_seen: list[bytes] = []

    async def story() -> None:
        result = await provision(config, token, verifier.ca_fingerprint)
        keys_seen.append(_clear_pem(result.identity))
        async with VerifierClient(config, result.identity) as client:
            await client.call("GET", "/v1/health")
            await client.call("POST", "/v1/challenges", json={})
            renewed = await renew(config, client)
            keys_seen.append(_clear_pem(renewed))
            await client.call("GET", "/v1/health")
        with pytest.raises(ProvisioningError):
            await provision(device_config(tmp_path / "again", verifier.url), token, verifier.ca_fingerprint)

    asyncio.run(story())
    verifier.stop()
    logs = stream.getvalue() + verifier.log_path.read_text()
    assert "certificate_issued" in logs and "certificate_renewed" in logs  # the logs did capture the run

    kek = json.loads((tmp_path / "device" / "INSECURE-dev-keyring.json").read_text())["capture-agent"]
    secrets = {"bootstrap token": token, "key-encryption key": kek["capture-agent-kek"]}
    for index, pem in enumerate(keys_seen):
        for n, line in enumerate(pem_body_lines(pem)):
            secrets[f"device key {index} line {n}"] = line
    for name in ("ca.key", "server.key"):
        for n, line in enumerate(pem_body_lines((verifier.pki_dir / name).read_bytes())):
            secrets[f"{name} line {n}"] = line
    leaked = [name for name, value in secrets.items() if value in logs]
    assert leaked == []
    assert "PRIVATE KEY" not in logs


def _clear_pem(identity) -> bytes:
    return identity.private_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
