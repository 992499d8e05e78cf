"""`make demo`: the whole story, with a local verifier and a simulated sensor.

A fresh development PKI in a temporary folder, the reference verifier started on
127.0.0.1:8443, a device provisioned with a one-time token, a health call over
mutual TLS (TLS version and ALPN shown), a certificate renewal with a new key;
then people at a simulated serial fingerprint module: three enrolled, a
step-up asked for and satisfied, a genuine verification accepted, an impostor
refused, a replayed request refused, and a table of decision latencies by
phase. Everything started here is stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import time
from pathlib import Path

from agent.client import VerifierClient
from agent.demo_story import biometric_story, latency_table
from agent.devstack import LocalVerifier, device_config
from agent.errors import AgentError
from agent.logs import configure_logging
from agent.provision import provision
from agent.renewal import renew

DEMO_PORT = 8443


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def say(text: str) -> None:
    print(f"   {text}", flush=True)


async def _device_story(verifier: LocalVerifier, work: Path) -> dict[str, str]:
    config = device_config(work / "device-state", verifier.url)
    token = verifier.new_token("kiosk-demo-01")
    say("one-time bootstrap token issued for device kiosk-demo-01 (stored hashed on the verifier)")

    step("Provisioning: key made on the device, CA checked against the fingerprint, EST simpleenroll")
    result = await provision(config, token, verifier.ca_fingerprint)
    ident = result.identity
    say(f"device id          {ident.device_id}")
    say(f"certificate serial {ident.serial_hex}")
    say(f"valid until        {ident.not_after:%Y-%m-%d %H:%M} UTC")
    say("private key        encrypted PKCS#8 under the key-encryption key, never sent")
    say("key-encryption key in the development keyring file (INSECURE; a daemon uses systemd credentials)")

    step("Reusing the token: refused")
    try:
        await provision(device_config(work / "thief-state", verifier.url), token, verifier.ca_fingerprint)
        say("UNEXPECTED: the token worked twice")
    except AgentError as exc:
        say(f"refused as it must be: {exc.message}")

    step("Health call over mutual TLS, HTTP/2")
    async with VerifierClient(config, ident) as client:
        t0 = time.perf_counter()
        health = await client.call("GET", "/v1/health")
        first_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        await client.call("GET", "/v1/health")
        reuse_ms = (time.perf_counter() - t0) * 1000
        tls = dict(client.last_tls)
        say(f"verifier says      {health}")
        say(f"TLS version        {tls.get('tls_version')}")
        say(f"cipher             {tls.get('cipher')}")
        say(f"ALPN               {tls.get('alpn')}  (HTTP version {tls.get('http_version')})")
        say(f"latency            {first_ms:.1f} ms with handshake, {reuse_ms:.1f} ms reusing it")

        step("Renewal: new key, EST simplereenroll over the current mTLS connection")
        renewed = await renew(config, client)
        after = await client.call("GET", "/v1/health")
        say(f"serial             {ident.serial_hex} -> {renewed.serial_hex}")
        say(f"valid until        {renewed.not_after:%Y-%m-%d %H:%M} UTC")
        say(f"health after renew {after.get('status')} as {after.get('device_id')}")

    rows = await biometric_story(config, renewed, work, step, say)
    latency_table(rows, say)  # under biometric_story's last heading, "Decision latency by phase"
    return {
        "device": ident.device_id,
        "tls": f"{tls.get('tls_version')} {tls.get('cipher')}",
        "alpn": str(tls.get("alpn")),
        "renewal": f"{ident.serial_hex} -> {renewed.serial_hex}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.demo", description="The whole story, simulated.")
    parser.add_argument("--port", type=int, default=DEMO_PORT, help="verifier port on 127.0.0.1 (0: any free one)")
    args = parser.parse_args(argv)
    configure_logging("error", "console")  # the story is printed; logs only for errors
    with tempfile.TemporaryDirectory(prefix="capture-demo-") as tmp:
        work = Path(tmp)
        port = args.port if args.port == 0 or _port_free(args.port) else 0
        step("Development PKI: EC P-256 root CA and the verifier's server certificate")
        with LocalVerifier.running(work / "pki", port) as verifier:
            say(f"CA fingerprint (SHA-256) {verifier.ca_fingerprint}")
            note = f" (port {args.port} was busy)" if args.port and not port else ""
            say(f"verifier listening on {verifier.url}{note}")
            try:
                summary = asyncio.run(_device_story(verifier, work))
            except AgentError as exc:
                print(f"\ndemo failed: {exc}", file=sys.stderr)
                return 1
            step("Stopping the verifier")
        say("stopped; the temporary PKI and device state are deleted")
        step("Summary")
        for key, value in summary.items():
            say(f"{key:<8} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
