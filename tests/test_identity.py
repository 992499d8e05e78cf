"""The device identity on disk: encrypted key, private files, atomic replacement."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import random
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from agent.errors import CertificateDefect, IdentityError
from agent.identity import (
    CA_FILE,
    CERT_FILE,
    KEY_FILE,
    MAX_IDENTITY_FILE_BYTES,
    MAX_VERIFIER_FILE_BYTES,
    VERIFIER_FILE,
    IdentityStore,
    build_csr,
    generate_key,
    identity_problem,
    issued_by,
    normalise_fingerprint,
    read_in_full,
    spki_der,
    spki_sha256,
    trusted_under,
)
from agent.provision import describe_existing
from agent.renewal import renewal_time
from tests.conftest import P256_OID_DER, UNSUPPORTED_CURVE_OID_DER, TestCA, hostile_certificate

PASS = b"a-key-encryption-key-of-enough-length"


def test_identity_files_are_private_and_the_key_encrypted(tmp_path, ca) -> None:
    key, cert = ca.issue_key_and_cert(["kiosk-1"], client=True)
    store = IdentityStore(tmp_path / "state")
    identity = store.write(key, cert, [ca.cert], PASS)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    for path in identity.directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    pem = identity.key_path.read_bytes()
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in pem
    assert b"BEGIN PRIVATE KEY" not in pem and b"BEGIN EC PRIVATE KEY" not in pem
    assert identity.device_id == "kiosk-1"
    assert identity.private_key().public_key().public_numbers() == key.public_key().public_numbers()


def test_wrong_kek_is_a_clear_error(tmp_path, ca) -> None:
    key, cert = ca.issue_key_and_cert(["kiosk-1"], client=True)
    store = IdentityStore(tmp_path / "state")
    store.write(key, cert, [ca.cert], PASS)
    with pytest.raises(IdentityError) as info:
        store.load(b"another-kek-that-is-long-enough-too")
    assert "[keyring]" in info.value.fix


def test_a_certificate_for_another_key_is_refused(tmp_path, ca) -> None:
    _, cert = ca.issue_key_and_cert(["kiosk-1"], client=True)
    with pytest.raises(IdentityError, match="does not match the device key"):
        IdentityStore(tmp_path / "state").write(generate_key(), cert, [ca.cert], PASS)
    assert not IdentityStore(tmp_path / "state").exists()


def _ed25519_certificate(ca: TestCA) -> x509.Certificate:
    """A certificate of ``ca`` for an Ed25519 key: what a misconfigured PKI could answer simpleenroll with."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiosk-1")])
    return (
        TestCA._builder(subject, ed25519.Ed25519PrivateKey.generate().public_key(), days=30)
        .issuer_name(ca.cert.subject)
        .sign(ca.key, hashes.SHA256())
    )


def test_a_certificate_for_a_key_of_another_kind_is_refused_as_another_key(tmp_path, ca) -> None:
    """Found building EST answers for fuzz/est.py: an Ed25519 certificate raised AttributeError (no public numbers)."""
    with pytest.raises(IdentityError, match="does not match the device key"):
        IdentityStore(tmp_path / "state").write(generate_key(), _ed25519_certificate(ca), [ca.cert], PASS)
    assert not IdentityStore(tmp_path / "state").exists()


def test_a_stored_certificate_for_a_key_of_another_kind_is_an_identity_problem(tmp_path, ca) -> None:
    """device.pem replaced by a certificate for an Ed25519 key: the health check names it, it does not raise."""
    store = IdentityStore(tmp_path / "state")
    identity = store.write(*ca.issue_key_and_cert(["kiosk-1"], client=True), [ca.cert], PASS)
    identity.cert_path.write_bytes(_ed25519_certificate(ca).public_bytes(serialization.Encoding.PEM))
    problem = identity_problem(store.load(PASS))
    assert problem is not None and "does not match the certificate" in problem.message


