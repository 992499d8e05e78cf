"""The operator's --pki folder: a wrong one is refused with the fix, never a traceback, and nothing is stored.

Real `capture-verifier` processes on folders an operator gets wrong: a file, a
folder another tool made, a copy that lost a key, a database that is not one.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.test_verifier_operator_cli import cli, refused


def _self_signed(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    """A self-signed certificate as `openssl req -x509` would make it: another tool's CA."""
    import datetime as dt

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another tool")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_a_token_is_not_stored_when_the_folder_holds_no_ca_certificate(tmp_path: Path) -> None:
    """It was stored, logged as issued, then a traceback: a live token nobody ever saw."""
    folder = tmp_path / "other-tool"
    folder.mkdir()
    (folder / "ca.pem").write_text("not a certificate\n")
    error, fix = refused(cli("token", "new", "--pki", str(folder), "--device", "kiosk-1"))
    assert "ca.pem holds no PEM certificate" in error
    assert "pki init" in fix
    assert not (folder / "verifier.sqlite").exists(), "nothing may be stored in a folder that is not the verifier's"


@pytest.mark.parametrize("command", [("device", "list"), ("subject", "list"), ("serve", "--port", "0")])
def test_a_file_or_a_folder_in_place_of_ca_pem_is_named(tmp_path: Path, verifier_state: Path, command) -> None:
    (tmp_path / "a-file").write_text("")
    error, fix = refused(cli(*command, "--pki", str(tmp_path / "a-file")))
    assert error == f"error: {tmp_path / 'a-file'} is not a folder"
    (verifier_state / "ca.pem").unlink()
    (verifier_state / "ca.pem").mkdir()
    error, fix = refused(cli(*command, "--pki", str(verifier_state)))
    assert error == f"error: {verifier_state / 'ca.pem'} is not a regular file"
    assert "--pki" in fix


def test_pki_init_under_a_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    error, fix = refused(cli("pki", "init", str(tmp_path / "a-file" / "pki")))
    assert "cannot make the PKI" in error and "Not a directory" in error
    assert "folder path" in fix


def _break_missing_server_key(pki: Path) -> str:
    (pki / "server.key").unlink()
    return "server.key is missing"


def _break_missing_ca_key(pki: Path) -> str:
    (pki / "ca.key").unlink()
    return "ca.key is missing"


def _break_rsa_ca(pki: Path) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "ca.key").write_bytes(_key_pem(key))
    (pki / "ca.pem").write_bytes(_self_signed(key))
    return "cannot sign: the CA key is not an EC key"


def _break_server_key_of_another(pki: Path) -> str:
    (pki / "server.key").write_bytes(_key_pem(ec.generate_private_key(ec.SECP256R1())))
    return "server.key is not the key of server.pem"


@pytest.mark.parametrize("breaking", [_break_missing_server_key, _break_missing_ca_key, _break_rsa_ca,
                                      _break_server_key_of_another])
def test_serve_names_the_key_or_certificate_a_copied_folder_lacks(verifier_state: Path, breaking) -> None:
    """A folder copied without its keys, or another tool's CA, is refused before the server starts."""
    expected = breaking(verifier_state)
    error, fix = refused(cli("serve", "--pki", str(verifier_state), "--port", "0"))
    assert expected in error
    assert fix.startswith("fix: ")


@pytest.mark.parametrize("command", [("device", "list"), ("token", "revoke", "kiosk-1"), ("serve", "--port", "0")])
def test_a_database_that_is_not_one_is_named_not_a_traceback(verifier_state: Path, command) -> None:
    (verifier_state / "verifier.sqlite").write_bytes(b"garbage, not sqlite " * 100)
    error, fix = refused(cli(*command, "--pki", str(verifier_state)))
    assert "verifier.sqlite is not a verifier database" in error
    assert "backup" in fix


def test_a_folder_copied_whole_from_another_machine_works(tmp_path: Path, verifier_state: Path) -> None:
    """The good case beside the refusals: a copy with its keys and database is the same verifier."""
    assert cli("token", "new", "--pki", str(verifier_state), "--device", "kiosk-1").returncode == 0
    copy = tmp_path / "copied"
    shutil.copytree(verifier_state, copy)
    done = cli("device", "list", "--pki", str(copy))
    assert done.returncode == 0, done.stderr
    assert '"kiosk-1"' in done.stdout
    with sqlite3.connect(copy / "verifier.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM tokens").fetchone() == (1,)


