"""Every committed fuzz input (fuzz/corpus/<harness>/) goes through its harness in-process, without atheris.

A harness returns quietly when the project answers its input with its own typed
error; anything else escaping is a finding. The corpus holds seeds and the
inputs of findings since fixed, so this is the regression test of each fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from agent.errors import ProvisioningError
from agent.est import parse_pkcs7_certs
from agent.identity import certificate_fingerprint, trusted_under
from agent.provision import select_ca
from fuzz import HARNESSES
from fuzz import csr as fuzz_csr
from fuzz import est as fuzz_est
from fuzz.common import CORPUS, FindingRecorder, signature
from fuzz.replay import close, harness, inputs, replay
from protocol.problems import problem_type
from verifier.pki import MAX_CSR_DER, CSRError, parse_csr

CASES = [(name, path) for name in HARNESSES for path in inputs([CORPUS / name])]


@pytest.fixture(scope="module", autouse=True)
def _harnesses_closed() -> Iterator[None]:
    """What the harnesses started for their inputs (servers, loop threads) ends with this module's tests."""
    yield
    for name in HARNESSES:
        close(name)


def test_every_harness_has_seeds_and_every_corpus_folder_a_harness() -> None:
    folders = {p.name for p in CORPUS.iterdir() if p.is_dir()}
    assert folders == set(HARNESSES)
    assert all(any((CORPUS / name).iterdir()) for name in HARNESSES)


# The EST findings are certificates a fuzzer mangled: cryptography warns, loading them, of what a later release
# will refuse (a serial number that is not positive, PKCS#7 in BER); the agent refuses them either way.
@pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")
@pytest.mark.filterwarnings("ignore:PKCS#7 certificates could not be parsed as DER")
@pytest.mark.parametrize(("name", "path"), CASES, ids=[f"{n}/{p.name}" for n, p in CASES])
def test_corpus_input_gives_no_finding(name: str, path: Path) -> None:
    exc = replay(harness(name), path)
    assert exc is None, f"{path.relative_to(CORPUS.parent.parent)}: {signature(exc)}: {exc}"


def test_keep_going_records_each_distinct_finding_once_where_the_project_raised_it(tmp_path: Path) -> None:
    """FUZZ_KEEP_GOING's recorder: one file pair per (exception type, innermost project frame), whatever the input."""

    def unknown_slug(data: bytes) -> None:
        problem_type(data.decode())  # a KeyError from inside protocol/problems.py for any unregistered slug

    recorder = FindingRecorder("example", tmp_path)
    for data in (b"no-such-slug", b"another"):
        exc = replay(unknown_slug, _written(tmp_path / "in", data))
        assert exc is not None
        recorder.record(data, exc)
    assert len(list(tmp_path.glob("*.bin"))) == 1
    (text,) = tmp_path.glob("*.txt")
    first = text.read_text().splitlines()[0]
    assert first.startswith("builtins.KeyError @ protocol/problems.py:")
    assert first.endswith(" in problem_type")
    assert FindingRecorder("example", tmp_path).seen == {first}  # a rerun does not write it again


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_finding_re_raised_from_another_thread_is_named_by_its_original(tmp_path: Path) -> None:
    """The local API harness re-raises what escaped in the server's thread from it: the original names the finding."""

    class Escaped(Exception):
        pass

    def escaped(data: bytes) -> None:
        try:
            problem_type(data.decode())
        except KeyError as exc:
            raise Escaped("escaped the handler") from exc

    exc = replay(escaped, _written(tmp_path / "in", b"no-such-slug"))
    assert exc is not None
    assert signature(exc).startswith("Escaped<-builtins.KeyError @ protocol/problems.py:")


@pytest.mark.filterwarnings("ignore:Attribute's length must be")
def test_the_csr_build_seeds_build_and_reach_each_of_parse_csrs_checks() -> None:
    """fuzz/make_corpus.py writes the build mode's layout as fuzz/csr.py reads it: each seed builds, and together
    they reach every check of parse_csr and the issuing after it (a drift of the layout would end at one)."""
    reached = set()
    for path in inputs([CORPUS / "csr"]):
        data = path.read_bytes()
        if not data[0] & 1:
            continue
        request = fuzz_csr.build(data[1:])
        assert request is not None, f"{path.name} does not build"
        try:
            parse_csr(request)
        except CSRError as exc:
            reached.add(str(exc).split(":")[0].split(" (")[0])
        else:
            reached.add("accepted")
    assert reached == {
        "accepted",
        "the body is not a DER PKCS#10 certificate request",
        f"the certificate request is larger than {MAX_CSR_DER} bytes",
        "the certificate request's version is 3, not 0",
        "only EC P-256 keys are accepted",
        "the certificate request's subject cannot be read",
        "the certificate request's extension request cannot be read",
        "the certificate request's public key is not a valid key",
        "the certificate request's signature does not verify",
    }


def _says_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


@pytest.mark.filterwarnings("ignore:PKCS#7 certificates could not be parsed as DER")
def test_the_est_build_seeds_build_a_chain_a_foreign_anchor_and_a_forged_subordinate() -> None:
    """The est build seeds make answers the agent reads: a chain trusted below the confirmed root, a CA confirmed
    that the answer lacks, a subordinate whose signature is not its issuer's (left out), an empty bundle."""
    trusted_counts, refused = [], []
    for path in inputs([CORPUS / "est"]):
        data = path.read_bytes()
        if data[0] % 8 != 4:
            continue
        body, anchor = fuzz_est.build(data[1:])
        try:
            certs = parse_pkcs7_certs(body, "cacerts")
        except ProvisioningError as exc:
            refused.append(exc.message)
            continue
        confirmed = certs[anchor] if anchor < len(certs) else fuzz_est._test_ca().cert
        try:
            ca = select_ca(certs, certificate_fingerprint(confirmed))
        except ProvisioningError as exc:
            refused.append(exc.message)
            continue
        trusted_counts.append((len(trusted_under(ca, certs)), len({cert for cert in certs if _says_ca(cert)})))
    assert len(refused) == 2
    assert any("holds no certificate" in message for message in refused)
    assert any("does not have the fingerprint you gave" in message for message in refused)
    assert (2, 2) in trusted_counts, "a root and its subordinate: both trusted"
    assert (1, 2) in trusted_counts, "a root and a subordinate it did not sign: the root alone"


def test_closing_a_harness_ends_the_servers_its_inputs_started() -> None:
    """The camera and local-API harnesses kept their server threads for the life of the process, so a replay left
    a listening socket and a running event loop behind in the test process, for every later test of that worker."""
    import socket
    import threading

    from fuzz import camera_http, localapi

    for name in ("camera_http", "localapi"):
        assert replay(harness(name), next(inputs([CORPUS / name]))) is None
    assert camera_http._server is not None and localapi._running is not None
    port, api_dir = camera_http._server.port, Path(localapi._running.dir.name)
    close("camera_http")
    close("localapi")
    assert not [t.name for t in threading.enumerate() if t.name in ("fuzz-camera", "fuzz-localapi")]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not api_dir.exists()
    assert replay(harness("camera_http"), next(inputs([CORPUS / "camera_http"]))) is None  # started again
    close("camera_http")