def test_replacement_is_a_switch_of_one_link(tmp_path, ca) -> None:
    store = IdentityStore(tmp_path / "state")
    first = store.write(*ca.issue_key_and_cert(["kiosk-1"], client=True), [ca.cert], PASS)
    second = store.write(*ca.issue_key_and_cert(["kiosk-1"], client=True), [ca.cert], PASS)
    assert store.current.is_symlink()
    assert os.path.realpath(store.current) == str(second.directory)
    assert not first.directory.exists(), "the superseded identity folder is removed"
    assert store.load(PASS).serial_hex == second.serial_hex
    leftovers = [p.name for p in store.state_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_missing_identity_says_to_provision(tmp_path) -> None:
    with pytest.raises(IdentityError) as info:
        IdentityStore(tmp_path / "nothing").load(PASS)
    assert "capture-agent provision" in info.value.fix


# -- the verifier URL kept at provisioning: only ever the small regular file the agent wrote


def kept_url_store(tmp_path, ca) -> tuple[IdentityStore, Path]:
    """An identity provisioned with a verifier URL, and the path of the file that keeps it."""
    store = IdentityStore(tmp_path / "state")
    store.write(*ca.issue_key_and_cert(["kiosk-1"], client=True), [ca.cert], PASS, verifier_url="https://v:8443")
    path = store.current / VERIFIER_FILE
    assert store.provisioned_verifier_url() == "https://v:8443"
    path.unlink()
    return store, path


def test_a_fifo_at_the_kept_verifier_url_is_refused_without_opening_it(tmp_path, ca) -> None:
    """open() on a FIFO with no writer waits for one: every command, the daemon's start included, hung silently."""
    store, path = kept_url_store(tmp_path, ca)
    os.mkfifo(path, 0o600)
    with pytest.raises(IdentityError) as info:
        store.provisioned_verifier_url()  # no writer ever comes: this returns only because the FIFO is refused
    assert f"{path} is a FIFO (named pipe), not a regular file" == info.value.message
    assert f"rm -r {path}" in info.value.fix and "provision --force" in info.value.fix


def test_a_symlink_at_the_kept_verifier_url_is_refused_not_followed(tmp_path, ca) -> None:
    store, path = kept_url_store(tmp_path, ca)
    elsewhere = tmp_path / "elsewhere.url"
    elsewhere.write_text("https://someone-else:8443\n")
    path.symlink_to(elsewhere)
    with pytest.raises(IdentityError) as info:
        store.provisioned_verifier_url()
    assert "is a symbolic link, not a regular file" in info.value.message
    assert "someone-else" not in str(info.value)


def test_a_directory_at_the_kept_verifier_url_is_refused(tmp_path, ca) -> None:
    store, path = kept_url_store(tmp_path, ca)
    path.mkdir()
    with pytest.raises(IdentityError, match="is a directory, not a regular file"):
        store.provisioned_verifier_url()


def test_an_oversized_kept_verifier_url_is_refused_not_cut(tmp_path, ca) -> None:
    """A URL followed by more than the file may hold used to be cut at 4096 bytes and taken."""
    store, path = kept_url_store(tmp_path, ca)
    path.write_bytes(b"https://v:8443" + b"\n" * MAX_VERIFIER_FILE_BYTES)
    with pytest.raises(IdentityError) as info:
        store.provisioned_verifier_url()
    assert f"holds more than {MAX_VERIFIER_FILE_BYTES} bytes" in info.value.message
    path.write_bytes(b"https://v:8443".ljust(MAX_VERIFIER_FILE_BYTES - 1) + b"\n")  # at the limit: still taken
    assert store.provisioned_verifier_url() == "https://v:8443"


def test_no_kept_verifier_url_is_none(tmp_path, ca) -> None:
    store, _ = kept_url_store(tmp_path, ca)
    assert store.provisioned_verifier_url() is None
    assert IdentityStore(tmp_path / "never-provisioned").provisioned_verifier_url() is None


def test_a_command_whose_config_names_no_verifier_stops_on_a_fifo_with_the_fix(tmp_path, ca) -> None:
    """The real CLI, as an installer runs it: a typed error and its fix, exit 2, no traceback and no hang."""
    from tests.test_installer_cli import agent_cli

    store, path = kept_url_store(tmp_path, ca)
    os.mkfifo(path, 0o600)
    config_file = tmp_path / "agent.toml"
    config_file.write_text(f'[agent]\nstate_dir = "{store.state_dir}"\n[keyring]\nbackend = "file-insecure-dev"\n')
    done = agent_cli("health", "--config", str(config_file))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    error, fix = done.stderr.split("fix:", 1)
    assert "is a FIFO (named pipe), not a regular file" in error and f"rm -r {path}" in fix, done.stderr


@pytest.mark.parametrize("name", [CERT_FILE, CA_FILE, KEY_FILE])
@pytest.mark.parametrize("kind", ["fifo", "symlink", "oversized", "hardlink"])
def test_identity_files_that_are_no_regular_file_of_sane_size_are_refused_and_replaceable(
    tmp_path, ca, name: str, kind: str
) -> None:
    """The same reading as verifier.url's for the key and certificates: a FIFO blocked the load (every command,
    the daemon's start), a link was followed; `provision --force` must still see something to replace."""
    store = IdentityStore(tmp_path / "state")
    good = store.write(*ca.issue_key_and_cert(["kiosk-1"], client=True), [ca.cert], PASS)
    path = good.directory / name
    kept = path.read_bytes()
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "symlink":
        (tmp_path / "elsewhere").write_bytes(kept)
        path.symlink_to(tmp_path / "elsewhere")
    elif kind == "hardlink":  # the very bytes the agent wrote, under a second name outside the identity folder
        (tmp_path / "elsewhere").write_bytes(kept)
        os.link(tmp_path / "elsewhere", path)
    else:
        path.write_bytes(kept + b"\n" * MAX_IDENTITY_FILE_BYTES)
    with pytest.raises(IdentityError) as info:
        store.load(PASS)
    assert str(path) in info.value.message and "re-provision" in info.value.fix, info.value
    existing = describe_existing(store)  # what `provision` says --force replaces: it reads device.pem only
    assert existing == "an unreadable identity" if name == CERT_FILE else existing.startswith("device kiosk-1")


def test_a_device_key_with_a_second_name_is_refused_naming_how_to_find_it(tmp_path, ca) -> None:
    """A hard link made to the key the agent wrote (a name in a folder others can read) was read as if it were
    the agent's own file: a second name reads the key and replaces it, whatever the identity folder allows."""
    store = IdentityStore(tmp_path / "state")
    good = store.write(*ca.issue_key_and_cert(["kiosk-1"], client=True), [ca.cert], PASS)
    path = good.directory / KEY_FILE
    assert store.load(PASS).serial_hex == good.serial_hex  # one name: read
    os.link(path, tmp_path / "copy-of-the-key")
    with pytest.raises(IdentityError) as info:
        store.load(PASS)
    assert info.value.message == f"{path} has 2 names (hard links): another name can read or replace it"
    assert f"-xdev -samefile {path}`" in info.value.fix and "re-provision" in info.value.fix
    (tmp_path / "copy-of-the-key").unlink()  # the fix it names: the other name removed, the key is read again
    assert store.load(PASS).serial_hex == good.serial_hex


def test_the_command_that_finds_a_keys_other_name_finds_it_on_a_file_system_of_its_own(tiny_filesystem, ca) -> None:
    """The fix said `find / -xdev -samefile KEY`: with the state directory on a file system of its own (/var, a
    data partition), -xdev kept find out of it, and it listed nothing. The command the fix names finds the name."""
    store = IdentityStore(tiny_filesystem / "state")
    good = store.write(*ca.issue_key_and_cert(["kiosk-1"], client=True), [ca.cert], PASS)
    other = tiny_filesystem / "copy-of-the-key"
    os.link(good.directory / KEY_FILE, other)
    with pytest.raises(IdentityError) as info:
        store.load(PASS)
    command = re.search(r"`(find [^`]+)`", info.value.fix)
    assert command is not None, info.value.fix
    listed = subprocess.run(shlex.split(command.group(1)), capture_output=True, text=True, timeout=120)
    assert str(other) in listed.stdout.splitlines(), (command.group(1), listed.stdout, listed.stderr)


def test_csr_is_signed_by_the_new_key() -> None:
    from cryptography import x509

    key = generate_key()
    csr = x509.load_der_x509_csr(build_csr(key, "kiosk-9"))
    assert csr.is_signature_valid
    assert csr.public_key().public_numbers() == key.public_key().public_numbers()


def test_renewal_falls_at_two_thirds_with_bounded_jitter(tmp_path, ca) -> None:
    store = IdentityStore(tmp_path / "state")
    identity = store.write(*ca.issue_key_and_cert(["kiosk-1"], client=True), [ca.cert], PASS)
    life = identity.not_after - identity.not_before
    rng = random.Random(7)
    times = [renewal_time(identity, 2 / 3, 0.05, rng) for _ in range(200)]
    fractions = [(t - identity.not_before) / life for t in times]
    assert all(2 / 3 - 0.05 <= f <= 2 / 3 + 0.05 for f in fractions)
    assert max(fractions) - min(fractions) > 0.05, "jitter spreads a fleet's renewals"
    assert all(isinstance(t, dt.datetime) for t in times)


def test_fingerprints_are_accepted_with_colons_or_spaces() -> None:
    assert normalise_fingerprint("AB:cd ef") == "abcdef"


# -- hostile certificates (a fuzzing audit): cryptography loads them, then raises lazily, and not ValueError

# What each defect raised, untyped, before read_in_full: neither is a ValueError.
LAZY_FAULTS = {
    "duplicate-extension": (x509.DuplicateExtension, lambda cert: cert.extensions),
    "unsupported-curve": (UnsupportedAlgorithm, lambda cert: cert.public_key()),
}


@pytest.mark.parametrize("defect", sorted(LAZY_FAULTS))
def test_read_in_full_types_what_cryptography_raises_later(ca: TestCA, defect: str) -> None:
    cert = hostile_certificate(ca, "kiosk-1", defect)
    raised, touch = LAZY_FAULTS[defect]
    assert not issubclass(raised, ValueError)
    with pytest.raises(raised):
        touch(cert)  # the precondition: loaded fine, fails when read
    with pytest.raises(CertificateDefect) as info:
        read_in_full(cert, "the test's certificate", "the test's fix")
    assert info.value.message.startswith("the test's certificate cannot be read in full: " + raised.__name__)
    assert info.value.fix == "the test's fix"
    assert isinstance(info.value, IdentityError)
    assert read_in_full(ca.cert, "a good one", "none") is ca.cert


def test_a_name_value_out_of_its_bounds_is_a_defect_not_a_warning_at_every_read(ca: TestCA) -> None:
    """An empty CN only made cryptography print a UserWarning, at each read of the subject (doctor, renewal, every
    trust check): read in full, it is one CertificateDefect where the certificate arrives."""
    import warnings

    cert = hostile_certificate(ca, "kiosk-1", "empty-common-name")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(CertificateDefect) as info:
            read_in_full(cert, "the test's certificate", "the test's fix")
    assert "UserWarning: Attribute's length must be >= 1" in info.value.message
    assert not shown, [str(w.message) for w in shown]


@pytest.mark.parametrize("defect", sorted(LAZY_FAULTS))
def test_a_stored_certificate_that_cannot_be_read_in_full_fails_at_load(tmp_path, ca: TestCA, defect: str) -> None:
    key, cert = ca.issue_key_and_cert(["kiosk-1"], client=True)
    store = IdentityStore(tmp_path / "state")
    identity = store.write(key, cert, [ca.cert], PASS)
    pem = hostile_certificate(ca, "kiosk-1", defect, key.public_key()).public_bytes(serialization.Encoding.PEM)
    identity.cert_path.write_bytes(pem)  # a device.pem damaged, or written by an older agent that never read it
    for load in (lambda: store.load(PASS), store.load_certificate):
        with pytest.raises(CertificateDefect) as info:
            load()
        assert "device.pem cannot be read in full" in info.value.message
        assert "re-provision" in info.value.fix
    assert describe_existing(store) == "an unreadable identity"  # provision --force can still replace it


def test_a_stored_ca_that_cannot_be_read_in_full_fails_at_load_naming_it(tmp_path, ca: TestCA) -> None:
    key, cert = ca.issue_key_and_cert(["kiosk-1"], client=True)
    store = IdentityStore(tmp_path / "state")
    identity = store.write(key, cert, [ca.cert], PASS)
    bad = hostile_certificate(ca, "sub-ca", "duplicate-extension", ca=True)
    identity.ca_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (ca.cert, bad)))
    for load in (lambda: store.load(PASS), store.load_ca_certificates):
        with pytest.raises(CertificateDefect, match=r"certificate #2 of the CA certificates .*ca\.pem"):
            load()


