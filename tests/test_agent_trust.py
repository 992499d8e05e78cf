"""The agent trusts the verifier's answers only so far: size, time, shape; and it retries by problem type.

Against real processes: a misbehaving server on the verifier's own server layer
(tests/misbehaving_verifier.py) for answers no verifier should send, and the
real verifier for the expired nonce.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from agent.client import VerifierClient
from agent.devstack import LocalVerifier, provision_device
from agent.errors import AnswerError, BadRequestError, DeadlineError, NonceUsedError, VerifierError
from agent.verifier_api import VerifierAPI
from biometrics.fingerprint.iso19794_2 import encode
from protocol.messages import Decision


@contextmanager
def misbehaving(pki_dir, mode: str, said: list[dict] | None = None) -> Iterator[str]:
    """A server answering every request as ``mode`` says, on the verifier's PKI; its URL.

    ``said``, when given, receives what the server printed after its port once it stopped (``older``: the requests).
    """
    command = [sys.executable, "-m", "tests.misbehaving_verifier", "--pki-dir", str(pki_dir), "--mode", mode]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith('{"port"'):
                yield f"https://127.0.0.1:{json.loads(line)['port']}"
                break
        else:
            raise RuntimeError("the misbehaving server did not start")
    finally:
        proc.kill()  # it is built to misbehave: no graceful stop wanted
        proc.wait(10)
        if proc.stdout is not None:
            if said is not None:
                said.extend(json.loads(line) for line in proc.stdout if line.startswith("{"))
            proc.stdout.close()


def call_against(provisioned, url: str, **network) -> tuple[BaseException | None, float]:
    config, identity = provisioned
    local = config.with_overrides(verifier={"url": url}, network={"retries": 0, **network})

    async def go() -> None:
        async with VerifierClient(local, identity) as client:
            await VerifierAPI(client).challenge("identify")

    started = time.monotonic()
    try:
        asyncio.run(go())
    except BaseException as exc:  # the test looks at what came out, whatever it is
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


@pytest.mark.parametrize("mode", ["endless", "declared"])
def test_an_answer_over_the_size_cap_is_cut_and_refused(verifier, provisioned, mode) -> None:
    with misbehaving(verifier.pki_dir, mode) as url:
        error, elapsed = call_against(provisioned, url, answer_max_bytes=256 * 1024)
    assert isinstance(error, AnswerError), repr(error)
    assert "answer_max_bytes = 262144" in error.message and "compatible version" in error.fix
    assert elapsed < 10, "stopped reading at the cap, not after 100 MB"


def test_a_call_past_its_deadline_ends_there(verifier, provisioned) -> None:
    """A byte every 0.5 s never trips the read timeout (10 s); the call's deadline ends it."""
    with misbehaving(verifier.pki_dir, "trickle") as url:
        error, elapsed = call_against(provisioned, url, call_deadline_s=2.0)
    assert isinstance(error, DeadlineError) and isinstance(error, VerifierError), repr(error)
    assert "within 2 s" in error.message and "call_deadline_s" in error.fix
    assert 1.5 < elapsed < 8


@pytest.mark.parametrize(("mode", "said"), [("deep", "nested deeper than"), ("duplicate", "appears twice")])
def test_a_deep_or_ambiguous_json_answer_is_a_typed_error(verifier, provisioned, mode, said) -> None:
    with misbehaving(verifier.pki_dir, mode) as url:
        error, _ = call_against(provisioned, url)
    assert isinstance(error, AnswerError), repr(error)  # not a RecursionError, not "last key wins"
    assert said in error.message and error.fix


def test_an_expired_nonce_is_retried_by_its_problem_type_and_a_used_one_is_not(tmp_path, synthetic_templates) -> None:
    settings = tmp_path / "verifier.toml"
    settings.write_text("nonce_ttl_s = 1.0\nstep_up_first_use = false\n")
    t = synthetic_templates
    with LocalVerifier.running(tmp_path / "pki", extra_args=("--config", str(settings))) as local:
        config, identity = asyncio.run(provision_device(local, tmp_path / "device", "kiosk-n"))

        async def steps():
            async with VerifierClient(config, identity) as client:
                api = VerifierAPI(client)
                await api.enroll("alice", [encode(x) for x in t[0][:2]])
                stale = await api.challenge("verify", "alice")
                await asyncio.sleep(1.5)  # the person was slow: the nonce expired
                decided = await api.verify("alice", [encode(t[0][2])], challenge=stale)
                fresh = await api.challenge("verify", "alice")
                await api.verify("alice", [encode(t[0][2])], challenge=fresh)
                with pytest.raises(NonceUsedError) as used:  # the same nonce again: never retried
                    await api.verify("alice", [encode(t[0][2])], challenge=fresh)
                return decided, used.value

        decided, used = asyncio.run(steps())
        refusals = [
            json.loads(line)
            for line in local.log_path.read_text().splitlines()
            if line.startswith("{") and '"biometric_request_refused"' in line
        ]
    assert isinstance(decided, Decision) and decided.accepted  # answered after one retry with a fresh nonce
    assert [r["reason"] for r in refusals] == [
        "this challenge nonce has expired",
        "this challenge nonce was already used (a replayed request?)",
    ]
    assert used.slug == "nonce-used" and used.status == 409


