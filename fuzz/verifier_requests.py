"""Structure-aware end-to-end fuzzing of the reference verifier: every endpoint, over mTLS HTTP/2.

What it does: starts a real verifier (``capture-verifier serve``, as the tests'
``verifier`` fixture does) on 127.0.0.1 on a free port, with a fresh PKI and a
settings file whose rate limits and lockouts are loose enough not to stand in
the way; provisions two devices with one-time tokens (one for the JSON
endpoints, one whose certificate the EST renewals may replace); enrolls a finger
and a face subject. Then, until ``--seconds`` have passed, it picks an endpoint,
takes a valid request body for it, mutates the JSON tree (drops, duplicates and
renames keys, changes types, puts in huge or odd numbers, long strings, deep
nesting, odd Unicode, lone surrogates as escapes or as raw bytes, wrong base64,
bit-flipped template records inside good base64, top-level values of another
type), signs it again over a fresh nonce where the endpoint checks a device
signature (the events' hash chain is recomputed likewise) so that the mutation,
not the signature, is what the verifier judges, and sends it. EST requests get
PKCS#10 requests built by cryptography then DER-edited and signed again, or
byte-flipped.

What it reports: every answer of status 500 or more, and every server log line
of level error or above or holding a traceback, with the mutations, the answer
and the body that caused it (base64, synthetic data only: the fingers come from
the simulator, the faces are random unit vectors). The JSON report also counts
the requests per endpoint and status. The exit status is 1 when something was
found.

How to run it (from the repository root, with the project's virtualenv; about
three minutes each)::

    python fuzz/verifier_requests.py --seed 1 --seconds 180
    python fuzz/verifier_requests.py --seed 2 --seconds 180 --report /tmp/fuzz-2.json

Without ``--report`` the report goes to a new temporary folder, whose path is
printed at the end; the verifier's log is copied next to it
(``report.verifier.log``). The verifier's state folder (a development PKI, keys
included) is removed at the end, or on Ctrl-C or SIGTERM, unless ``--keep``.

Why a script and not a test: it is random and runs for minutes, the suite must
be fast and repeatable. Every bug it finds becomes a test of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import math
import os
import random
import secrets
import shutil
import signal
import ssl
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout, for the script and (below) for the verifier it starts
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))

import httpx  # noqa: E402
import structlog  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.serialization import pkcs7  # noqa: E402
from cryptography.x509.oid import AttributeOID, NameOID  # noqa: E402

from agent.devstack import LocalVerifier, provision_device  # noqa: E402
from biometrics.face import challenge_for  # noqa: E402
from protocol import endpoints  # noqa: E402
from protocol.audit import GENESIS, event_hash  # noqa: E402
from protocol.face_template import MODELS, wire_faces, wire_liveness  # noqa: E402
from protocol.face_template import encode as encode_face  # noqa: E402
from protocol.signing import SIGNATURE_FIELD, sign_request  # noqa: E402
from protocol.templates import wire_template  # noqa: E402
from protocol.wire import WireError, loads  # noqa: E402
from tests.der import children as _children  # noqa: E402
from tests.der import tlv as _tlv  # noqa: E402

# Loose enough that no limit answers instead of the code under test; a lockout ends at once.
SETTINGS = """\
device_requests_per_min = 10000000
subject_requests_per_min = 10000000
device_challenges_per_min = 10000000
device_identifications_per_min = 10000000
device_comparisons_per_min = 1000000000
device_event_batches_per_min = 10000000
device_events_per_min = 1000000000
device_event_bytes_per_min = 100000000000
max_templates_per_subject = 1000000
est_refusals_per_min = 10000000
renewals_per_hour = 10000000
max_failures = 10000000
lockout_base_s = 0.001
step_up_first_use = false
nonce_ttl_s = 600
grace_s = 86400
match_queue = 64
match_budget_s = 60
"""

MAX_SAMPLES = 3  # bodies kept per distinct finding
MAX_BODY_IN_REPORT = 64 * 1024


# ---------------------------------------------------------------- a JSON tree that can say what json.dumps cannot


@dataclass
class Raw:
    """JSON text put in as it is (a number json.dumps would not write, a nesting too deep to build)."""

    text: str


@dataclass
class Pairs:
    """An object whose keys may repeat."""

    items: list[tuple[str, Any]]


def dump(node: Any, ascii_only: bool) -> str:
    """The JSON text of a tree of plain values, :class:`Raw` and :class:`Pairs`."""
    if isinstance(node, Raw):
        return node.text
    if isinstance(node, Pairs | dict):
        items = node.items if isinstance(node, Pairs) else list(node.items())
        inner = ",".join(f"{json.dumps(k, ensure_ascii=ascii_only)}:{dump(v, ascii_only)}" for k, v in items)
        return "{" + inner + "}"
    if isinstance(node, list):
        return "[" + ",".join(dump(v, ascii_only) for v in node) + "]"
    if isinstance(node, float) and not math.isfinite(node):
        return "1e400" if node > 0 else "-1e400"
    return json.dumps(node, ensure_ascii=ascii_only)


def to_bytes(text: str) -> bytes:
    """UTF-8; a lone surrogate (in text written without escapes) becomes its raw 3 bytes, as a careless encoder
    would write it."""
    return text.encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------- mutations


ODD_NUMBERS = ["1e400", "-1e400", "1e308", "-0", "-0.0", "5e-324", "1E+2", "9223372036854775807",
               "9223372036854775808", "-9223372036854775808", "-9223372036854775809", "1" + "0" * 400,
               "0." + "0" * 400 + "1", "123456789012345678901234567890.5", "1.5", "0", "-1", "2147483648",
               "4294967296", "65536", "256", "1e-400", "NaN", "Infinity", "-Infinity", "01", "1.", ".5", "+1"]
ODD_TEXT = ["", " ", "\u0000", "\ud800", "\udfff", "\ud83d", "\U0001f600", "e\u0301", "\u202e", "\ufeff",
            "\uffff", "\U0010ffff", "\uff21", "\n", "alice\n", "../..", "a" * 65, "A" * 64, "%00", "\\u0000",
            "\x7f", "null", "true", "0", "é", "İ", "ß", "\u2028", "🂡" * 10, "-", "_", ".", "a:b", "a/b", "a b"]
BAD_B64 = ["!!!!", "AAA", "AA=A", "A===", "====", "AA\nAA==", " AAAA", "AAAA ", "AA-_", "AAAé", "\u2013AAA", "AQ",
           "AQ=", "AQ==\n", "Zm9v\u0000", "YQ==YQ=="]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(9 if depth < 2 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63 - 1, -(2**63), 0.5, -0.0, 1e308])
    if pick == 3:
        return Raw(rng.choice(ODD_NUMBERS))
    if pick in (4, 5):
        return rng.choice([*ODD_TEXT, "x", "alice", "verify", "finger", "face-embedding", "iso19794-2:2005"])
    if pick == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    if pick == 7:
        return {rng.choice(["a", "subject", "data", "format"]): _random_value(rng, depth + 1)}
    return "x" * rng.choice([100, 4096, 70000])


def _nodes(tree: Any) -> list[tuple[Any, Any]]:
    """(container, key or index) of every value below the top, the top itself as (None, None)."""
    out: list[tuple[Any, Any]] = [(None, None)]
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                out.append((node, key))
                stack.append(value)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                out.append((node, index))
                stack.append(value)
    return out


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """A record with one structural defect: a flipped bit, a cut, a tail, a header field at an extreme."""
    if not data:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    buf = bytearray(data)
    op = rng.randrange(6)
    if op == 0:
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(buf))
            buf[at] ^= 1 << rng.randrange(8)
    elif op == 1:
        buf = buf[: rng.randrange(len(buf))]
    elif op == 2:
        buf += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    elif op == 3:  # a length or count field near the start at 0 or at its maximum
        at = rng.randrange(min(len(buf), 40))
        width = rng.choice([1, 2, 4])
        buf[at:at + width] = rng.choice([b"\x00", b"\xff"]) * width
    elif op == 4:
        at = rng.randrange(len(buf))
        buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
    else:
        buf = bytearray(reversed(buf[:8])) + buf[8:]
    return bytes(buf)


def _b64_payload(text: str) -> bytes | None:
    if len(text) < 8 or len(text) % 4:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return None


def mutate(rng: random.Random, tree: Any) -> tuple[Any, list[str]]:
    """The tree with one to three mutations, and their names (for the report)."""
    done: list[str] = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        tree, name = _mutate_once(rng, tree)
        done.append(name)
    return tree, done


def _mutate_once(rng: random.Random, tree: Any) -> tuple[Any, str]:
    container, key = rng.choice(_nodes(tree))
    value = tree if container is None else container[key]

    def put(new: Any) -> Any:
        if container is None:
            return new
        container[key] = new
        return tree

    where = "body" if container is None else str(key)
    op = rng.randrange(14)
    if op == 0 and isinstance(container, dict):
        del container[key]
        return tree, f"drop {where}"
    if op == 1 and isinstance(container, dict):  # the key twice: the parse, not a later field, must refuse it
        items = list(container.items())
        items.insert(rng.randrange(len(items) + 1), (key, _random_value(rng) if rng.random() < 0.5 else value))
        pairs = Pairs(items)
        if container is tree:
            return pairs, f"duplicate {where}"
        for parent, parent_key in _nodes(tree)[1:]:
            if parent[parent_key] is container:
                parent[parent_key] = pairs
                return tree, f"duplicate {where}"
        return tree, "duplicate (missed)"
    if op == 2:
        return put(_random_value(rng)), f"type {where}"
    if op == 3:
        return put(Raw(rng.choice(ODD_NUMBERS))), f"number {where}"
    if op == 4:
        size = rng.choice([256, 4096, 65537, 300_000, 1_100_000])
        return put(rng.choice(["a", "é", "\U0001f600", "\\", '"', "A"]) * size), f"long string {where} {size}"
    if op == 5:
        depth = rng.choice([31, 32, 33, 64, 1000, 100_000])
        open_, close = ("[", "]") if rng.random() < 0.5 else ('{"a":', "}")
        return put(Raw(open_ * depth + dump(value, True) + close * depth)), f"nesting {where} {depth}"
    if op == 6 and isinstance(value, str):
        odd = rng.choice(ODD_TEXT)
        at = rng.randrange(len(value) + 1)
        return put(value[:at] + odd + value[at:]), f"unicode in {where}"
    if op == 7:
        return put(rng.choice(ODD_TEXT)), f"odd text {where}"
    if op == 8 and isinstance(value, str):
        return put(rng.choice(BAD_B64) if rng.random() < 0.5 else value[: rng.randrange(len(value) + 1)] +
                   rng.choice(["=", "!", "é", "\n", "-", "_", "=="])), f"base64 {where}"
    if op == 9 and isinstance(value, str) and (payload := _b64_payload(value)) is not None:
        return put(base64.b64encode(_mutate_bytes(rng, payload)).decode("ascii")), f"record bytes {where}"
    if op == 10 and isinstance(container, dict):
        new_key = rng.choice([key.upper(), key + " ", " " + key, key + "\u0000", "\ud800", "", "extra", "__proto__"])
        container[new_key] = container.pop(key)
        return tree, f"rename {where}"
    if op == 11 and isinstance(value, dict):
        value[rng.choice(["extra", "subject", "group", "step_up", "session_token", "templates", "faces",
                          "liveness", "nonce", "signature", "operation", "events", "reader"])] = _random_value(rng)
        return tree, f"add key in {where}"
    if op == 12 and isinstance(value, list):
        if value and rng.random() < 0.6:
            return put(value * rng.choice([2, 6, 11, 100, 2000])), f"repeat {where}"
        return put([]), f"empty {where}"
    if op == 13 and container is None:
        return rng.choice([[], "body", 1, None, [tree], Raw("")]), "top level"
    # The pick did not fit this node: a value of another type there.
    return put(_random_value(rng)), f"type {where}"


# ---------------------------------------------------------------- seeds


def finger_records() -> list[list[bytes]]:
    """ISO/IEC 19794-2 records of two synthetic fingers, three impressions each (simulator and extractor)."""
    from biometrics.fingerprint import extract
    from biometrics.fingerprint.iso19794_2 import encode
    from simulators.fingers import FingerGenerator

    generator = FingerGenerator(seed=1)
    out = []
    for finger_id in range(2):
        finger = generator.finger(finger_id)
        out.append([encode(extract(imp.image, imp.dpi)) for imp in (finger.impression(s) for s in range(3))])
    return out


def face_record(rng: random.Random, person: list[float], noise: float = 0.3) -> bytes:
    model, dim = next(iter(MODELS.items()))
    v = [p + noise * rng.gauss(0, 1) / math.sqrt(dim) for p in person]
    norm = math.sqrt(sum(x * x for x in v))
    return encode_face(model, [x / norm for x in v])


def random_person(rng: random.Random) -> list[float]:
    dim = next(iter(MODELS.values()))
    v = [rng.gauss(0, 1) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def csr_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A request as a careful client makes it: a name, a SAN, a challenge password."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "capture-agent")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("kiosk.example")]), critical=False)
        .add_attribute(AttributeOID.CHALLENGE_PASSWORD, b"pw")
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def mutated_csr(rng: random.Random) -> tuple[bytes, ec.EllipticCurvePrivateKey, list[str]]:
    """A P-256 request with one part of its CertificationRequestInfo replaced and signed again, or bytes flipped;
    and its key (a mutation may leave a good request: the renewal then goes on with the new certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = csr_der(key)
    if rng.random() < 0.3:
        return _mutate_bytes(rng, der), key, ["csr bytes"]
    parts = _children(x509.load_der_x509_csr(der).tbs_certrequest_bytes)
    index = rng.randrange(4)
    choices = [
        lambda: _tlv(0x02, bytes([rng.randrange(256)])),
        lambda: _tlv(0x30, _tlv(0x31, _tlv(0x30, bytes.fromhex("0603550403") + _tlv(
            rng.choice([0x0C, 0x13, 0x16, 0x1E, 0x1C, 0x02, 0x04, 0x30]), _mutate_bytes(rng, b"kiosk-1"))))),
        lambda: _tlv(0xA0, _mutate_bytes(rng, parts[3][2:])),
        lambda: _mutate_bytes(rng, parts[index]),
    ]
    parts[index] = rng.choice(choices)()
    info = _tlv(0x30, b"".join(parts))
    signature = key.sign(info, ec.ECDSA(hashes.SHA256()))
    algorithm = _tlv(0x30, bytes.fromhex("06082a8648ce3d040302"))
    return _tlv(0x30, info + algorithm + _tlv(0x03, b"\x00" + signature)), key, [f"csr part {index}"]


# ---------------------------------------------------------------- the session


@dataclass
class Finding:
    kind: str  # "status" or "log"
    endpoint: str
    status: int | None
    mutations: list[str]
    answer: str
    log: list[str]
    body_b64: str
    body_len: int


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    problems: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    helper_requests: int = 0
    transport_errors: Counter[str] = field(default_factory=Counter)
    transport_samples: list[dict[str, Any]] = field(default_factory=list)
    findings: dict[str, list[Finding]] = field(default_factory=lambda: defaultdict(list))
    counts: Counter[str] = field(default_factory=Counter)


def _problem_type(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("type", "")).rsplit("/", 1)[-1]
    except (ValueError, AttributeError):
        return answer.text[:60]


def _what_failed(logged: list[str]) -> str:
    """What a finding's log says failed, without what varies (time, ids): the event and the exception's last line."""
    if not logged:
        return ""
    try:
        record = json.loads(logged[0])
    except ValueError:
        return logged[0][-200:]
    if not isinstance(record, dict):
        return logged[0][-200:]
    last = str(record.get("exception", "")).strip().splitlines()[-1:] or [""]
    return f"{record.get('event')}: {last[0][:200]}"


def client_context(ca: Path, cert: Path | None, key: Path | None, password: bytes | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key), password=password)
    return ctx


