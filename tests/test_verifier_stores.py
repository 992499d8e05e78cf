"""The verifier's sqlite stores on their own: tokens, nonces, idempotency, registry."""

from __future__ import annotations

import sqlite3
import time

import pytest
from cryptography.exceptions import InvalidTag

from tests.conftest import sqlite_modes_under_umask_022
from verifier.challenges import Challenges, NonceError
from verifier.idempotency import IdempotencyStore, KeyReuseError, StoredAnswer, sealing_key
from verifier.pki import CertificateAuthority, CSRError, parse_csr
from verifier.registry import AuthorisationError, DeviceRegistry
from verifier.store import open_database
from verifier.tokens import BootstrapTokens, TokenError, token_hash, typeable_token


@pytest.fixture
def conn(tmp_path):
    connection = open_database(tmp_path / "v.sqlite")
    yield connection
    connection.close()


@pytest.mark.parametrize("older", [False, True], ids=["new", "left-0644-by-an-older-version"])
def test_the_database_and_its_wal_and_shm_are_0600_under_umask_022(tmp_path, older) -> None:
    """Audit 16 F2: WAL was switched on before the chmod, so -wal and -shm were made 0644."""

    def use(path):
        conn = open_database(path)
        conn.execute("INSERT INTO tokens (token_hash, device_id, expires_at) VALUES ('h', 'd', 0)")
        return conn.close

    modes = sqlite_modes_under_umask_022(tmp_path / "db" / "verifier.sqlite", use, older=older)
    assert modes == {"verifier.sqlite": "0o600", "verifier.sqlite-wal": "0o600", "verifier.sqlite-shm": "0o600"}


def test_a_commit_is_on_disk_before_it_is_answered(conn) -> None:
    """synchronous=FULL: under NORMAL a power cut could take back audit events the agent was told were stored
    (and then deleted from its outbox), consumed nonces and one-time tokens."""
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # 2 = FULL (1 = NORMAL)


def test_tokens_are_stored_hashed_single_use_and_expiring(conn) -> None:
    tokens = BootstrapTokens(conn)
    token, device = tokens.new("kiosk-1")
    assert device == "kiosk-1"
    stored = conn.execute("SELECT token_hash FROM tokens").fetchall()
    assert stored == [(token_hash(token),)] and token not in str(stored)
    assert tokens.peek(token) == "kiosk-1"
    tokens.consume(token)
    with pytest.raises(TokenError, match="already used"):
        tokens.peek(token)
    old, _ = tokens.new("kiosk-2")  # expired by hand: new() refuses a lifetime that ends at once
    conn.execute("UPDATE tokens SET expires_at = ? WHERE token_hash = ?", (time.time() - 1, token_hash(old)))
    with pytest.raises(TokenError, match="expired"):
        tokens.peek(old)
    with pytest.raises(TokenError, match="unknown"):
        tokens.peek("nope")
    with pytest.raises(ValueError, match="device id"):
        tokens.new("../etc")


def test_a_database_from_before_tokens_were_revocable_gets_the_column_and_keeps_its_tokens(tmp_path) -> None:

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:  # the tokens table as verifiers before `token revoke` made it
        old.execute("CREATE TABLE tokens (token_hash TEXT PRIMARY KEY, device_id TEXT NOT NULL, "
                    "expires_at REAL NOT NULL, used_at REAL)")
        old.execute("INSERT INTO tokens VALUES (?, 'kiosk-1', ?, NULL)", (token_hash("t0ken"), time.time() + 600))
    old.close()
    conn = open_database(path)
    try:
        tokens = BootstrapTokens(conn)
        assert tokens.peek("t0ken") == "kiosk-1" and list(tokens.pending()) == ["kiosk-1"]
        assert tokens.revoke("kiosk-1") == 1 and tokens.pending() == {}
        with pytest.raises(TokenError, match="revoked by the operator") as refused:
            tokens.peek("t0ken")
        assert refused.value.device_id == "kiosk-1"
    finally:
        conn.close()


def test_bootstrap_tokens_never_start_with_a_dash(conn) -> None:
    """`provision --token TOKEN` would read a leading '-' as an option (1 token in 64 without the rule)."""
    tokens = [typeable_token() for _ in range(2000)]
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == len(tokens) and all(len(t) == 43 for t in tokens)
    token, _ = BootstrapTokens(conn).new("kiosk-9")
    assert not token.startswith("-")


