"""`python -m bench.e2e`: from the finger's image to the verifier's decision, by phase.

A local verifier process and a provisioned device; one subject enrolled from
synthetic fingers; then N verifications over one HTTP/2 connection through the
agent's typed client (agent.verifier_api, as the sessions use it), each from
an image already in memory (as after a capture): extraction on the device,
network (the signed verification's round trip, minus the verifier's own matching
time; the challenge was asked for before the capture, as a session does) and
matching (the verifier's ``Server-Timing: match``: the probe's cylinders and the
scores). ``of_network_verifier_checks_ms`` is the part of "network" the verifier
spends on its other work (signature, nonce, database, session token), from
``Server-Timing: app``. Capture itself (the image over the serial line) is
measured by ``python -m bench.serial``. JSON on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from agent.client import VerifierClient
from agent.devstack import LocalVerifier, provision_device
from agent.logs import configure_logging
from agent.verifier_api import VerifierAPI
from bench.cli import BenchParser, at_least, bench_main, progress
from biometrics.fingerprint import extract
from biometrics.fingerprint.iso19794_2 import encode
from protocol.messages import StepUp
from simulators.fingers import FingerGenerator


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


async def _run(verifier: LocalVerifier, work: Path, count: int) -> dict:
    config, identity = await provision_device(verifier, work / "state", "bench-e2e")
    fingers = FingerGenerator(42)
    images = [fingers.image(0, i) for i in range(1, 9)]
    enrolled = [encode(extract(fingers.image(0, 0))), encode(extract(fingers.image(1, 0)))]
    extract_ms, network_ms, match_ms, total_ms, decisions = [], [], [], [], []
    verifier_other_ms: list[float] = []
    async with VerifierClient(config, identity) as client:
        api = VerifierAPI(client)
        await api.enroll("alice", enrolled)
        first = await api.verify("alice", enrolled[:1])
        if isinstance(first, StepUp):  # the device's first use: complete the step-up once
            await api.verify("alice", enrolled[1:], step_up=first.step_up)
        for i in range(count):
            if i and i % max(1, count // 10) == 0:
                progress(f"  verifications: {i}/{count}")
            image = images[i % len(images)]
            # As in a session, the challenge was asked for before the finger was placed.
            challenge = await api.challenge("verify", "alice")
            t0 = time.perf_counter()
            record = encode(extract(image))
            t1 = time.perf_counter()
            timing: dict[str, float] = {}
            answer = await api.verify("alice", [record], challenge=challenge, timing=timing)
            t2 = time.perf_counter()
            server = timing.get("match", 0.0)
            verifier_other_ms.append(timing.get("app", 0.0) - server)
            decisions.append(getattr(answer, "decision", "step_up"))
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
        "network_note": "one round trip on the decision path: the challenge is asked for before the finger is placed",
        "capture_note": "the image over the serial line is bench.serial's figure (about 7 s at 57600 baud)",
    }


@bench_main("python -m bench.e2e")
def main(argv: list[str] | None = None) -> int:
    parser = BenchParser(prog="python -m bench.e2e", description=__doc__)
    parser.add_argument("--verifications", type=int, default=200, help="verifications timed (default 200)")
    args = parser.parse_args(argv)
    at_least(args.verifications, 1, "--verifications", "a percentile needs a verification")
    configure_logging("warning", "json", stream=sys.stderr)
    progress("starting a local verifier, provisioning a device, enrolling a subject")
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        settings = work / "verifier.toml"  # a benchmark is a flood: lift the per-device rate limit
        limits = ("device_requests_per_min", "subject_requests_per_min", "device_challenges_per_min")
        settings.write_text("".join(f"{name} = 1000000\n" for name in limits))
        with LocalVerifier.running(work / "pki", extra_args=("--config", str(settings))) as verifier:
            figures = asyncio.run(_run(verifier, work, args.verifications))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
