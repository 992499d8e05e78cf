"""The device identity on disk: encrypted key, private files, atomic replacement."""

from __future__ import annotations

import datetime as dt
import os
import random
import stat

import pytest

from agent.errors import IdentityError
from agent.identity import IdentityStore, build_csr, generate_key, normalise_fingerprint
from agent.renewal import renewal_time

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