@pytest.mark.parametrize("defect", sorted(LAZY_FAULTS))
def test_writing_a_certificate_that_cannot_be_read_in_full_keeps_the_identity_that_works(
    tmp_path, ca: TestCA, defect: str
) -> None:
    key, cert = ca.issue_key_and_cert(["kiosk-1"], client=True)
    store = IdentityStore(tmp_path / "state")
    working = store.write(key, cert, [ca.cert], PASS)
    new_key = generate_key()
    with pytest.raises(CertificateDefect) as info:
        store.write(new_key, hostile_certificate(ca, "kiosk-1", defect, new_key.public_key()), [ca.cert], PASS)
    assert "capture-verifier" in info.value.fix
    with pytest.raises(CertificateDefect, match="CA certificate #2"):
        store.write(new_key, ca.issue_key_and_cert(["kiosk-1"], client=True)[1],
                    [ca.cert, hostile_certificate(ca, "sub", defect, ca=True)], PASS)
    assert store.load(PASS).serial_hex == working.serial_hex


def test_trust_checks_pass_over_certificates_they_cannot_read(ca: TestCA, make_test_ca) -> None:
    """A cacerts answer with CAs whose extensions or key cannot be read: no exception, and none of them trusted."""
    sub = make_test_ca("sub")
    sub_by_ca = TestCA("sub-by-ca", ca.folder, issuer=ca)
    twice = hostile_certificate(ca, "twice", "duplicate-extension", ca=True)
    odd_curve = hostile_certificate(ca, "odd-curve", "unsupported-curve", ca=True)
    assert trusted_under(ca.cert, [twice, odd_curve, sub.cert, sub_by_ca.cert]) == [ca.cert, sub_by_ca.cert]
    assert issued_by(sub_by_ca.cert, odd_curve) is False  # its key cannot be read: it vouches for nothing
    assert issued_by(sub_by_ca.cert, ca.cert) is True