def test_nonces_are_single_use_short_lived_and_bound_to_a_device(conn) -> None:
    challenges = Challenges(conn, ttl_s=60)
    nonce, expires = challenges.issue("kiosk-1")
    assert expires > time.time()
    with pytest.raises(NonceError) as other_device:
        challenges.consume("kiosk-2", nonce)
    challenges.consume("kiosk-1", nonce)
    with pytest.raises(NonceError) as used:
        challenges.consume("kiosk-1", nonce)
    stale, _ = Challenges(conn, ttl_s=-1).issue("kiosk-1")
    with pytest.raises(NonceError) as expired:
        challenges.consume("kiosk-1", stale)
    # Three kinds, each its own problem type (nonce-unknown, nonce-used, nonce-expired): the agent retries by kind.
    assert (other_device.value.kind, used.value.kind, expired.value.kind) == ("unknown", "used", "expired")


def test_idempotency_returns_the_first_answer_and_refuses_key_reuse(conn) -> None:
    store = IdempotencyStore(conn, sealing_key(b"k" * 32))
    answer = StoredAnswer(201, "application/json", b'{"a": 1, "token": "live-session-token"}')
    store.save("kiosk-1", "k", "hash-1", answer)
    assert store.lookup("kiosk-1", "k", "hash-1") == answer
    stored = b"".join(bytes(row[0]) for row in conn.execute("SELECT body FROM idempotency"))
    assert b"live-session-token" not in stored and b'"a"' not in stored  # sealed at rest
    assert IdempotencyStore(conn, sealing_key(b"x" * 32)).lookup("kiosk-2", "k", "hash-1") is None
    assert store.lookup("kiosk-2", "k", "hash-1") is None  # keys are per principal
    with pytest.raises(KeyReuseError):
        store.lookup("kiosk-1", "k", "hash-2")
    assert store.expire(now=time.time() + 2 * 86400) == 1


def test_an_answers_headers_are_sealed_at_rest_and_only_its_own_row_opens_them(conn) -> None:
    """Answers are kept with their headers since a step-up's 401 is replayed (its WWW-Authenticate), but the
    headers were written as plain JSON beside the sealed body: a copy of the database read what they say, and a
    header carrying a secret would be handed out by it, which the body's sealing is there to prevent."""
    store = IdempotencyStore(conn, sealing_key(b"k" * 32))
    said = (b"www-authenticate", b'Bearer error="insufficient_user_authentication", acr_values="second_finger"')
    answer = StoredAnswer(401, "application/problem+json", b'{"step_up": "s-1"}', (said, (b"x-token", b"t0ken")))
    store.save("kiosk-1", "k", "hash-1", answer)
    store.save("kiosk-1", "other", "hash-2", StoredAnswer(200, "application/json", b"{}", ((b"x-a", b"1"),)))
    assert store.lookup("kiosk-1", "k", "hash-1") == answer
    at_rest = b"".join(
        value if isinstance(value, bytes) else str(value).encode()
        for row in conn.execute("SELECT headers, body FROM idempotency") for value in row
    )
    assert b"second_finger" not in at_rest and b"t0ken" not in at_rest and b"www-authenticate" not in at_rest
    # Another row's sealed headers moved into this one do not open (they are bound to their principal and key).
    conn.execute("UPDATE idempotency SET headers = (SELECT headers FROM idempotency WHERE key = 'other') "
                 "WHERE key = 'k'")
    with pytest.raises(InvalidTag):
        store.lookup("kiosk-1", "k", "hash-1")


def test_registry_grace_period_after_renewal(conn) -> None:
    ca = CertificateAuthority.create()
    registry = DeviceRegistry(conn, grace_s=0.2)
    first = ca.issue_server_certificate(["kiosk-1"])[0]
    second = ca.issue_server_certificate(["kiosk-1"])[0]
    registry.record_certificate("kiosk-1", first, supersede=True)
    registry.record_certificate("kiosk-1", second, supersede=True)
    assert registry.authorise(first).device_id == "kiosk-1"  # still in its grace period
    time.sleep(0.3)
    with pytest.raises(AuthorisationError, match="replaced by a renewal"):
        registry.authorise(first)
    assert registry.authorise(second).device_id == "kiosk-1"
    registry.revoke("kiosk-1")
    with pytest.raises(AuthorisationError, match="revoked"):
        registry.authorise(second)


