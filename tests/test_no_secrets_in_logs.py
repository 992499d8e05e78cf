"""Invariant 3 and the logging rule: a whole run's logs hold no key, token or KEK.

Runs provisioning, calls, a renewal and a refused token against the real
verifier, capturing the agent's logs at debug level and the verifier's log
file, then looks for every secret the run handled.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import sys
import time

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from agent.client import VerifierClient
from agent.devstack import device_config, write_config_file
from agent.errors import ProvisioningError
from agent.logs import configure_logging
from agent.provision import provision
from agent.renewal import renew
from tests.test_daemon_devices import audit_until


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


def test_camera_stream_credentials_reach_no_log_audit_event_or_health(verifier, provisioned, camera_sim, tmp_path):
    """A real daemon whose camera URL carries credentials as installers write them (audit 16 F1).

    A password with an @ (FFmpeg takes the userinfo up to the last @) and credentials in
    the query: neither the daemon's debug log, its /health, the audit trail in the
    verifier's database nor the verifier's log holds them.
    """
    config, _ = provisioned
    plain = camera_sim.url  # the simulator serves /stream.mjpg whatever the query and the userinfo
    source = plain.replace("http://", "http://camuser:p@ssCAMSECRET@") + "?user=admin&pwd=QUERYSECRET"
    socket_path = tmp_path / "run" / "api.sock"
    config_file = write_config_file(
        tmp_path / "agent.toml", config,
        f'[api]\nsocket = "{socket_path}"\n[logging]\nlevel = "debug"\nformat = "json"\n'
        f'[[device]]\nkind = "camera"\nname = "door"\nsource = "{source}"\ncheck_interval_s = 0.1\n',
    )
    daemon_log = tmp_path / "daemon.log"
    with open(daemon_log, "wb") as err:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "--config", str(config_file), "run"],
            stdout=subprocess.DEVNULL, stderr=err,
        )
    try:
        deadline = time.monotonic() + 30
        health, devices = "", []
        while not any(d["connected"] for d in devices):
            assert daemon.poll() is None, daemon_log.read_text()[-2000:]
            assert time.monotonic() < deadline, f"the camera never connected: {health}"
            time.sleep(0.1)
            if socket_path.exists():
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://kiosk") as c:
                    health = c.get("/health").text
                devices = json.loads(health).get("devices", [])
    finally:
        daemon.send_signal(signal.SIGTERM)  # it flushes its outbox to the verifier before it exits
        daemon.wait(20)
    events = audit_until(verifier, "agent_stopping")
    verifier.stop()
    shown = plain + "?user=***&pwd=***"
    plugged = [e["data"] for e in events if e["type"] == "device_plugged"]
    assert [d["source"] for d in plugged] == [shown.replace("http://", "http://***@")]  # not vacuous
    assert [d["source"] for d in devices] == [shown.replace("http://", "http://***@")]
    everything = {
        "daemon log": daemon_log.read_text(),
        "health": health,
        "audit trail": json.dumps(events),
        "verifier log": verifier.log_path.read_text(),
    }
    assert "device_plugged" in everything["daemon log"]  # the log did capture the camera's events
    leaked = [(where, secret) for where, text in everything.items() for secret in ("CAMSECRET", "QUERYSECRET")
              if secret in text]
    assert leaked == []