def test_a_database_locked_past_the_wait_is_named_with_its_fix(verifier_state: Path) -> None:
    """Another process left in a write transaction (an sqlite3 shell, a backup): after the wait, not a traceback."""
    holder = sqlite3.connect(verifier_state / "verifier.sqlite", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        done = cli("token", "new", "--pki", str(verifier_state), "--device", "kiosk-1")
    finally:
        holder.close()
    error, fix = refused(done)
    assert "stayed locked" in error
    assert "run the command again" in fix
    assert "token:" not in done.stdout


def test_a_full_disk_is_named_as_one_and_no_token_is_printed(tiny_filesystem: Path) -> None:
    from tests.conftest import fill_filesystem

    pki = tiny_filesystem / "pki"
    assert cli("pki", "init", str(pki)).returncode == 0
    fill_filesystem(tiny_filesystem)
    error, fix = refused(cli("token", "new", "--pki", str(pki), "--device", "kiosk-1"))
    assert "cannot be written" in error
    assert "free space" in fix and "restore" not in fix, "a full disk is not a damaged database"
    error, fix = refused(cli("pki", "init", str(tiny_filesystem / "another")))
    assert "No space left on device" in error
    assert "free space" in fix


@pytest.mark.parametrize(("name", "mode", "said"), [
    (".", 0o777, "may be written by other users"),
    (".", 0o770, "may be written by its group"),
    ("ca.key", 0o644, "may be read by other users"),  # `cp -r` under umask 022: any local user signs devices
    ("server.key", 0o640, "may be read by its group"),
    ("ca.pem", 0o664, "may be written by its group"),  # the trust anchor, replaceable
])
@pytest.mark.parametrize("command", [("device", "list"), ("serve", "--port", "0")])
def test_a_folder_or_key_others_may_use_is_refused_with_the_chmod(
    verifier_state: Path, name: str, mode: int, said: str, command: tuple[str, ...]
) -> None:
    target = verifier_state / name
    target.chmod(mode)
    error, fix = refused(cli(*command, "--pki", str(verifier_state)))
    assert said in error and f"mode {mode:04o}" in error
    assert fix == f"fix: chmod {'700' if name == '.' else '600'} {target if name != '.' else verifier_state} " \
        "(pki init makes " + ("it so)" if name == "." else "every file of the folder 0600)")


@pytest.mark.parametrize("name", ["", "a b", "\u00fc.example", "x" * 64 + ".example", "*.example"])
def test_a_server_name_no_agent_could_match_is_refused_and_leaves_no_folder(tmp_path: Path, name: str) -> None:
    """An empty or over-long name failed after the CA was written: a folder `pki init` then refused to make again."""
    pki = tmp_path / "pki"
    error, fix = refused(cli("pki", "init", str(pki), "--server-name", "localhost", "--server-name", name))
    assert repr(name) in error
    assert "--server-name" in fix
    assert not pki.exists()


def test_a_long_valid_server_name_makes_a_certificate_that_names_it(tmp_path: Path) -> None:
    """A host name longer than a common name may be (64) is still a good SAN."""
    name = ".".join(["a" * 40, "b" * 40, "example"])
    pki = tmp_path / "pki"
    done = cli("pki", "init", str(pki), "--server-name", name)
    assert done.returncode == 0, done.stderr
    server = x509.load_pem_x509_certificate((pki / "server.pem").read_bytes())
    assert server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [name]


def test_a_database_root_makes_in_the_verifiers_folder_is_the_folders_owners(verifier_state: Path) -> None:
    """An installer's `sudo capture-verifier token new` before the first `serve` made verifier.sqlite root's
    (0600) in the verifier's folder, and the unit's `serve`, as the verifier's own user, could not open it."""
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root to give the folder to another user, and to be the root who makes the file")
    database = verifier_state / "verifier.sqlite"
    assert not database.exists()  # pki init makes none: the first command to open it does
    os.chown(verifier_state, 65534, 65534)  # the verifier's user, as the unit's StateDirectory= makes it
    try:
        done = cli("token", "new", "--pki", str(verifier_state), "--device", "kiosk-07")
        owners = {path.name: (path.stat().st_uid, path.stat().st_gid) for path in verifier_state.glob("verifier.*")}
    finally:
        os.chown(verifier_state, 0, 0)
    assert done.returncode == 0, done.stderr
    assert owners.get("verifier.sqlite") == (65534, 65534), owners
    assert set(owners.values()) == {(65534, 65534)}, f"a companion of the database stayed root's: {owners}"