def test_an_enrollment_challenge_still_works_with_a_verifier_from_before_first(verifier, provisioned) -> None:
    """An agent updated before its verifier: the older verifier refuses the challenge's "first" field (or
    "modality"; 400 bad-challenge, unknown fields), and every enrollment (face verification) failed at once."""
    config, identity = provisioned
    with misbehaving(verifier.pki_dir, "older") as url:
        local = config.with_overrides(verifier={"url": url}, network={"retries": 0})

        async def go():
            async with VerifierClient(local, identity) as client:
                api = VerifierAPI(client)
                return [await api.challenge("enroll", "ana", first=True),
                        await api.challenge("verify", "ana", modality="face")]

        challenges = asyncio.run(go())
    assert all(c.nonce and c.ttl_s == 60 for c in challenges)


def test_an_older_verifier_is_sent_the_fields_it_refused_once_per_client(verifier, provisioned) -> None:
    """Each challenge to an older verifier cost two requests (one refused, one without the new fields), and its audit
    got a "malformed challenge request" every time: the client now remembers what this verifier refused."""
    config, identity = provisioned
    said: list[dict] = []
    with misbehaving(verifier.pki_dir, "older", said) as url:
        local = config.with_overrides(verifier={"url": url}, network={"retries": 0})

        async def go():
            async with VerifierClient(local, identity) as client:  # a session makes its own VerifierAPI each time
                return [await VerifierAPI(client).challenge("enroll", subject, first=True) for subject in ("ana", "bo")]

        challenges = asyncio.run(go())
    assert all(c.nonce for c in challenges)
    assert [r["request"] for r in said] == [
        {"operation": "enroll", "subject": "ana", "first": True},  # refused: unknown fields ['first']
        {"operation": "enroll", "subject": "ana"},
        {"operation": "enroll", "subject": "bo"},  # not asked with "first" again
    ]


def test_the_fields_an_older_verifier_refused_are_sent_again_after_a_while(verifier, provisioned) -> None:
    """The client remembered a refusal for the process's life: a verifier upgraded meanwhile was never sent "first"
    or "modality" until the daemon's restart. After ``ttl_s`` (a clock the test turns) they are sent once more;
    an older verifier that still refuses them is remembered again, and asked without them."""
    from agent.client import RefusedChallengeFields

    config, identity = provisioned
    said: list[dict] = []
    now = [1000.0]
    with misbehaving(verifier.pki_dir, "older", said) as url:
        # One retry: this server never marks a connection authenticated, so the server layer drops each one after
        # its few unauthenticated requests, before the app sees the next (so it is not in ``said``).
        local = config.with_overrides(verifier={"url": url}, network={"retries": 1, "backoff_base_s": 0.05})

        async def go():
            async with VerifierClient(local, identity) as client:
                client.refused_challenge_fields = RefusedChallengeFields(ttl_s=600, clock=lambda: now[0])
                for subject, later in (("ana", 0), ("bo", 599), ("cy", 1), ("di", 1)):
                    now[0] += later
                    await VerifierAPI(client).challenge("enroll", subject, first=True)

        asyncio.run(go())
    assert [r["request"] for r in said] == [
        {"operation": "enroll", "subject": "ana", "first": True},  # refused: unknown fields ['first']
        {"operation": "enroll", "subject": "ana"},
        {"operation": "enroll", "subject": "bo"},  # 599 s after the refusal: still left out
        {"operation": "enroll", "subject": "cy", "first": True},  # 600 s: asked again (an upgrade?), refused again
        {"operation": "enroll", "subject": "cy"},
        {"operation": "enroll", "subject": "di"},  # remembered from the new refusal
    ]


def test_a_verifiers_own_refusal_of_a_new_field_is_not_retried_without_it(verifier, provisioned) -> None:
    """The retry matched "first" anywhere in a bad-challenge's detail, so a newer verifier's own check of the field
    ("first is true or false, and only for enroll") was asked again without it, and the refusal was lost."""
    config, identity = provisioned

    async def go() -> None:
        async with VerifierClient(config, identity) as client:
            await VerifierAPI(client).challenge("identify", first=True)

    with pytest.raises(BadRequestError) as refused:
        asyncio.run(go())
    assert refused.value.slug == "bad-challenge" and "only for enroll" in refused.value.message
    malformed = [line for line in verifier.log_path.read_text().splitlines() if "malformed challenge request" in line]
    assert len(malformed) == 1, malformed
