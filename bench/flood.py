"""`python -m bench.flood`: a legitimate device's latency while the verifier is attacked.

A local verifier process on 127.0.0.1 and two provisioned devices: a kiosk that
keeps calling health and verifies an enrolled subject five times a second (the
figures), and an attacker. Each attack runs in its own process for ``--seconds`` while the kiosk
measures, after a phase with no attack:

- ``connection_churn``: TLS connections without a client certificate, opened and closed;
- ``idle_connections``: 900 idle TLS connections without a client certificate, topped up;
- ``slow_handshakes``: 300 TCP connections that send half a ClientHello and wait;
- ``header_blocks``: 60 TLS connections without a client certificate, each
  streaming one endless HTTP/2 header block (CONTINUATION frames), reopened when
  the verifier closes it;
- ``oversized_work``: the attacker device's largest identifications (10 views, each
  with the most minutiae accepted), and requests over the view bound;
- ``challenge_flood``: the attacker device asking for nonces as fast as it can.

JSON on stdout: per phase the kiosk's health and verification round trips
(p50/p99 in ms, count, errors), what the attack managed (counts by outcome), and
the verifier's RSS and open sockets after it. Loopback only; every phase and
process stops by itself. Timings are from a shared machine: compare phases of one
run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import signal
import ssl
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from cryptography.hazmat.primitives import serialization

from agent.client import VerifierClient
from agent.devstack import LocalVerifier, provision_device
from agent.logs import configure_logging
from bench.cli import BenchError, BenchParser, bench_main, progress
from biometrics.fingerprint import extract
from biometrics.fingerprint.iso19794_2 import encode, field_limits
from biometrics.fingerprint.orientation_field import BLOCK
from biometrics.fingerprint.types import FingerprintTemplate, Minutiae, OrientationField
from protocol.signing import sign_request
from protocol.templates import MAX_MINUTIAE_PER_VIEW, wire_template
from simulators.fingers import FingerGenerator

ATTACKS = (
    "connection_churn",
    "idle_connections",
    "slow_handshakes",
    "header_blocks",
    "oversized_work",
    "challenge_flood",
)
# The kiosk checks health every loop and verifies (a nonce each) every KIOSK_VERIFY_PERIOD_S: 300 nonces a
# minute at most, under the lifted limit, which the challenge flood (about 250 a second) still meets in seconds.
KIOSK_VERIFY_PERIOD_S = 0.2
KIOSK_CHALLENGES_PER_MIN = 600
HALF_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # a record header and the start of a hello


def wire(template: FingerprintTemplate) -> dict[str, str]:
    return wire_template(encode(template))


DENSE = MAX_MINUTIAE_PER_VIEW  # the most minutiae per view the verifier accepts


DENSE_SIDE = 1024  # image side (pixels at 500 dpi) whose orientation field is the largest a record may carry


def dense_view(seed: int, count: int = DENSE) -> dict[str, str]:
    """A view as heavy as the verifier accepts: the most minutiae per view, and the largest orientation field
    (every block foreground, so the field agreement samples all of them)."""
    rng = np.random.default_rng(seed)
    minutiae = Minutiae(
        x=rng.uniform(20, 480, count).astype(np.float32),
        y=rng.uniform(20, 480, count).astype(np.float32),
        angle=rng.uniform(0, 2 * np.pi, count).astype(np.float32),
        kind=np.ones(count, np.uint8),
        quality=np.full(count, 80, np.uint8),
    )
    rows, cols = field_limits(DENSE_SIDE, DENSE_SIDE, 500)
    field = OrientationField(
        BLOCK, rng.integers(0, 256, (rows, cols), dtype=np.uint8), rng.integers(1, 256, (rows, cols), dtype=np.uint8)
    )
    return wire(FingerprintTemplate(DENSE_SIDE, DENSE_SIDE, 500, minutiae, 80, orientation=field))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def figures(values: list[float]) -> dict[str, float | int | None]:
    return {"p50": pct(values, 0.5), "p99": pct(values, 0.99), "n": len(values)}


def verifier_state(pid: int) -> dict[str, float | int]:
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return {"verifier_rss_mb": round(rss / 1024, 1), "verifier_sockets": sockets}


# ---------------------------------------------------------------- attacks (each in its own process)


def _tls_context(ca_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def _churn(host: str, port: int, ca_file: str, deadline: float, counts: Counter[str]) -> None:
    ctx = _tls_context(ca_file)

    async def worker() -> None:
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection(host, port, ssl=ctx)
                counts["opened"] += 1
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            except OSError:
                counts["refused"] += 1
                await asyncio.sleep(0.01)

    await asyncio.gather(*(worker() for _ in range(16)))


async def _hold(host: str, port: int, deadline: float, counts: Counter[str], target: int, opener: Callable) -> None:
    """Keep ``target`` connections open (each reopened when the verifier closes it) until the deadline."""
    held: set[asyncio.Task[None]] = set()

    async def one() -> None:
        try:
            reader, writer = await opener()
        except OSError:
            counts["refused"] += 1
            return
        counts["opened"] += 1
        try:
            while await reader.read(1024):
                pass
            counts["closed_by_verifier"] += 1
        except OSError:
            counts["closed_by_verifier"] += 1
        finally:
            writer.transport.abort()

    while time.monotonic() < deadline:
        held = {t for t in held if not t.done()}
        for _ in range(min(50, target - len(held))):
            held.add(asyncio.create_task(one()))
        await asyncio.sleep(0.05)
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def _idle(host: str, port: int, ca_file: str, deadline: float, counts: Counter[str]) -> None:
    ctx = _tls_context(ca_file)
    await _hold(host, port, deadline, counts, 900, lambda: asyncio.open_connection(host, port, ssl=ctx))


async def _slow(host: str, port: int, ca_file: str, deadline: float, counts: Counter[str]) -> None:
    async def opener():
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(HALF_CLIENT_HELLO)
        return reader, writer

    await _hold(host, port, deadline, counts, 300, opener)


HEADER_BLOCK_CONNECTIONS = 60  # under the verifier's 64 per address: none is evicted, each streams until cut
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frame(kind: int, stream: int, payload: bytes, flags: int = 0) -> bytes:
    """One raw HTTP/2 frame (RFC 9113 4.1), for what the h2 library would never send."""
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


async def _header_blocks(host: str, port: int, ca_file: str, deadline: float, counts: Counter[str]) -> None:
    ctx = _tls_context(ca_file)
    opening = H2_PREFACE + h2_frame(0x4, 0, b"") + h2_frame(0x1, 1, b"\x82")  # HEADERS without END_HEADERS
    continuation = h2_frame(0x9, 1, bytes(16384))

    async def one() -> None:
        ends = asyncio.get_running_loop().time() + max(0.0, deadline - time.monotonic())
        try:
            async with asyncio.timeout_at(ends):
                reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
        except (OSError, TimeoutError):
            counts["refused"] += 1
            await asyncio.sleep(0.01)
            return
        counts["opened"] += 1
        closed = asyncio.ensure_future(reader.read())  # done (or failed) once the verifier closes
        try:
            async with asyncio.timeout_at(ends):  # a verifier that stops reading must not hold the phase
                writer.write(opening)
                while not closed.done():
                    writer.write(continuation)
                    await writer.drain()
                    await asyncio.sleep(0)  # drain does not yield while the buffer is low: let the close be seen
                    counts["continuations_sent"] += 1
            counts["closed_by_verifier"] += 1
        except OSError:
            counts["closed_by_verifier"] += 1
        except TimeoutError:
            pass  # the phase ended with the stream still open
        finally:
            closed.cancel()
            with contextlib.suppress(BaseException):
                await closed  # its reset, if any, is the close counted above
            writer.transport.abort()

    async def worker() -> None:
        while time.monotonic() < deadline:
            await one()

    await asyncio.gather(*(worker() for _ in range(HEADER_BLOCK_CONNECTIONS)))


async def _device_attack(
    files: tuple[str, str, str], url: str, deadline: float, counts: Counter[str], kind: str
) -> None:
    """The attacker device, with its certificate and (decrypted) key files, over plain httpx."""
    cert_file, key_file, ca_file = files
    ctx = _tls_context(ca_file)
    ctx.load_cert_chain(cert_file, key_file)
    key = serialization.load_pem_private_key(Path(key_file).read_bytes(), None)
    heavy = [dense_view(i) for i in range(10)]
    over = [dense_view(i, 30) for i in range(11)]
    async with httpx.AsyncClient(http2=True, http1=False, verify=ctx, base_url=url, timeout=30) as client:

        async def post(path: str, body: dict) -> httpx.Response:
            return await client.post(path, json=body, headers={"Idempotency-Key": os.urandom(12).hex()})

        async def challenges() -> None:
            while time.monotonic() < deadline:
                counts[f"challenge_{(await post('/v1/challenges', {})).status_code}"] += 1

        async def work() -> None:
            i = 0
            while time.monotonic() < deadline:
                challenge = await post("/v1/challenges", {})
                if challenge.status_code != 201:
                    counts[f"challenge_{challenge.status_code}"] += 1
                    await asyncio.sleep(0.05)
                    continue
                views = over if i % 5 == 4 else heavy
                fields = {"nonce": challenge.json()["nonce"], "templates": views}
                response = await post("/v1/identifications", sign_request(key, "POST", "/v1/identifications", fields))
                counts[f"identify_{response.status_code}"] += 1
                i += 1

        if kind == "challenge_flood":
            await asyncio.gather(*(challenges() for _ in range(8)))
        else:
            await asyncio.gather(work(), work())


def _attack_main(kind: str, host: str, port: int, files: tuple[str, str, str], url: str, seconds: float, out) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the benchmark ends this process
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the attacker holds many sockets
    deadline = time.monotonic() + seconds
    counts: Counter[str] = Counter()
    runners = {
        "connection_churn": lambda: _churn(host, port, files[2], deadline, counts),
        "idle_connections": lambda: _idle(host, port, files[2], deadline, counts),
        "slow_handshakes": lambda: _slow(host, port, files[2], deadline, counts),
        "header_blocks": lambda: _header_blocks(host, port, files[2], deadline, counts),
        "oversized_work": lambda: _device_attack(files, url, deadline, counts, kind),
        "challenge_flood": lambda: _device_attack(files, url, deadline, counts, kind),
    }
    configure_logging("warning", "json", stream=sys.stderr)
    try:
        asyncio.run(asyncio.wait_for(runners[kind](), seconds + 5))
    except Exception as exc:  # reported beside the counts: the attack itself failed
        counts[f"attack_failed: {type(exc).__name__}: {str(exc)[:80]}"] += 1
    out.put(dict(counts))


# ---------------------------------------------------------------- the legitimate kiosk


async def _measure(kiosk: tuple, probe: list[dict[str, str]], seconds: float) -> dict:
    config, identity = kiosk
    key = identity.private_key()
    health_ms: list[float] = []
    verify_ms: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    next_verification = 0.0
    async with VerifierClient(config, identity) as client:

        async def verify() -> None:
            nonce = (await client.call("POST", "/v1/challenges", json={}))["nonce"]
            fields = {"nonce": nonce, "subject": "alice", "templates": probe}
            body = sign_request(key, "POST", "/v1/verifications", fields)
            started = time.perf_counter()
            answer = await client.call("POST", "/v1/verifications", json=body)
            verify_ms.append((time.perf_counter() - started) * 1000)
            if answer.get("decision") != "accept":
                errors[f"decision_{answer.get('decision')}"] += 1

        while time.monotonic() < deadline:
            try:
                started = time.perf_counter()
                await client.call("GET", "/v1/health")
                health_ms.append((time.perf_counter() - started) * 1000)
                if time.monotonic() >= next_verification:
                    next_verification = time.monotonic() + KIOSK_VERIFY_PERIOD_S
                    await verify()
            except Exception as exc:  # a figure, not a failure of the benchmark
                # Whole enough to keep the cause: a TransportError names it at the end of its message
                # ("... could not be reached after 3 attempts: ReadError: ..."), which 80 characters cut off.
                errors[f"{type(exc).__name__}: {str(exc)[:300]}"] += 1
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.02)
    return {"health_ms": figures(health_ms), "verify_ms": figures(verify_ms), "errors": dict(errors)}


async def _setup(verifier: LocalVerifier, work: Path) -> tuple[tuple, tuple[str, str, str], list[dict[str, str]]]:
    kiosk = await provision_device(verifier, work / "kiosk", "kiosk-legit")
    _, attacker = await provision_device(verifier, work / "attacker", "kiosk-attacker")
    attacker_files = (str(work / "attacker.pem"), str(work / "attacker.key"), str(verifier.pki_dir / "ca.pem"))
    Path(attacker_files[0]).write_bytes(attacker.cert_path.read_bytes())
    Path(attacker_files[1]).write_bytes(
        attacker.private_key().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    config, identity = kiosk
    key = identity.private_key()
    fingers = FingerGenerator(42)
    enrolled = [extract(fingers.image(0, 0)), extract(fingers.image(1, 0))]
    probe = [wire(extract(fingers.image(0, 1)))]
    async with VerifierClient(config, identity) as client:

        async def signed(path: str, **fields) -> dict:
            nonce = (await client.call("POST", "/v1/challenges", json={}))["nonce"]
            return sign_request(key, "POST", path, {"nonce": nonce, **fields})

        path = "/v1/subjects/alice/enrollments"
        await client.call("POST", path, json=await signed(path, templates=[wire(t) for t in enrolled]))
        once = [wire(enrolled[0])]  # as bench.e2e: the step-up's two fingers must not look alike
        first = await client.request(
            "POST", "/v1/verifications", json=await signed("/v1/verifications", subject="alice", templates=once)
        )
        if first.status_code == 401:  # the device's first use: the step-up, once
            step = first.json()["step_up"]
            second = [wire(enrolled[1])]
            await client.call(
                "POST",
                "/v1/verifications",
                json=await signed("/v1/verifications", subject="alice", step_up=step, templates=second),
            )
    return kiosk, attacker_files, probe


def run(seconds: float, attacks: tuple[str, ...]) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        work = Path(tmp)
        # The kiosk verifies many times a minute: lift the per-minute limits. The oversized_work
        # attacker identifies far more often than a device may (device_identifications_per_min): lifted
        # too, so that phase measures the matching pool, the defence that holds when many devices attack.
        settings = work / "verifier.toml"
        settings.write_text(
            "device_requests_per_min = 1000000\nsubject_requests_per_min = 1000000\n"
            "device_identifications_per_min = 1000000\n"
            f"device_challenges_per_min = {KIOSK_CHALLENGES_PER_MIN}\n"
        )
        with LocalVerifier.running(work / "pki", extra_args=("--config", str(settings))) as verifier:
            assert verifier.process is not None
            pid = verifier.process.pid
            kiosk, attacker_files, probe = asyncio.run(_setup(verifier, work))
            progress(f"phase no_attack: {seconds:g} s")
            results: dict[str, dict] = {"no_attack": asyncio.run(_measure(kiosk, probe, seconds))}
            results["no_attack"].update(verifier_state(pid))
            context = multiprocessing.get_context("spawn")
            for kind in attacks:
                progress(f"phase {kind}: {seconds:g} s")
                out = context.Queue()
                process = context.Process(
                    target=_attack_main,
                    args=(
                        kind,
                        verifier.host,
                        verifier.port,
                        attacker_files,
                        verifier.url,
                        seconds + 1.0,
                        out,
                    ),
                )
                process.start()
                try:
                    time.sleep(1.0)  # the attack under way before the kiosk measures
                    measured = asyncio.run(_measure(kiosk, probe, seconds))
                    try:
                        attack = out.get(timeout=seconds + 15)
                    except Exception:
                        attack = {"error": "the attack process gave no counts"}
                    process.join(5)
                finally:  # interrupted too: no attacker left running on
                    if process.is_alive():
                        process.terminate()
                        process.join(5)
                time.sleep(1.0)  # let the verifier settle before reading its state
                results[kind] = {**measured, "attack": attack, **verifier_state(pid)}
            log_lines = len(verifier.log_path.read_text(errors="replace").splitlines())
    return {
        "seconds_per_phase": seconds,
        "phases": results,
        "verifier_log_lines": log_lines,
        "note": "loopback, shared 2-core machine: compare phases within one run",
    }


@bench_main("python -m bench.flood")
def main(argv: list[str] | None = None) -> int:
    parser = BenchParser(
        prog="python -m bench.flood", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each phase (default 4, 1 to 30)")
    parser.add_argument("--attack", action="append", choices=ATTACKS, help="run only these attacks (repeatable)")
    args = parser.parse_args(argv)
    if not 1.0 <= args.seconds <= 30.0:  # was clamped silently: 0 measured 1 s, 100 measured 30 s, NaN nothing
        raise BenchError(f"--seconds {args.seconds:g} is outside a phase's bounds", "give 1 to 30 seconds")
    configure_logging("warning", "json", stream=sys.stderr)
    print(json.dumps(run(args.seconds, tuple(args.attack or ATTACKS))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
