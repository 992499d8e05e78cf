"""The shared contract (protocol/): one registry, one canonical form, strict parsing, both sides using it."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

import agent.errors
from protocol import endpoints
from protocol.messages import ChallengeRequest, Decision
from protocol.problems import REGISTRY
from protocol.signing import SignatureError, canonical_request, check_signature, sign_request
from protocol.wire import MAX_DEPTH, NotBase64Error, WireError, b64decode_strict, canonical_json, loads

ROOT = Path(__file__).resolve().parents[1]


def test_every_problem_type_has_a_distinct_slug_and_an_agent_error_class() -> None:
    assert len({p.slug for p in REGISTRY.values()}) == len(REGISTRY)
    assert {"nonce-expired", "nonce-used", "nonce-unknown"} <= REGISTRY.keys()
    for entry in REGISTRY.values():
        cls = getattr(agent.errors, entry.error)
        assert issubclass(cls, agent.errors.VerifierError), entry
        assert agent.errors.problem_error_class(entry.slug) is cls
        assert entry.fix and 400 <= entry.status < 600
    # The three nonce kinds are three classes: the agent retries one of them.
    kinds = {agent.errors.problem_error_class(f"nonce-{k}") for k in ("expired", "used", "unknown")}
    assert len(kinds) == 3


def test_every_slug_the_verifier_answers_is_registered() -> None:
    """A Problem with an unregistered slug would be a 500 at run time: catch it at build time."""
    used: set[str] = set()
    for source in (ROOT / "verifier").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Problem" and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant):
                    used.add(first.value)
                elif isinstance(first, ast.IfExp):  # "a" if x else "b"
                    used |= {b.value for b in (first.body, first.orelse) if isinstance(b, ast.Constant)}
                elif isinstance(first, ast.JoinedStr):  # f"nonce-{exc.kind}"
                    prefix = "".join(v.value for v in first.values if isinstance(v, ast.Constant))
                    used |= {s for s in REGISTRY if s.startswith(prefix)}
    assert used, "no Problem(...) found: the scan is broken"
    assert used <= REGISTRY.keys(), used - REGISTRY.keys()


def test_neither_side_writes_the_protocol_again() -> None:
    """Canonical JSON, the template format name, the cipher string live only in protocol/."""
    for package in ("agent", "verifier", "bench"):
        for source in (ROOT / package).rglob("*.py"):
            text = source.read_text()
            assert "sort_keys=True" not in text, source
            assert '"iso19794-2:2005"' not in text, source
            assert "ECDHE+AESGCM" not in text, source


def test_canonical_request_bytes_are_fixed() -> None:
    body = {"templates": [], "nonce": "n1", "subject": "ané", "signature": "ignored"}
    assert canonical_request("post", "/v1/verifications", body) == (
        b'POST /v1/verifications\n{"nonce":"n1","subject":"an\\u00e9","templates":[]}'
    )
    assert canonical_json({"b": 1, "a": [1, {"d": None, "c": True}]}) == b'{"a":[1,{"c":true,"d":null}],"b":1}'


def test_a_signature_covers_path_and_body() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signed = sign_request(key, "POST", "/v1/verifications", {"nonce": "n", "subject": "alice"})
    check_signature(key.public_key(), "POST", "/v1/verifications", signed)
    with pytest.raises(SignatureError):
        check_signature(key.public_key(), "POST", "/v1/verifications", {**signed, "subject": "bob"})
    with pytest.raises(SignatureError):
        check_signature(key.public_key(), "POST", "/v1/identifications", signed)
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SignatureError):
        check_signature(other.public_key(), "POST", "/v1/verifications", signed)


@pytest.mark.parametrize("text", ["AA\u00e9A", "\u2013", "AAAA\u2013AAA=", "not base64!", "AAA", b"AA\xe9A"])
def test_strict_base64_refuses_non_ascii_with_its_typed_error(text: str | bytes) -> None:
    """base64.b64decode(validate=True) raises a bare ValueError (not binascii.Error) for a non-ASCII str."""
    with pytest.raises(NotBase64Error, match="not base64"):
        b64decode_strict(text)
    assert b64decode_strict("AAEC") == b64decode_strict(b"AAEC") == b"\x00\x01\x02"


def test_a_non_ascii_signature_is_a_signature_error() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    body = {"nonce": "n", "signature": "MEUC\u2013IQ=="}
    with pytest.raises(SignatureError, match="not base64"):
        check_signature(key.public_key(), "POST", endpoints.VERIFICATIONS, body)


def test_strict_json_refuses_duplicates_and_depth_without_recursion_error() -> None:
    with pytest.raises(WireError, match="appears twice"):
        loads(b'{"a": 1, "b": {"c": 1, "c": 2}}')
    long_key = "k" * 60_000
    with pytest.raises(WireError, match="appears twice") as twice:
        loads(f'{{"{long_key}": 1, "{long_key}": 2}}'.encode())
    assert len(str(twice.value)) < 200, "a message (a 400's detail) does not repeat a 60 KB key"
    with pytest.raises(WireError, match="nested deeper"):
        loads(b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(WireError, match="nested deeper"):
        loads(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    assert loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    assert loads('{"brackets": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')  # inside a string: not nesting
    with pytest.raises(WireError, match="not JSON"):
        loads(b"{'single': 'quotes'}")


@pytest.mark.parametrize("body", [b'{"nonce": "\\ud800"}', b'["ok", {"k": ["\\uDFFF"]}]', b'{"\\udc00": 1}',
                                  b'"\\ud83d"', '{"a": "\ud800"}'])
def test_strict_json_refuses_a_lone_surrogate_that_no_store_or_hash_could_encode(body: bytes | str) -> None:
    """Valid JSON, not Unicode text: refused here, typed, rather than a UnicodeEncodeError wherever it is used."""
    with pytest.raises(WireError, match="surrogate"):
        loads(body)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ('{"a": 1}'.encode("utf-16-le"), "NUL bytes"),  # json.loads(bytes) would guess UTF-16 and parse it
        ('{"a": 1}'.encode("utf-16-be"), "NUL bytes"),
        ('{"a": 1}'.encode("utf-32-le"), "NUL bytes"),
        ('{"a": 1}'.encode("utf-16"), "UTF-16 byte order mark"),
        ('{"a": 1}'.encode("utf-32"), "UTF-32 byte order mark"),
        (b'\xef\xbb\xbf{"a": 1}', "UTF-8 byte order mark"),
        ('\ufeff{"a": 1}', "byte order mark"),
        (b'{"a": "\xed\xa0\x80"}', "surrogate as raw bytes"),  # CESU-8 U+D800: json.loads passes it through
        (b'{"a": "\xed\xa0\xbd\xed\xb8\x80"}', "surrogate as raw bytes"),  # CESU-8 pair: still not UTF-8
        (b'{"a": "\xff"}', "not UTF-8"),
        (b'{"a": "\xc0\xaf"}', "not UTF-8"),  # overlong "/"
        (b'{"a": "caf\xe9"}', "not UTF-8"),  # Latin-1
    ],
)
def test_strict_json_reads_bytes_as_utf8_only(body: bytes | str, said: str) -> None:
    """Two readers of one signed body must read one text: no guessing of UTF-16/32, no BOM, no CESU-8."""
    with pytest.raises(WireError, match=said) as refused:
        loads(body)
    assert "send the JSON as UTF-8" in str(refused.value)


def test_strict_json_reads_every_utf8_character() -> None:
    """The refusals above are not of non-ASCII text: 2-, 3- and 4-byte UTF-8 and U+D7FF / U+E000 around the gap."""
    text = {"k": "caf\u00e9 \u2013 \U0001f600 \ud7ff\ue000"}
    assert loads(json.dumps(text, ensure_ascii=False).encode("utf-8")) == text
    assert loads(canonical_json(text)) == text


def test_strict_json_keeps_surrogate_pairs_and_escaped_backslashes() -> None:
    assert loads(b'{"smile": "\\ud83d\\ude00"}') == {"smile": "\U0001f600"}  # a pair is one character
    assert loads(b'"\\\\ud800"') == "\\ud800"  # a backslash, then the letters: text, not an escape


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"operation": "delete"}, "operation must be"),
        ({"operation": "verify"}, "needs a subject"),
        ({"operation": "identify", "subject": "alice"}, "names no subject"),
        ({"operation": "verify", "subject": "../etc"}, "needs a subject"),
        ({"operation": "verify", "subject": "alice", "group": "staff"}, "only for enroll"),
        ({"operation": "verify", "subject": "alice", "extra": 1}, "unknown fields"),
    ],
)
def test_a_challenge_request_is_checked(body, said) -> None:
    with pytest.raises(WireError, match=said):
        ChallengeRequest.from_body(body)


def test_a_decision_is_parsed_field_by_field() -> None:
    ok = Decision.from_json({"subject": "a", "decision": "accept", "score": 0.9, "threshold": 0.1, "token": "tok-XYZ",
                             "expires_in": 300})
    assert ok.accepted and "token" not in ok.public() and "tok-XYZ" not in repr(ok)
    with pytest.raises(WireError):
        Decision.from_json({"subject": "a", "decision": "maybe", "score": 0.9, "threshold": 0.1})
    with pytest.raises(WireError):
        Decision.from_json({"subject": "a", "decision": "accept", "score": "high", "threshold": 0.1})
    rejected = {"subject": "a", "decision": "reject", "score": 0.0, "threshold": 0.1}
    said = Decision.from_json({**rejected, "modality": "face"})
    assert said.modality == "face" and said.public()["modality"] == "face"
    assert "modality" not in ok.public()  # a verifier that does not say: nothing is made up
    with pytest.raises(WireError, match="modality"):
        Decision.from_json({**rejected, "modality": "iris"})


def test_paths_are_the_protocols() -> None:
    assert endpoints.enrollments_path("alice") == "/v1/subjects/alice/enrollments"
    assert endpoints.enrollment_subject("/v1/subjects/alice/enrollments") == "alice"
    assert endpoints.enrollment_subject("/v1/subjects/a/b/enrollments") is None
    with pytest.raises(ValueError):
        endpoints.enrollments_path("../x")
    assert re.fullmatch(r"/v1/\w+", endpoints.CHALLENGES)


def test_protocol_imports_only_the_standard_library_and_cryptography() -> None:
    import sys

    allowed = set(sys.stdlib_module_names) | {"cryptography", "protocol", "__future__"}
    for source in (ROOT / "protocol").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            assert {n.split(".")[0] for n in names} <= allowed, (source.name, names)


def _policy_refusal(conn_path: Path) -> str:
    """What the verifier's access rules say to a malformed group name (a real sqlite file)."""
    import sqlite3

    from verifier.policy import AccessRules

    conn = sqlite3.connect(conn_path)
    try:
        with pytest.raises(ValueError) as refused:
            AccessRules(conn).set_groups("kiosk-1", ["night shift"])
    finally:
        conn.close()
    return str(refused.value)