def test_the_pin_of_a_key_on_an_unsupported_curve_is_over_its_bytes(ca: TestCA) -> None:
    key = generate_key()
    cert = hostile_certificate(ca, "verifier", "unsupported-curve", key.public_key())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    expected = base64.b64encode(hashlib.sha256(spki.replace(P256_OID_DER, UNSUPPORTED_CURVE_OID_DER)).digest())
    assert spki_sha256(cert) == expected.decode()
    # what the TLS policy pins: the DER of the handshake's certificate, never parsed by cryptography
    assert spki_der(cert.public_bytes(serialization.Encoding.DER)) == spki_der(cert)
    _, good = ca.issue_key_and_cert(["verifier"])
    assert spki_sha256(good) == spki_sha256(good.public_key())  # the same pin as before for every usable key
    assert spki_der(good.public_bytes(serialization.Encoding.DER)) == good.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_a_certificate_cut_short_is_an_index_error_not_a_short_pin(ca: TestCA) -> None:
    """Slicing past the end gave a short SubjectPublicKeyInfo (91 bytes became 40) and a pin of it (a review)."""
    _, good = ca.issue_key_and_cert(["verifier"])
    der = good.public_bytes(serialization.Encoding.DER)
    spki = spki_der(der)
    cut = der[: der.index(spki) + 40]
    with pytest.raises(IndexError, match="runs past"):
        spki_der(cut)