def test_csr_checks() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    with pytest.raises(CSRError, match="not a DER PKCS#10"):
        parse_csr(b"garbage")
    p384 = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(p384, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    with pytest.raises(CSRError, match="P-256"):
        parse_csr(csr)


@pytest.mark.parametrize(("oid", "value"), [("COMMON_NAME", ""), ("COMMON_NAME", "k" * 65), ("COUNTRY_NAME", "FRA")])
def test_a_subject_value_out_of_its_bounds_is_refused_not_a_warning_in_the_log(oid: str, value: str) -> None:
    """fuzz/verifier_requests (seed 21) found an EST request whose CN was empty issued with a UserWarning on the
    verifier's stderr: cryptography only warns about a name value out of its X.520 bounds read from DER."""
    import warnings

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    with warnings.catch_warnings():  # the test's own out-of-bounds value, made on purpose
        warnings.simplefilter("ignore")
        attribute = x509.NameAttribute(getattr(NameOID, oid), value, _validate=False)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([attribute]))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(CSRError, match=r"subject cannot be read .*length must be"):
            parse_csr(csr)
    assert not shown, [str(w.message) for w in shown]


def test_device_rate_limit_locks_for_a_doubling_time() -> None:
    from verifier.policy import RateLimit

    limit = RateLimit(per_minute=3, base_s=10)
    assert [limit.check("d", now=100 + i) for i in range(3)] == [0, 0, 0]
    assert limit.check("d", now=104) == 10  # the fourth in a minute: locked 10 s
    assert limit.check("d", now=110) > 0
    assert limit.check("other", now=110) == 0  # per device
    assert [limit.check("d", now=115 + i) for i in range(3)] == [0, 0, 0]
    assert limit.check("d", now=119) == 20  # the second breach: twice as long


def test_a_request_given_back_no_longer_counts_against_the_rate() -> None:
    """The give-back of a request refused before matching (verifier.biometric.counted): it un-counts that one
    request only, never another's, and never lifts a lock a request past the rate earned."""
    from verifier.policy import RateLimit

    limit = RateLimit(per_minute=2, base_s=10)
    assert [limit.check("d", now=100), limit.check("d", now=101)] == [0, 0]
    limit.give_back("d", 101)
    limit.give_back("d", 101)  # twice: the one at 100 still counts
    assert limit.check("d", now=102) == 0  # the given-back place taken again
    assert limit.check("d", now=103) == 10  # ... and the next is the third in a minute
    limit.give_back("d", 102)
    assert limit.check("d", now=104) > 0, "a give-back lifted the lock"
    limit.give_back("nobody", 100)  # a key never counted: nothing to give back, no error


def test_lockouts_double_and_reset_on_success(conn) -> None:
    from verifier.policy import Lockouts

    lockouts = Lockouts(conn, max_failures=2, base_s=5)
    assert lockouts.record("d", "s", False, now=100) == 0
    assert lockouts.record("d", "s", False, now=101) == 5
    assert lockouts.locked_for("d", "s", now=103) == 3
    assert lockouts.record("d", "s", False, now=110) == 0
    assert lockouts.record("d", "s", False, now=111) == 10
    lockouts.record("d", "s", True, now=130)
    assert lockouts.failures("s") == 0 and lockouts.locked_for("d", "s", now=130) == 0


def test_one_device_junk_claims_lock_only_that_device_several_lock_everyone(conn) -> None:
    """The lockout policy (README): per (device, subject); the subject for all only while 3 devices are locked."""
    from verifier.policy import Lockouts

    lockouts = Lockouts(conn, max_failures=2, base_s=100, devices_to_lock_all=3)
    for t in range(10):  # a broken or hostile kiosk claims "s" with junk, again and again
        lockouts.record("junk", "s", False, now=1000 + t)
    assert lockouts.locked_for("junk", "s", now=1010) > 0
    assert lockouts.locked_for("lobby", "s", now=1010) == 0  # the person still verifies at the lobby
    assert lockouts.failures("s") == 10  # but a recent failure anywhere asks the lobby for a second finger
    for device in ("d2", "d3"):
        lockouts.record(device, "s", False, now=1011)
        lockouts.record(device, "s", False, now=1012)
    assert lockouts.locked_for("lobby", "s", now=1013) == pytest.approx(99)  # three devices locked: everyone
    assert lockouts.locked_for("lobby", "s", now=1113) == 0  # until fewer than three are