def new_client(ctx: ssl.SSLContext) -> httpx.AsyncClient:
    return httpx.AsyncClient(http2=True, http1=False, verify=ctx, trust_env=False, timeout=60.0)


class Fuzzer:
    def __init__(self, verifier: LocalVerifier, work: Path, rng: random.Random) -> None:
        self.verifier, self.work, self.rng = verifier, work, rng
        self.tally = Tally()
        self.log_offset = verifier.log_path.stat().st_size
        self.last_case: dict[str, Any] = {}
        self.last_body = b""
        self.used_keys: list[str] = []

    async def setup(self) -> None:
        v = self.verifier
        _, identity = await provision_device(v, self.work / "device", "fuzz-1")
        _, self.est_identity = await provision_device(v, self.work / "device-est", "fuzz-est")
        self.key = identity.private_key()
        ca = v.pki_dir / "ca.pem"
        self.client = new_client(client_context(ca, identity.cert_path, identity.key_path, identity.passphrase))
        est = self.est_identity
        self.est_key = est.private_key()
        self.est_client = new_client(client_context(ca, est.cert_path, est.key_path, est.passphrase))
        self.anonymous_ctx = client_context(ca, None, None)
        self.token = v.new_token("fuzz-new")
        self.fingers = finger_records()
        self.person = random_person(self.rng)
        self.chain = (0, GENESIS)
        self.subjects = 0
        # The seeds must be accepted as they are: else the fuzzing would only test the first refusal.
        baseline = {
            "enroll finger": (await self.send_seed(endpoints.enrollments_path("alice"), self.finger_body(0, 2)), 201),
            "enroll face": (await self.send_seed(endpoints.enrollments_path("fay"), self.face_body(2)), 201),
            "verify finger": (await self.send_seed(endpoints.VERIFICATIONS,
                                                   {"subject": "alice", **self.finger_body(0, 1, 2)}), 200),
            "identify finger": (await self.send_seed(endpoints.IDENTIFICATIONS, self.finger_body(0, 1, 2)), 200),
            "verify face": (await self.send_seed(endpoints.VERIFICATIONS, {"subject": "fay", **self.face_body(1)}),
                            200),
        }
        wrong = {name: status for name, (status, wanted) in baseline.items() if status != wanted}
        if wrong:
            raise SystemExit(f"the seed requests were not accepted ({wrong}): fix the seeds before fuzzing")

    def finger_body(self, finger: int, count: int, first: int = 0) -> dict[str, Any]:
        return {"templates": [wire_template(r) for r in self.fingers[finger][first:first + count]]}

    def face_body(self, count: int) -> dict[str, Any]:
        return {"faces": wire_faces([face_record(self.rng, self.person) for _ in range(count)])}

    async def nonce(self) -> str:
        """A fresh nonce; a connection the previous request broke is noted (with that request) and replaced."""
        for _ in range(3):
            self.tally.helper_requests += 1
            try:
                answer = await self.client.post(self.url(endpoints.CHALLENGES), json={},
                                                headers={"idempotency-key": secrets.token_hex(8)})
            except httpx.HTTPError as exc:
                self.transport_error("nonce", exc)
                continue
            if answer.status_code == 201 or answer.status_code == 200:
                return str(answer.json()["nonce"])
            raise SystemExit(f"no nonce: {answer.status_code} {answer.text[:300]}")
        raise SystemExit("no nonce after three tries: see the transport errors")

    def transport_error(self, kind: str, exc: Exception, case: dict[str, Any] | None = None) -> None:
        """A failed exchange: counted, with the request (``case``) and the one sent just before it (which may
        have broken the connection)."""
        self.tally.transport_errors[f"{kind}: {type(exc).__name__}: {str(exc)[:100]}"] += 1
        if len(self.tally.transport_samples) < 20:
            self.tally.transport_samples.append({"during": kind, "error": f"{type(exc).__name__}: {str(exc)[:300]}",
                                                 "request": case, "previous": self.last_case})
        if self.verifier.process is not None and self.verifier.process.poll() is not None:
            raise SystemExit(f"the verifier exited ({self.verifier.process.returncode}) during a {kind} request")

    def url(self, path: str) -> str:
        return self.verifier.url + path

    async def send_seed(self, path: str, fields: dict[str, Any]) -> int:
        nonce = await self.nonce()
        body = {"nonce": nonce, **fields}
        if "faces" in body:
            body["liveness"] = wire_liveness(challenge_for(nonce.encode("ascii")).steps)
        signed = sign_request(self.key, "POST", path, body)
        self.tally.helper_requests += 1
        answer = await self.client.post(self.url(path), content=json.dumps(signed).encode(),
                                        headers={"idempotency-key": secrets.token_hex(8),
                                                 "content-type": "application/json"})
        return answer.status_code

    # ---- one case per endpoint kind

    def seed_fields(self, kind: str) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        finger = rng.randrange(2)
        if kind == "enroll":
            self.subjects += 1
            subject = rng.choice(["alice", "fay", f"s-{self.subjects}"])
            fields = self.finger_body(finger, 2) if rng.random() < 0.6 else self.face_body(2)
            if rng.random() < 0.2:
                fields["group"] = "staff"
            return endpoints.enrollments_path(subject), fields
        if kind == "verify":
            if rng.random() < 0.6:
                return endpoints.VERIFICATIONS, {"subject": "alice", **self.finger_body(finger, 1, rng.randrange(3))}
            return endpoints.VERIFICATIONS, {"subject": "fay", **self.face_body(1)}
        if kind == "identify":
            return endpoints.IDENTIFICATIONS, (self.finger_body(finger, 1, 2) if rng.random() < 0.6
                                               else self.face_body(1))
        reader = {"driver": "virtual_device", "device": "usb0"}
        print_hash = secrets.token_hex(32)
        if kind == "sensor-enroll":
            return endpoints.SENSOR_ENROLLMENTS, {"subject": f"m-{rng.randrange(5)}", "reader": reader,
                                                  "print_hash": print_hash}
        return endpoints.SENSOR_VERIFICATIONS, {"subject": f"m-{rng.randrange(5)}", "reader": reader,
                                                "print_hash": print_hash, "result": rng.choice(["match", "no_match"])}

    async def signed_case(self, kind: str) -> None:
        path, fields = self.seed_fields(kind)
        nonce = await self.nonce()
        body: dict[str, Any] = {"nonce": nonce, **fields}
        if "faces" in body:
            body["liveness"] = wire_liveness(challenge_for(nonce.encode("ascii")).steps)
        tree, done = mutate(self.rng, body)
        ascii_only = self.rng.random() < 0.5
        raw = to_bytes(dump(tree, ascii_only))
        if self.rng.random() < 0.85:  # signed again, over what the verifier will read: the mutation is judged
            try:
                parsed = loads(raw)
            except WireError:
                parsed = None
            if isinstance(parsed, dict):
                parsed.pop(SIGNATURE_FIELD, None)
                try:
                    signed: Any = sign_request(self.key, "POST", path, parsed)
                except (TypeError, ValueError):
                    signed = parsed
                if self.rng.random() < 0.1 and isinstance(signed.get(SIGNATURE_FIELD), str):
                    signed[SIGNATURE_FIELD] = self.bad_signature(signed[SIGNATURE_FIELD])
                    done.append("signature")
                raw = to_bytes(dump(signed, ascii_only))
                done.append("re-signed")
        await self.send(self.client, "POST", path, kind, raw, done)

    def bad_signature(self, good: str) -> Any:
        """Base64 that is not, the DER of the signature damaged, or another type."""
        pick = self.rng.randrange(3)
        if pick == 0:
            return self.rng.choice(BAD_B64 + ODD_TEXT)
        if pick == 1:
            return base64.b64encode(_mutate_bytes(self.rng, base64.b64decode(good))).decode("ascii")
        return _random_value(self.rng)

    async def challenge_case(self) -> None:
        body = self.rng.choice([{}, {"operation": "verify", "subject": "alice"}, {"operation": "identify"},
                                {"operation": "enroll", "subject": "bob", "group": "staff"}])
        tree, done = mutate(self.rng, body)
        await self.send(self.client, "POST", endpoints.CHALLENGES, "challenge",
                        to_bytes(dump(tree, self.rng.random() < 0.5)), done)

    async def events_case(self) -> None:
        seq, prev = self.chain
        events = []
        for _ in range(self.rng.randrange(1, 4)):
            seq += 1
            event = {"id": secrets.token_hex(8), "seq": seq, "prev": prev, "type": "fuzz_event",
                     "time": dt.datetime.now(dt.UTC).isoformat(), "data": {"n": seq, "what": "fuzz"}}
            event["hash"] = prev = event_hash(event)
            events.append(event)
        tree, done = mutate(self.rng, {"events": events})
        ascii_only = self.rng.random() < 0.5
        raw = to_bytes(dump(tree, ascii_only))
        if self.rng.random() < 0.7:  # the chain made whole again: the mutated fields are judged, not the hash
            try:
                parsed = loads(raw)
            except WireError:
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("events"), list):
                for event in parsed["events"]:
                    if isinstance(event, dict):
                        with contextlib.suppress(Exception):  # what it mutated may not hash on this side
                            event["hash"] = event_hash(event)
                raw = to_bytes(dump(parsed, ascii_only))
                done.append("re-hashed")
        status = await self.send(self.client, "POST", endpoints.EVENTS, "events", raw, done)
        if status == 200:
            self.chain = (seq, prev)

    async def est_case(self, renew: bool) -> None:
        rng = self.rng
        key = None
        if rng.random() < 0.15:
            body = to_bytes(rng.choice(BAD_B64 + ODD_TEXT))
            done = ["est body text"]
        else:
            der, key, done = mutated_csr(rng)
            body = base64.b64encode(der)
            if rng.random() < 0.2:
                body = body[: rng.randrange(len(body) + 1)] + rng.choice([b"=", b"!", b"\n", b"\xc3\xa9", b" "])
                done.append("base64")
        headers = {"content-type": "application/pkcs10", "content-transfer-encoding": "base64",
                   "idempotency-key": secrets.token_hex(8)}
        if renew:
            answer = await self.send(self.est_client, "POST", endpoints.SIMPLEREENROLL, "est-renew", body, done,
                                     headers)
            if answer == 200 and key is not None:  # the mutation left a good request: renew on with its certificate
                self.tally.counts["est renewals that succeeded"] += 1
                await self.use_renewed(key)
        else:
            headers["authorization"] = f"Bearer {self.token}"
            # One connection per request: the verifier closes a connection without a certificate after its answer.
            async with new_client(self.anonymous_ctx) as anonymous:
                answer = await self.send(anonymous, "POST", endpoints.SIMPLEENROLL, "est-enroll", body, done, headers)
            if answer == 200:
                self.tally.counts["est enrollments that succeeded"] += 1
                self.token = self.verifier.new_token(f"fuzz-new-{self.tally.counts['est enrollments that succeeded']}")

    def mutated_headers(self, headers: dict[str, Any], done: list[str]) -> tuple[dict[str, Any], list[str]]:
        """Now and then an Idempotency-Key used before (with another body), or one of an odd shape."""
        rng = self.rng
        key = headers.get("idempotency-key")
        if key is not None and self.used_keys and rng.random() < 0.05:
            headers = {**headers, "idempotency-key": rng.choice(self.used_keys)}
            done = [*done, "idempotency key reused"]
        elif key is not None and rng.random() < 0.03:
            odd: Any = rng.choice(["", " ", "k" * 201, "k" * 200, "k\tk", "\u00e9".encode("latin-1"),
                                   b"\xff\xfe", "../x", "k" * 100_000])
            headers = {**headers, "idempotency-key": odd}
            done = [*done, "idempotency key odd"]
        elif rng.random() < 0.03:
            headers = {**headers, "content-type": rng.choice(["text/plain", "application/json; charset=utf-16",
                                                              "", "application/x-www-form-urlencoded"])}
            done = [*done, "content type"]
        if isinstance(headers.get("idempotency-key"), str) and len(self.used_keys) < 64:
            self.used_keys.append(headers["idempotency-key"])
        return headers, done

    async def use_renewed(self, key: ec.EllipticCurvePrivateKey) -> None:
        """The EST device's new certificate (from the last answer) and key, for its next renewals."""
        cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(self.last_body))[0]
        folder = self.work / "device-est-renewed"
        folder.mkdir(exist_ok=True)
        (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / "key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        await self.est_client.aclose()
        self.est_client = new_client(client_context(self.verifier.pki_dir / "ca.pem", folder / "cert.pem",
                                                    folder / "key.pem"))

    async def send(self, client: httpx.AsyncClient, method: str, path: str, kind: str, body: bytes,
                   done: list[str], headers: dict[str, str] | None = None) -> int | None:
        tally = self.tally
        tally.sent[kind] += 1
        headers = headers or {"idempotency-key": secrets.token_hex(8), "content-type": "application/json"}
        headers, done = self.mutated_headers(headers, done)
        try:
            try:
                answer = await client.request(method, self.url(path), content=body, headers=headers)
            except httpx.RemoteProtocolError:
                # A GOAWAY (hypercorn ends a connection after its 1000th request) or the connection closing
                # under it: sent again on a new connection, once, as the agent does.
                tally.counts["requests sent again after a GOAWAY"] += 1
                answer = await client.request(method, self.url(path), content=body, headers=headers)
        except httpx.HTTPError as exc:
            tally.statuses[kind]["transport error"] += 1
            case = {"kind": kind, "mutations": done, "body_len": len(body), "status": None}
            self.transport_error(kind, exc, case)
            self.last_case = case
            return None
        tally.statuses[kind][str(answer.status_code)] += 1
        if answer.headers.get("content-type", "").startswith("application/problem+json"):
            try:
                tally.problems[kind][str(answer.json().get("type", "")).rsplit("/", 1)[-1]] += 1
            except ValueError:
                tally.problems[kind]["(not JSON)"] += 1
        self.last_body = answer.content
        self.last_case = {"kind": kind, "mutations": done, "body_len": len(body), "status": answer.status_code}
        logged = self.new_log_errors()
        if answer.status_code >= 500 or logged:
            signature = f"{kind} {answer.status_code} {_problem_type(answer)} {_what_failed(logged)}"
            samples = tally.findings[signature]
            tally.counts[signature] += 1
            if len(samples) < MAX_SAMPLES:
                samples.append(Finding("status" if answer.status_code >= 500 else "log", path, answer.status_code,
                                       done, answer.text[:2000], [line[:4000] for line in logged[:5]],
                                       base64.b64encode(body[:MAX_BODY_IN_REPORT]).decode("ascii"), len(body)))
        return answer.status_code

    def new_log_errors(self) -> list[str]:
        """Log lines written since the last look that hold a traceback or are of level error or above."""
        with open(self.verifier.log_path, "rb") as log:
            log.seek(self.log_offset)
            data = log.read()
        self.log_offset += len(data)
        found = []
        for line in data.decode("utf-8", "replace").splitlines():
            if "Traceback" in line or '"request_failed"' in line:
                found.append(line)
                continue
            try:
                record = json.loads(line)
            except ValueError:
                if line.strip():
                    found.append(line)  # not one of its JSON lines: a raw stderr write
                continue
            if isinstance(record, dict) and (record.get("level") in ("error", "critical") or "exception" in record):
                found.append(line)
        return found

    async def get_case(self) -> None:
        """The endpoints without a body (health, cacerts): with a query string, or a body nobody asked for."""
        rng = self.rng
        path = rng.choice([endpoints.HEALTH, endpoints.CACERTS])
        query = rng.choice(["", "?a=1", "?" + "x" * 5000, "?%ff%fe", "?nonce=\u00e9"])
        body = to_bytes(dump(_random_value(rng), True)) if rng.random() < 0.3 else b""
        done = [f"query {len(query)}"] + (["body"] if body else [])
        client = self.client if path == endpoints.HEALTH else self.est_client
        await self.send(client, "GET", path + query, "get", body, done)

    async def run(self, seconds: float) -> None:
        kinds = ["enroll", "verify", "identify", "sensor-enroll", "sensor-verify"]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pick = self.rng.randrange(10)
            if self.rng.random() < 0.03:
                await self.get_case()
            elif pick < 5:
                await self.signed_case(self.rng.choice(kinds))
            elif pick < 6:
                await self.challenge_case()
            elif pick < 8:
                await self.events_case()
            else:
                await self.est_case(renew=self.rng.random() < 0.5)

    async def close(self) -> None:
        for client in (self.client, self.est_client):
            await client.aclose()


def report_of(fuzzer: Fuzzer, seed: int, seconds: float, started: float) -> dict[str, Any]:
    tally = fuzzer.tally
    return {
        "seed": seed,
        "seconds": seconds,
        "elapsed_s": round(time.monotonic() - started, 1),
        "fuzzed_requests": sum(tally.sent.values()),
        "helper_requests": tally.helper_requests,
        "by_endpoint": {kind: {"sent": tally.sent[kind], "statuses": dict(sorted(tally.statuses[kind].items())),
                               "problems": dict(tally.problems[kind].most_common())}
                        for kind in sorted(tally.sent)},
        "transport_errors": dict(tally.transport_errors),
        "transport_error_samples": tally.transport_samples,
        "notes": {k: v for k, v in tally.counts.items() if k.startswith(("est ", "requests sent again"))},
        "findings": [
            {"signature": signature, "count": tally.counts[signature], "samples": [vars(s) for s in samples]}
            for signature, samples in tally.findings.items()
        ],
    }


async def main_async(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    settings = work / "verifier-settings.toml"
    settings.write_text(SETTINGS)
    rng = random.Random(args.seed)
    with LocalVerifier.running(work / "pki", extra_args=("--config", str(settings))) as verifier:
        fuzzer = Fuzzer(verifier, work, rng)
        started = time.monotonic()
        try:
            await fuzzer.setup()
            await fuzzer.run(args.seconds)
        finally:
            await fuzzer.close()
        fuzzer.new_log_errors()  # the last lines, after the last answer
        return report_of(fuzzer, args.seed, args.seconds, started)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM ends the run as Ctrl-C does: the verifier is stopped and the state folder removed."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="the random seed of the mutations (default 1)")
    parser.add_argument("--seconds", type=float, default=180.0, help="how long to fuzz (default 180)")
    parser.add_argument("--report", type=Path, help="where to write the JSON report (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the verifier's state folder (its development PKI's keys included)")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be more than 0")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    path = args.report or Path(tempfile.mkdtemp(prefix=f"fuzz-verifier-report-{args.seed}-")) / "report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    # The verifier's state (a development PKI with its keys): removed at the end unless --keep; its log is
    # copied next to the report, since a finding is explained there.
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-verifier-state-{args.seed}-"))
    try:
        report = asyncio.run(main_async(args, work))
    except KeyboardInterrupt:
        print("stopped: no report", file=sys.stderr)
        return 130
    finally:
        log = work / "pki" / "verifier.log"
        if log.exists():
            shutil.copyfile(log, path.with_name(path.stem + ".verifier.log"))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["verifier_log"] = str(path.with_name(path.stem + ".verifier.log"))
    path.write_text(json.dumps(report, indent=2, ensure_ascii=True))
    found = len(report["findings"])
    print(json.dumps({"report": str(path), "fuzzed_requests": report["fuzzed_requests"],
                      "helper_requests": report["helper_requests"], "findings": found}))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
