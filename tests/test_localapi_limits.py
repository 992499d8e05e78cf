"""The local API under what a kiosk app (or anything else in the socket's group) may do wrong: bad groups,
malformed or oversized requests, idle connections by the hundred, several readers of one session's events,
and a reader that goes away. Everything over the real unix socket; sessions on the serial module simulator
with the real verifier."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from agent.client import VerifierClient
from agent.errors import ConfigError
from agent.localapi import LocalAPI
from agent.sessions import CaptureSession
from drivers.zfm.driver import ZfmModule
from tests.conftest import as_agent_user_prefix

ROOT = Path(__file__).resolve().parent.parent
# The API's defaults, spelled out so that these tests also run (and fail for what they test) against an API
# without them: agent.localapi.MAX_CONNECTIONS and READER_GRACE_S.
CONNECTIONS = 32
GRACE_S = 5.0
TEST_GRACE_S = 2.0  # where a test waits a grace out: see its use


async def exchange(socket_path: Path, data: bytes, timeout_s: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes (bounded: a hang shows as a timeout)."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()


def answer(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), raw[:200]
    return int(head.split()[1]), json.loads(body)


def health_only(socket_path: Path, **options) -> LocalAPI:
    return LocalAPI(socket_path, lambda emit, **kw: None, **options)


# ---------------------------------------------------------------- [api] group


def test_an_unknown_api_group_is_a_config_error_naming_the_fix_and_leaves_no_socket(tmp_path) -> None:
    socket_path = tmp_path / "api.sock"

    async def go() -> None:
        await health_only(socket_path, group="no-such-kiosk-group").start()

    with pytest.raises(ConfigError) as refused:
        asyncio.run(go())
    assert "no-such-kiosk-group" in refused.value.message and "groupadd" in refused.value.fix
    assert not socket_path.exists()


def test_an_api_group_the_agent_is_not_in_is_a_config_error_naming_the_fix() -> None:
    """The shipped unit: an unprivileged user without CAP_CHOWN may only give a file to a group it is in."""
    prefix = as_agent_user_prefix()
    if isinstance(prefix, str):
        pytest.skip(prefix)
    folder = Path(tempfile.mkdtemp(prefix="apigroup-"))
    try:
        os.chown(folder, 65534, 65534)  # the agent's side runs as nobody, in no group but nogroup
        socket_path = folder / "api.sock"
        script = (
            "import asyncio, pathlib, sys\n"
            "from agent.errors import AgentError\n"
            "from agent.localapi import LocalAPI\n"
            f"api = LocalAPI(pathlib.Path({str(socket_path)!r}), lambda emit: None, group='root')\n"
            "try:\n"
            "    asyncio.run(api.start())\n"
            "except AgentError as exc:\n"
            "    print(type(exc).__name__, '|', exc.message, '|', exc.fix)\n"
        )
        ran = subprocess.run(
            [*prefix, sys.executable, "-c", script],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        lines = ran.stdout.strip().splitlines()
        assert lines and lines[-1].startswith("ConfigError | "), ran.stdout + ran.stderr[-2000:]
        _, message, fix = lines[-1].split(" | ")
        assert '"root"' in message and "usermod -aG root" in fix and "SupplementaryGroups=root" in fix
        assert not socket_path.exists(), "no socket is left behind"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- malformed and oversized requests


def test_the_defaults_spelled_out_here_are_the_apis() -> None:
    from agent import localapi

    assert (localapi.MAX_CONNECTIONS, localapi.READER_GRACE_S) == (CONNECTIONS, GRACE_S)


def test_malformed_and_oversized_requests_get_a_status_and_a_json_error(tmp_path) -> None:
    socket_path = tmp_path / "api.sock"
    body = b'{"operation": "verify", "subject": "' + b"a" * 70_000 + b'"}'

    async def go() -> list[tuple[int, dict]]:
        api = health_only(socket_path)
        await api.start()
        try:
            return [
                answer(await exchange(socket_path, b"GARBAGE\r\n\r\n")),
                answer(await exchange(socket_path, b"POST /sessions HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n"
                                      % len(body) + body)),
                answer(await exchange(socket_path, b"GET /health HTTP/1.1\r\nhost: a\r\nx: " + b"b" * 100_000
                                      + b"\r\n\r\n")),
            ]
        finally:
            await api.stop()

    (garbage, garbage_error), (big, big_error), (header, header_error) = asyncio.run(go())
    assert garbage == 400 and "HTTP/1.1" in garbage_error["error"]
    assert big == 413 and "64 KiB" in big_error["error"]
    assert header == 431 and "headers" in header_error["error"]


def post_sessions(body: bytes) -> bytes:
    return b"POST /sessions HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % len(body) + body


def posted_to_health_only(socket_path: Path, body: bytes) -> tuple[int, dict]:
    """The status and JSON of a health-only local API's answer to ``body`` POSTed to /sessions."""

    async def go() -> tuple[int, dict]:
        api = health_only(socket_path)
        await api.start()
        try:
            return answer(await exchange(socket_path, post_sessions(body)))
        finally:
            await api.stop()

    return asyncio.run(go())


