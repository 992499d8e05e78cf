"""`python -m bench.tls`: what reusing the HTTP/2 connection saves.

Median latency of N requests (`GET /v1/health`) over one reused mutual-TLS
HTTP/2 connection, and of N requests each on a fresh connection (full TLS
handshake with client certificate, no session resumption), against the
reference verifier running as a real process on 127.0.0.1. JSON on stdout.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent.client import VerifierClient
from agent.devstack import LocalVerifier, provision_device
from agent.identity import DeviceIdentity
from agent.logs import configure_logging
from bench.cli import BenchParser, at_least, bench_main, progress


async def _timed_requests(config, identity: DeviceIdentity, count: int, fresh: bool) -> tuple[list[float], dict]:
    times: list[float] = []
    tls: dict = {}
    client = None if fresh else VerifierClient(config, identity)
    if client is not None:
        await client.call("GET", "/v1/health")  # warm: the handshake is not what we time here
    try:
        for n in range(count):
            if n and n % max(1, count // 10) == 0:
                progress(f"  {'fresh connections' if fresh else 'reused connection'}: {n}/{count} requests")
            if fresh:
                t0 = time.perf_counter()
                async with VerifierClient(config, identity) as once:
                    await once.call("GET", "/v1/health")
                    tls = once.last_tls
                times.append(time.perf_counter() - t0)
            else:
                assert client is not None
                t0 = time.perf_counter()
                await client.call("GET", "/v1/health")
                times.append(time.perf_counter() - t0)
                tls = client.last_tls
    finally:
        if client is not None:
            await client.aclose()
    return times, tls


async def _run(verifier: LocalVerifier, work: Path, count: int) -> dict:
    config, identity = await provision_device(verifier, work / "state", "bench-tls")
    reuse, tls = await _timed_requests(config, identity, count, fresh=False)
    print(f"reused connection: {count} requests done", file=sys.stderr)
    fresh, _ = await _timed_requests(config, identity, count, fresh=True)
    print(f"fresh connections: {count} requests done", file=sys.stderr)
    reuse_ms = statistics.median(reuse) * 1000
    fresh_ms = statistics.median(fresh) * 1000
    return {
        "requests": count,
        "reuse_median_ms": round(reuse_ms, 3),
        "fresh_median_ms": round(fresh_ms, 3),
        "speedup": round(fresh_ms / reuse_ms, 2),
        "reuse_p99_ms": round(sorted(reuse)[int(0.99 * (count - 1))] * 1000, 3),
        "fresh_p99_ms": round(sorted(fresh)[int(0.99 * (count - 1))] * 1000, 3),
        "tls_version": tls.get("tls_version"),
        "cipher": tls.get("cipher"),
        "alpn": tls.get("alpn"),
    }


@bench_main("python -m bench.tls")
def main(argv: list[str] | None = None) -> int:
    parser = BenchParser(prog="python -m bench.tls", description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="requests in each of the two phases (default 200)")
    args = parser.parse_args(argv)
    at_least(args.requests, 1, "--requests", "a median needs a request")
    configure_logging("warning", "json", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        work = Path(tmp)
        with LocalVerifier.running(work / "pki") as verifier:
            figures = asyncio.run(_run(verifier, work, args.requests))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
