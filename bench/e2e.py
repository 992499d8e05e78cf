"""`python -m bench.e2e`: from the finger's image to the verifier's decision, by phase.

A local verifier process and a provisioned device; one subject enrolled from
synthetic fingers; then N verifications over one HTTP/2 connection, each from
an image already in memory (as after a capture): extraction on the device,
network (the signed verification's round trip, minus the verifier's own matching
time; the nonce was fetched during the capture, as a session does) and
matching (the verifier's ``Server-Timing: match``: the probe's cylinders and the
scores). ``of_network_verifier_checks_ms`` is the part of "network" the verifier
spends on its other work (signature, nonce, database, session token), from
``Server-Timing: app``. Capture itself (the image over the serial line) is
measured by ``python -m bench.serial``. JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from pathlib import Path

from agent.signing import sign_request

from agent.client import VerifierClient, server_timing
from agent.devstack import LocalVerifier, provision_device
from agent.logs import configure_logging
from biometrics.fingerprint import extract
from biometrics.fingerprint.iso19794_2 import encode
from simulators.fingers import FingerGenerator


def wire(template) -> list[dict[str, str]]:
    return [{"format": "iso19794-2:2005", "data": base64.b64encode(encode(template)).decode()}]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


async def _run(verifier: LocalVerifier, work: Path, count: int) -> dict:
    config, identity = await provision_device(verifier, work / "state", "bench-e2e")
    key = identity.private_key()
    fingers = FingerGenerator(42)
    images = [fingers.image(0, i) for i in range(1, 9)]
    enrolled = [extract(fingers.image(0, 0)), extract(fingers.image(1, 0))]
    extract_ms, network_ms, match_ms, total_ms, decisions = [], [], [], [], []
    verifier_other_ms: list[float] = []
    async with VerifierClient(config, identity) as client:

        async def signed(path: str, **fields) -> dict:
            nonce = (await client.call("POST", "/v1/challenges", json={}))["nonce"]
            return sign_request(key, "POST", path, {"nonce": nonce, **fields})

        path = "/v1/subjects/alice/enrollments"
        await client.call("POST", path, json=await signed(path, templates=wire(enrolled[0]) + wire(enrolled[1])))
        first = await client.request(
            "POST",
            "/v1/verifications",
            json=await signed("/v1/verifications", subject="alice", templates=wire(enrolled[0])),
        )
        if first.status_code == 401:  # the device's first use: complete the step-up once
            await client.call(
                "POST",
                "/v1/verifications",
                json=await signed(
                    "/v1/verifications", subject="alice", step_up=first.json()["step_up"], templates=wire(enrolled[1])
                ),
            )
        for i in range(count):
            image = images[i % len(images)]
            # As in a session, the nonce was fetched while the finger was being placed.
            nonce = (await client.call("POST", "/v1/challenges", json={}))["nonce"]
            t0 = time.perf_counter()
            template = extract(image)
            t1 = time.perf_counter()
            body = sign_request(
                key, "POST", "/v1/verifications", {"nonce": nonce, "subject": "alice", "templates": wire(template)}
            )
            response = await client.request("POST", "/v1/verifications", json=body)
            t2 = time.perf_counter()
            timing = server_timing(response)
            server = timing.get("match", 0.0)
            verifier_other_ms.append(timing.get("app", 0.0) - server)
            decisions.append(response.json().get("decision"))
            extract_ms.append((t1 - t0) * 1000)
            match_ms.append(server)
            network_ms.append((t2 - t1) * 1000 - server)
            total_ms.append((t2 - t0) * 1000)
    net_plus_match = [n + m for n, m in zip(network_ms, match_ms, strict=True)]
    return {
        "verifications": count,
        "http_version": "HTTP/2",
        "total_ms": {"p50": pct(total_ms, 0.5), "p99": pct(total_ms, 0.99)},
        "extract_ms": {"p50": pct(extract_ms, 0.5), "p99": pct(extract_ms, 0.99)},
        "network_ms": {"p50": pct(network_ms, 0.5), "p99": pct(network_ms, 0.99)},
        "match_ms": {"p50": pct(match_ms, 0.5), "p99": pct(match_ms, 0.99)},
        "of_network_verifier_checks_ms": {"p50": pct(verifier_other_ms, 0.5), "p99": pct(verifier_other_ms, 0.99)},
        "network_plus_match_ms": {"p50": pct(net_plus_match, 0.5), "p99": pct(net_plus_match, 0.99)},
        "accepted": decisions.count("accept"),
        "network_note": "one round trip on the decision path: the nonce is fetched while the finger is placed",
        "capture_note": "the image over the serial line is bench.serial's figure (about 7 s at 57600 baud)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--verifications", type=int, default=200)
    args = parser.parse_args(argv)
    configure_logging("warning", "json", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        settings = work / "verifier.toml"  # a benchmark is a flood: lift the per-device rate limit
        settings.write_text("device_requests_per_min = 1000000\nsubject_requests_per_min = 1000000\n")
        with LocalVerifier.running(work / "pki", extra_args=("--config", str(settings))) as verifier:
            figures = asyncio.run(_run(verifier, work, args.verifications))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