# Bodies a fuzzing audit sent, and what each answer's "error" must say. Before: a RecursionError (a dropped
# connection and a traceback in the daemon's log), UTF-16 guessed and accepted, the last duplicate key silently
# kept, NaN / Infinity / 1e999 taken as numbers, a lone surrogate accepted until it failed deep in a session.
HOSTILE_BODIES = {
    "brackets nested to the body cap": (b"[" * 30_000 + b"]" * 30_000, "nested deeper than 8 levels"),
    "objects nested 9 deep": (b'{"a":' * 9 + b"1" + b"}" * 9, "nested deeper than 8 levels"),
    "duplicate key": (b'{"operation": "verify", "operation": "enroll", "subject": "ana"}',
                      "the key 'operation' appears twice"),
    "NaN": (b'{"operation": "identify", "captures": NaN}', "NaN is not a JSON number"),
    "Infinity": (b'{"operation": "identify", "captures": Infinity}', "Infinity is not a JSON number"),
    "-Infinity": (b'{"operation": "identify", "captures": -Infinity}', "-Infinity is not a JSON number"),
    "1e999": (b'{"operation": "identify", "captures": 1e999}', "the number 1e999 is out of range"),
    "UTF-16": ('{"operation": "identify"}'.encode("utf-16"), "UTF-16 byte order mark"),
    "UTF-16 without a byte-order mark": ('{"operation": "identify"}'.encode("utf-16-le"), "holds NUL bytes"),
    "UTF-32": ('{"operation": "identify"}'.encode("utf-32-be"), "holds NUL bytes"),
    "Latin-1": (b'{"operation": "verify", "subject": "Jos\xe9"}', "not UTF-8 (byte 39: invalid continuation byte)"),
    "byte-order mark": (b'\xef\xbb\xbf{"operation": "identify"}', "UTF-8 byte order mark"),
    "5000 digits": (b'{"operation": "enroll", "subject": "a", "captures": ' + b"9" * 5000 + b"}", "not JSON"),
    "beyond 64 bits": (b'{"operation": "enroll", "subject": "a", "captures": ' + b"9" * 20 + b"}", "out of range"),
    "lone surrogate": (b'{"operation": "verify", "subject": "\\ud800"}', "lone UTF-16 surrogate"),
    "a list": (b'[{"operation": "identify"}]', "must be a JSON object, not list"),
    "a string": (b'"identify"', "must be a JSON object, not str"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
def test_request_json_is_read_strictly_a_400_naming_the_fix(tmp_path, name: str) -> None:
    body, needle = HOSTILE_BODIES[name]
    socket_path = tmp_path / "api.sock"

    status, error = posted_to_health_only(socket_path, body)
    assert status == 400, error
    assert needle in error["error"], error
    assert "UTF-8" in error["fix"], "every refusal of the body names the fix"


def test_nesting_up_to_the_depth_limit_is_read(tmp_path) -> None:
    """8 deep reaches the routes (refused there for its operation, not by the parser): the limit is not lower."""
    from agent.localapi import MAX_JSON_DEPTH

    assert MAX_JSON_DEPTH == 8
    socket_path = tmp_path / "api.sock"
    body = b'{"operation": "dance", "x": ' + b"[" * 7 + b"1" + b"]" * 7 + b"}"

    status, error = posted_to_health_only(socket_path, body)
    assert status == 400 and "operation must be one of" in error["error"], error


@pytest.mark.parametrize(("body", "needle"), [
    (b'{"operation": "verify", "subject": "ana smith"}', "\"subject\" 'ana smith' is not a subject id"),
    (b'{"operation": "enroll", "subject": "-ana"}', "\"subject\" '-ana' is not a subject id"),
    (b'{"operation": "enroll", "subject": "ana", "group": "staff/night"}', "\"group\" 'staff/night' is not a group"),
])
def test_a_subject_or_group_the_verifier_would_refuse_is_a_400_before_any_session(tmp_path, body, needle) -> None:
    """Such a request started a session: the verifier's 400 came back as its failure (audited as a session),
    with a fix in the verifier's wire terms that named neither the key nor what an id may hold."""
    status, error = posted_to_health_only(tmp_path / "api.sock", body)
    assert status == 400 and needle in error["error"], error
    assert "1 to 64 letters" in error["fix"], error


def test_a_route_that_fails_is_a_500_with_json_and_one_log_event_without_the_body(tmp_path) -> None:
    socket_path = tmp_path / "api.sock"

    def broken_health() -> dict:
        raise RuntimeError("s3cret-in-the-exception")

    def broken_session(emit, **kw):
        raise KeyError("s3cret-subject")  # e.g. a part that quotes what it was given

    async def go() -> tuple[tuple[int, dict], tuple[int, dict], tuple[int, dict], list[dict]]:
        api = LocalAPI(socket_path, broken_session, health=broken_health)
        await api.start()
        try:
            with capture_logs() as logs:
                health = answer(await exchange(socket_path, b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n"))
                session = answer(await exchange(socket_path, post_sessions(
                    b'{"operation": "verify", "subject": "s3cret-subject"}')))
            after = answer(await exchange(socket_path, post_sessions(b'{"operation": "nothing"}')))
        finally:
            await api.stop()
        return health, session, after, logs

    (health_status, health), (session_status, session), (after_status, _), logs = asyncio.run(go())
    assert health_status == 500 and "RuntimeError" in health["error"] and "local_api_request_failed" in health["fix"]
    assert session_status == 500 and "KeyError" in session["error"]
    assert after_status == 400, "the API still serves after a route failed"
    failed = [e for e in logs if e["event"] == "local_api_request_failed"]
    assert [(e["route"], e["error_type"]) for e in failed] == [("/health", "RuntimeError"), ("/sessions", "KeyError")]
    assert all(e["raised_at"].startswith("test_localapi_limits.py:") for e in failed)
    assert "s3cret" not in repr(logs) and "s3cret" not in repr((health, session))


# ---------------------------------------------------------------- idle connections


def test_idle_connections_are_capped_and_timed_out_and_the_cap_is_logged_once(tmp_path) -> None:
    socket_path = tmp_path / "api.sock"

    async def go() -> tuple[list[int], list[int], int, list[dict]]:
        api = health_only(socket_path)
        await api.start()
        held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            with capture_logs() as logs:
                for _ in range(CONNECTIONS):
                    reader, writer = await asyncio.open_unix_connection(str(socket_path))
                    writer.write(b"GET /hea")  # half a request, never finished
                    held.append((reader, writer))
                await asyncio.sleep(0.2)
                extra = [answer(await exchange(socket_path, b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n"))[0]
                         for _ in range(20)]
                # The idle ones are answered 408 and closed when their deadline passes.
                timed_out = [answer(await asyncio.wait_for(r.read(), 30))[0] for r, _ in held]
                healthy = answer(await exchange(socket_path, b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n"))[0]
        finally:
            for _, writer in held:
                writer.close()
            await api.stop()
        return extra, timed_out, healthy, logs

    extra, timed_out, healthy, logs = asyncio.run(go())
    assert set(extra) == {503}
    assert set(timed_out) == {408}
    assert healthy == 200
    assert [e["event"] for e in logs].count("local_api_connections_capped") == 1


async def health_or_shed(socket_path: Path) -> int | str:
    """/health's status, or "shed": a server at its cap answers 503 and closes at once, and on a loaded
    machine that close may beat the request's write (the client then sees a reset, not the 503)."""
    try:
        return answer(await exchange(socket_path, b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n"))[0]
    except (ConnectionResetError, BrokenPipeError):
        return "shed"


def test_hundreds_of_idle_connections_never_exhaust_the_daemons_descriptors(tmp_path) -> None:
    """The audit's scenario: a process with 256 descriptors, 300 half-requests held open. /health answers all
    along (503, or shed, while the cap is reached; 200 once the deadline closed the idle ones) and accept never
    fails."""
    socket_path = tmp_path / "api.sock"
    server = subprocess.Popen(
        [sys.executable, "-c", (
            "import asyncio, pathlib, resource\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
            "from agent.localapi import LocalAPI\n"
            "async def main():\n"
            f"    api = LocalAPI(pathlib.Path({str(socket_path)!r}), lambda emit: None)\n"
            "    await api.start()\n"
            "    await asyncio.sleep(3600)\n"
            "asyncio.run(main())\n"
        )],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )

    async def go() -> tuple[list[int], int]:
        deadline = time.monotonic() + 30
        while not socket_path.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        held = []
        try:
            for _ in range(300):
                _, writer = await asyncio.open_unix_connection(str(socket_path))
                writer.write(b"GET /hea")
                held.append(writer)
            await asyncio.sleep(1)
            flooded = [await health_or_shed(socket_path) for _ in range(3)]
        finally:
            for writer in held:
                writer.close()
        await asyncio.sleep(1)
        return flooded, answer(await exchange(socket_path, b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n"))[0]

    try:
        flooded, after = asyncio.run(go())
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0].decode(errors="replace")
    assert set(flooded) <= {200, 503, "shed"} and after == 200
    assert "Too many open files" not in output
    assert output.count("local_api_connections_capped") <= 1, output[-2000:]


# ---------------------------------------------------------------- one session, several readers


def waiting_session(reader: ZfmModule, client: VerifierClient):
    """A real finger session at a sensor nobody touches: it prompts, then waits (long) for a finger."""

    def make(emit, **kw):
        return CaptureSession(reader, client, emit=emit, finger_timeout_s=120)

    return make


async def read_events(kiosk: httpx.AsyncClient, path: str, until: str | None = None) -> list[dict]:
    """A session's events; with ``until``, the reader hangs up after the first event of that type."""
    events: list[dict] = []
    async with kiosk.stream("GET", path) as stream:
        assert stream.status_code == 200
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if until is not None and events[-1]["type"] == until:
                    break
    return events


def test_every_reader_of_a_session_gets_all_its_events_concurrent_or_late(provisioned, zfm_sim, tmp_path) -> None:
    config, identity = provisioned
    socket_path = tmp_path / "api.sock"

    async def go() -> tuple[list[dict], list[dict], list[dict], int]:
        async with VerifierClient(config, identity) as client:
            with ZfmModule(zfm_sim.port) as module:
                api = LocalAPI(socket_path, waiting_session(module, client))
                await api.start()
                try:
                    transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
                    async with httpx.AsyncClient(transport=transport, base_url="http://kiosk", timeout=30) as kiosk:
                        created = (await kiosk.post("/sessions", json={"operation": "identify"})).json()
                        first = asyncio.ensure_future(read_events(kiosk, created["events"]))
                        second = asyncio.ensure_future(read_events(kiosk, created["events"]))
                        await asyncio.sleep(1.0)
                        await kiosk.delete(f"/sessions/{created['id']}")
                        a, b = await asyncio.wait_for(asyncio.gather(first, second), 30)
                        late = await asyncio.wait_for(read_events(kiosk, created["events"]), 30)
                        gone = (await kiosk.get("/sessions/nope/events")).status_code
                finally:
                    await api.stop()
                return a, b, late, gone

    a, b, late, gone = asyncio.run(go())
    assert a == b == late, (a, b, late)
    assert a[0]["code"] == "place_finger" and a[-1]["type"] == "cancelled"
    assert gone == 404


# ---------------------------------------------------------------- a reader that goes away


def test_a_session_whose_reader_went_away_is_cancelled_after_the_grace(provisioned, zfm_sim, tmp_path) -> None:
    """The kiosk app crashed (or closed its stream): nobody can follow the prompts any more, so the session
    ends and the sensor is free, unless a reader comes back within the grace (the app reconnected)."""
    config, identity = provisioned
    socket_path = tmp_path / "api.sock"

    async def go() -> tuple[bool, list[dict], float]:
        async with VerifierClient(config, identity) as client:
            with ZfmModule(zfm_sim.port) as module:
                # A grace shorter than the default (GRACE_S, checked above): the same two sides of it, in
                # half the waiting (most of this test was spent waiting the 5 s out, twice).
                api = LocalAPI(socket_path, waiting_session(module, client), reader_grace_s=TEST_GRACE_S)
                await api.start()
                try:
                    transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
                    async with httpx.AsyncClient(transport=transport, base_url="http://kiosk", timeout=30) as kiosk:
                        created = (await kiosk.post("/sessions", json={"operation": "identify"})).json()
                        await read_events(kiosk, created["events"], until="prompt")  # then hangs up
                        # ... and comes back within the grace: the session goes on.
                        back = asyncio.ensure_future(read_events(kiosk, created["events"]))
                        await asyncio.sleep(TEST_GRACE_S + 1.5)
                        still_running = (await kiosk.get("/health")).json()["busy"]
                        back.cancel()  # the app goes for good
                        with contextlib.suppress(asyncio.CancelledError):
                            await back
                        left = time.monotonic()
                        while (await kiosk.get("/health")).json()["busy"] and time.monotonic() - left < 30:
                            await asyncio.sleep(0.2)
                        freed_after = time.monotonic() - left
                        events = [] if freed_after >= 30 else await read_events(kiosk, created["events"])
                finally:
                    await api.stop()
                return still_running, events, freed_after

    still_running, events, freed_after = asyncio.run(go())
    assert still_running is True, "a reader back within the grace keeps the session"
    assert freed_after < 30, "the session was never cancelled"
    assert events[-1]["type"] == "cancelled" and "stopped reading" in events[-1]["reason"]