def test_every_refusal_of_an_id_states_the_one_rule(tmp_path: Path) -> None:
    """Every place that refuses a malformed id says ``endpoints.ID_RULE``, not its own shorter wording of it.

    The wordings had drifted (some without "starting with a letter or digit", one with ". _ -"), so a person
    told the fix by one side read a different rule from the other.
    """
    from protocol.sensor import SensorEnrollmentRequest

    said: list[str] = []
    for body in ({"operation": "verify", "subject": "-ana"}, {"operation": "enroll", "subject": "ana", "group": "a b"}):
        with pytest.raises(WireError) as refused:
            ChallengeRequest.from_body(body)
        said.append(str(refused.value))
    reader = {"driver": "virtual_device", "device": "usb0"}
    for body in ({"subject": "ana smith", "reader": reader, "print_hash": "0" * 64},
                 {"subject": "ana", "group": "a/b", "reader": reader, "print_hash": "0" * 64}):
        with pytest.raises(WireError) as refused:
            SensorEnrollmentRequest.from_body(body)
        said.append(str(refused.value))
    with pytest.raises(ValueError) as refused_path:
        endpoints.enrollments_path("../ana")
    said += [str(refused_path.value), REGISTRY["bad-subject"].fix, REGISTRY["bad-group"].fix,
             _policy_refusal(tmp_path / "rules.db")]
    for text in said:
        assert endpoints.ID_RULE in text, text