def test_session_tokens_are_hashed_bound_to_device_and_short_lived(conn) -> None:
    import time

    from verifier.sessions import SessionTokens

    tokens = SessionTokens(conn, ttl_s=60.0)
    issued = tokens.issue("kiosk-1", "alice")
    assert tokens.check(issued["token"], "kiosk-1") == "alice"
    assert tokens.check(issued["token"], "kiosk-2") is None  # bound to its device
    assert tokens.check(issued["token"] + "x", "kiosk-1") is None
    stored = conn.execute("SELECT token_hash FROM session_tokens").fetchall()
    assert all(issued["token"] not in row[0] for row in stored)  # only the hash is kept
    short = SessionTokens(conn, ttl_s=0.05).issue("kiosk-1", "bob")
    time.sleep(0.1)
    assert tokens.check(short["token"], "kiosk-1") is None  # past its lifetime


def test_an_enrollment_token_is_no_session_token(conn) -> None:
    """A token scoped to enrolling one factor is found, taken and given back only under its scope; a database from
    before scopes gets the column, its tokens being sessions'."""

    from verifier.sessions import SESSION, SessionTokens, enroll_scope

    old = sqlite3.connect(":memory:", isolation_level=None)
    old.execute("CREATE TABLE session_tokens (token_hash TEXT PRIMARY KEY, device_id TEXT NOT NULL, "
                "subject_id TEXT NOT NULL, expires_at REAL NOT NULL)")
    old.execute("INSERT INTO session_tokens VALUES ('h', 'kiosk-1', 'alice', 1e12)")
    SessionTokens(old)
    assert old.execute("SELECT scope FROM session_tokens").fetchall() == [("",)]

    tokens = SessionTokens(conn, ttl_s=60.0)
    face = tokens.issue("kiosk-1", "alice", enroll_scope("face"))["token"]
    assert tokens.check(face, "kiosk-1") is None  # not a session
    assert tokens.check(face, "kiosk-1", enroll_scope("finger")) is None  # nor another factor's
    assert tokens.check(face, "kiosk-1", enroll_scope("face")) == "alice"
    assert tokens.take(face, "kiosk-1", "alice") is None and tokens.take(face, "kiosk-1", "alice", SESSION) is None
    spent = tokens.take(face, "kiosk-1", "alice", enroll_scope("face"))
    assert spent is not None and spent.scope == "enroll:face"
    assert tokens.take(face, "kiosk-1", "alice", enroll_scope("face")) is None  # single use
    tokens.give_back(spent)  # the verifier could not decide: back, with its scope
    assert tokens.check(face, "kiosk-1") is None and tokens.check(face, "kiosk-1", enroll_scope("face")) == "alice"


def test_step_up_reasons(conn) -> None:
    from verifier.stepup import MARGIN, StepUpPolicy

    policy = StepUpPolicy(conn, first_use=True)
    threshold = 0.05
    strong = threshold * MARGIN * 2
    assert policy.reasons("kiosk-1", "alice", strong, threshold, 0) == ["first_use_of_device"]
    policy.completed("kiosk-1")
    assert policy.reasons("kiosk-1", "alice", strong, threshold, 0) == []
    assert policy.reasons("kiosk-1", "alice", threshold * (1 + MARGIN) / 2, threshold, 0) == ["weak_margin"]
    assert policy.reasons("kiosk-1", "alice", strong, threshold, 2) == ["recent_failures"]
    policy.mark_high_risk("alice")
    assert policy.reasons("kiosk-1", "alice", strong, threshold, 0) == ["high_risk_subject"]
    policy.mark_high_risk("alice", False)
    assert policy.reasons("kiosk-1", "alice", strong, threshold, 0) == []
