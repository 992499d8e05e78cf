"""`capture-agent doctor`: every failed check names its fix."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import os
import shutil
import socket
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization

from agent.config import parse_config
from agent.doctor import run_doctor, server_certificate_facts
from agent.identity import IdentityStore, generate_key, spki_sha256
from agent.keystore import load_kek
from tests.conftest import AGENT_UID, P256_OID_DER, UNSUPPORTED_CURVE_OID_DER, der_head, hostile_certificate
from tests.h2harness import H2TestServer


def config_for(state_dir, url="https://127.0.0.1:9"):
    return parse_config(
        {
            "agent": {"state_dir": str(state_dir)},
            "verifier": {"url": url},
            "keyring": {"backend": "file-insecure-dev"},
            "network": {"retries": 0, "connect_timeout_s": 2.0},
        }
    )


@pytest.fixture
def provisioned(tmp_path, make_test_ca):
    """A state directory with an identity issued by a test CA, and that CA."""
    ca = make_test_ca("device-ca")
    config = config_for(tmp_path / "state")
    kek = load_kek(config, create=True)
    IdentityStore(config.agent.state_dir).write(
        *ca.issue_key_and_cert(["kiosk-1"], client=True), [ca.cert], kek.encode()
    )
    return ca, tmp_path / "state"


@pytest.fixture
def provisioned_by_verifier(verifier, tmp_path):
    """A device provisioned against the reference verifier (conftest's ``provisioned``, which this module shadows)."""
    from agent.devstack import provision_device

    return asyncio.run(provision_device(verifier, tmp_path / "device", "kiosk-1"))


def by_name(report):
    return {c.name: c for c in report.checks}


def test_an_unprovisioned_device_is_told_to_provision(tmp_path) -> None:
    report = run_doctor(config_for(tmp_path / "empty"))
    checks = by_name(report)
    assert not report.ok
    assert "capture-agent provision" in checks["state directory"].fix
    assert checks["verifier (live mTLS call)"].ok is None  # skipped, not failed twice


def test_a_healthy_device_passes_and_reports_tls_facts(provisioned) -> None:
    ca, state = provisioned
    with H2TestServer(ca.server_context(["127.0.0.1"], client_ca=ca.ca_file)) as server:
        report = run_doctor(config_for(state, server.url))
    assert report.ok, [(c.name, c.detail) for c in report.checks if c.ok is False]
    assert report.facts["tls"]["tls_version"] == "TLSv1.3"
    assert report.facts["tls"]["alpn"] == "h2"
    assert "server_cert_not_after" in report.facts["tls"]


def test_an_expired_certificate_says_reprovision_with_a_new_token(provisioned) -> None:
    ca, state = provisioned
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    with H2TestServer(ca.server_context(["127.0.0.1"], client_ca=ca.ca_file)) as server:
        report = run_doctor(config_for(state, server.url), now=lambda: later)
    expiry = by_name(report)["certificate expiry"]
    assert expiry.ok is False
    assert "re-provision with a new token" in expiry.fix


def test_the_insecure_dev_keyring_passes_but_is_named_insecure(provisioned) -> None:
    """"[ok] key-encryption key: from the file-insecure-dev keyring" read as all right on a device in service,
    where whoever reads the state directory has the key; a rig's doctor still passes."""
    _, state = provisioned
    check = by_name(run_doctor(config_for(state)))["key-encryption key"]
    assert check.ok is True
    assert "INSECURE, development only" in check.detail and 'backend = "systemd-credentials"' in check.detail


def test_loose_permissions_are_flagged(provisioned) -> None:
    _, state = provisioned
    os.chmod(state, 0o755)  # noqa: S103 - the fault under test
    report = run_doctor(config_for(state))
    check = by_name(report)["state directory"]
    assert check.ok is False and "chmod 0700" in check.fix


def test_a_stopped_verifier_is_a_failed_live_check_with_a_fix(provisioned) -> None:
    _, state = provisioned
    report = run_doctor(config_for(state, "https://127.0.0.1:9"))
    live = by_name(report)["verifier (live mTLS call)"]
    assert live.ok is False and live.fix
    # Said to a person whose `verify` just failed too: the agent does not retry that one for them.
    assert "start it again" in live.fix and "nothing is lost" not in live.fix


def test_a_server_of_another_ca_fails_the_live_check(provisioned, make_test_ca) -> None:
    _, state = provisioned
    with H2TestServer(make_test_ca("rogue").server_context(["127.0.0.1"])) as server:
        report = run_doctor(config_for(state, server.url))
    live = by_name(report)["verifier (live mTLS call)"]
    assert live.ok is False and "CA" in live.fix


def dated_app(server_now: dt.datetime):
    """A /v1/health that answers with a Date header from ``server_now``: the verifier's clock."""
    from email.utils import format_datetime

    async def app(scope, receive, send) -> None:
        await receive()
        body = b'{"status": "ok"}'
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"date", format_datetime(server_now, usegmt=True).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def test_a_certificate_expired_by_a_clock_the_verifier_disagrees_with_blames_the_clock(tmp_path, make_test_ca) -> None:
    """This device's clock runs 35 days ahead: its certificate looks expired here, the verifier still accepts it.

    No faked clock: the certificate is really issued with past dates, and the server (which, like a
    verifier with the right time, does not find it expired) says its time in the Date header.
    """
    ca = make_test_ca("device-ca")
    now = dt.datetime.now(dt.UTC)
    config = config_for(tmp_path / "state")
    kek = load_kek(config, create=True)
    valid = (now - dt.timedelta(days=60), now - dt.timedelta(days=30))
    IdentityStore(config.agent.state_dir).write(
        *ca.issue_key_and_cert(["kiosk-1"], client=True, valid=valid), [ca.cert], kek.encode()
    )
    verifier_now = now - dt.timedelta(days=35)
    with H2TestServer(ca.server_context(["127.0.0.1"]), app=dated_app(verifier_now)) as server:
        report = run_doctor(config_for(tmp_path / "state", server.url))
    checks = by_name(report)
    assert checks["verifier (live mTLS call)"].ok is True
    expiry = checks["certificate expiry"]
    assert expiry.ok is False and "but the verifier accepted it" in expiry.detail
    assert "35.0 days ahead of the verifier's" in expiry.detail
    assert "timedatectl" in expiry.fix and "do not re-provision" in expiry.fix
    clock = checks["clock"]
    assert clock.ok is False and "35.0 days ahead of the verifier's" in clock.detail, clock
    assert "timedatectl" in clock.fix
    assert abs(report.facts["clock_skew_s"] - 35 * 86400) < 120


def test_doctor_compares_the_clock_with_the_real_verifiers(provisioned_by_verifier) -> None:
    config, _ = provisioned_by_verifier
    report = run_doctor(config)
    assert report.ok, [(c.name, c.detail, c.fix) for c in report.checks if c.ok is False]
    assert "of the verifier's" in by_name(report)["clock"].detail  # the verifier (hypercorn) sends Date
    assert abs(report.facts["clock_skew_s"]) < 60


def test_a_revoked_device_is_told_what_the_verifier_said_a_new_device_id(provisioned_by_verifier, verifier) -> None:
    """Was "/v1/health answered 403 ... re-provision": a token for the same id is refused too."""
    from agent.devstack import verifier_cli

    config, _ = provisioned_by_verifier
    verifier_cli("device", "revoke", "--pki", str(verifier.pki_dir), "kiosk-1")
    live = by_name(run_doctor(config))["verifier (live mTLS call)"]
    assert live.ok is False and "403 Device revoked: device kiosk-1 is revoked" in live.detail, live.detail
    assert "token new --device NEW-ID" in live.fix, live.fix


def systemd_config(tmp_path, source: str = "devstack"):
    config = parse_config(
        {"agent": {"state_dir": str(tmp_path / "state")}, "keyring": {"backend": "systemd-credentials"}},
        source=source,
    )
    return config


def test_doctor_outside_systemd_says_how_to_run_it_when_the_credential_exists(tmp_path, monkeypatch) -> None:
    """From a plain shell there is no $CREDENTIALS_DIRECTORY: the credential is fine, the way doctor runs is not."""
    import agent.doctor

    credstore = tmp_path / "credstore.encrypted"
    credstore.mkdir()
    (credstore / "capture-agent-kek").write_bytes(b"encrypted by systemd-creds")
    monkeypatch.setattr(agent.doctor, "CREDSTORE_DIRS", (credstore,))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config_file = tmp_path / "agent.toml"
    check = by_name(run_doctor(systemd_config(tmp_path, source=str(config_file))))["key-encryption key"]
    assert check.ok is False and "doctor runs outside systemd" in check.detail
    assert str(credstore / "capture-agent-kek") in check.detail
    assert "systemd-creds encrypt" not in check.fix, "the credential exists: do not make another"
    assert (
        "`systemd-run --pipe --wait -p User=capture-agent -p StateDirectory=capture-agent "
        f"-p LoadCredentialEncrypted=capture-agent-kek capture-agent doctor --config {config_file}`" in check.fix
    )


def test_doctor_outside_systemd_without_the_credential_says_to_make_it_and_how_to_run(tmp_path, monkeypatch) -> None:
    import agent.doctor

    monkeypatch.setattr(agent.doctor, "CREDSTORE_DIRS", (tmp_path / "credstore.encrypted",))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    check = by_name(run_doctor(systemd_config(tmp_path)))["key-encryption key"]
    assert check.ok is False and "no encrypted credential 'capture-agent-kek'" in check.detail
    assert "systemd-creds encrypt" in check.fix and "systemd-run --pipe --wait -p User=capture-agent" in check.fix


def test_the_agent_unit_matches_what_doctor_tells_to_run() -> None:
    """doctor's systemd-run line carries the unit's user, state directory and credential."""
    from pathlib import Path

    from agent.doctor import doctor_under_systemd

    unit = (Path(__file__).resolve().parents[1] / "systemd" / "capture-agent.service").read_text().splitlines()
    for prop in doctor_under_systemd(systemd_config(Path("/nonexistent"))).split(" -p ")[1:]:
        assert prop.split()[0] in unit, prop


def test_doctor_checks_that_the_local_api_group_exists(tmp_path) -> None:
    """The daemon would stop at start on a group that does not exist: doctor says so first."""
    import grp

    def api_check(group: str):
        config = parse_config(
            {
                "agent": {"state_dir": str(tmp_path / "empty")},
                "keyring": {"backend": "file-insecure-dev"},
                "api": {"socket": str(tmp_path / "api.sock"), "group": group},
            }
        )
        return by_name(run_doctor(config)).get("local API group")

    missing = api_check("no-such-group-for-doctor")
    assert missing is not None and missing.ok is False
    assert "does not exist" in missing.detail and "groupadd no-such-group-for-doctor" in missing.fix
    existing = grp.getgrgid(os.getgid()).gr_name
    found = api_check(existing)
    assert found is not None and found.ok is True and f"gid {os.getgid()}" in found.detail
    assert api_check("") is None  # unset: the socket stays the agent's own group's


def test_server_certificate_facts_survive_what_cryptography_cannot_read(ca) -> None:
    """OpenSSL took the server's certificate; doctor's facts must not end in UnsupportedAlgorithm or ValueError."""
    key = generate_key()
    odd = hostile_certificate(ca, "verifier", "unsupported-curve", key.public_key())
    facts = server_certificate_facts(odd.public_bytes(serialization.Encoding.DER))
    assert facts["server_cert_not_after"] == odd.not_valid_after_utc.isoformat()
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    sent = spki.replace(P256_OID_DER, UNSUPPORTED_CURVE_OID_DER)  # the pin is over the bytes as sent
    assert facts["server_spki_sha256"] == base64.b64encode(hashlib.sha256(sent).digest()).decode()
    # one cryptography refuses to load at all (its signature fields cut away): the pin all the same
    tbs = ca.cert.tbs_certificate_bytes
    facts = server_certificate_facts(b"\x30" + der_head(len(tbs)) + tbs)
    assert facts["server_cert_not_after"].startswith("unreadable by the cryptography library (ValueError")
    assert facts["server_spki_sha256"] == spki_sha256(ca.cert)


def test_doctor_names_a_configured_device_that_is_not_there_and_where_it_is_set(tmp_path, fake_dev) -> None:
    """The daemon starts without a device (it waits for it), so a mistyped port used to pass doctor. (The camera
    is a node of the folder standing in for /dev: a path elsewhere is a video file, said missing as a file.)"""
    there = tmp_path / "ttyUSB0"
    there.touch()
    not_pem = tmp_path / "camera-ca.pem"
    not_pem.write_text("not a certificate\n")
    config = parse_config(
        {
            "agent": {"state_dir": str(tmp_path / "empty")},
            "keyring": {"backend": "file-insecure-dev"},
            "device": [
                {"kind": "zfm", "name": "finger", "port": str(tmp_path / "ttyUSB9")},
                {"kind": "zfm", "name": "plugged", "port": str(there)},
                {"kind": "camera", "name": "door", "source": str(fake_dev.root / "video7")},
                {"kind": "camera", "name": "gate", "source": "https://127.0.0.1:9/s.mjpg", "ca_file": str(not_pem)},
            ],
        },
        source="agent.toml",
    )
    report = run_doctor(config)
    checks = by_name(report)
    assert not report.ok
    finger = checks["device finger"]
    assert finger.ok is False and f"{tmp_path / 'ttyUSB9'} does not exist" in finger.detail
    assert '[[device]] name = "finger" in agent.toml' in finger.fix and "ls /dev/ttyUSB*" in finger.fix
    assert checks["device plugged"].ok is True
    door = checks["device door"]
    assert door.ok is False and "does not exist" in door.detail and "ls /dev/video*" in door.fix
    gate = checks["device gate"]
    assert gate.ok is False and "holds no PEM certificate" in gate.detail and "ca_file" in gate.fix
    none = by_name(run_doctor(config_for(tmp_path / "empty")))["devices"]
    assert none.ok is None and "[[device]]" in none.fix


def test_a_ca_file_of_another_ca_of_the_same_name_is_named_not_left_blank(provisioned, make_test_ca) -> None:
    """InvalidSignature has an empty str(): the chain check said "does not chain to the stored CA: " and stopped."""
    _, state = provisioned
    impostor = make_test_ca("device-ca")  # the same name, another key: a second dev PKI's CA
    (state / "identity" / "ca.pem").write_bytes(impostor.cert.public_bytes(serialization.Encoding.PEM))
    chain = by_name(run_doctor(config_for(state)))["certificate chain"]
    assert chain.ok is False and not chain.detail.endswith(": ")
    assert "not the one that signed" in chain.detail and "ca.pem" in chain.detail
    assert "provision --force" in chain.fix


def test_a_verifier_certificate_for_another_name_says_how_to_see_its_names(provisioned) -> None:
    """An installer who typed the verifier's address by IP (or another name) was told to use "the host name the
    certificate was issued for", with no way shown to find it, and only [verifier] url where they typed --verifier."""
    ca, state = provisioned
    with H2TestServer(ca.server_context(["verifier.elsewhere.example"], client_ca=ca.ca_file)) as server:
        report = run_doctor(config_for(state, server.url))
    live = by_name(report)["verifier (live mTLS call)"]
    assert live.ok is False and "mismatch" in live.detail.lower()
    port = server.url.rsplit(":", 1)[1].strip("/")
    assert f"openssl s_client -connect 127.0.0.1:{port}" in live.fix and "(or --verifier)" in live.fix


def test_a_kept_verifier_url_edited_to_hold_a_password_is_never_repeated(provisioned) -> None:
    """The URL kept at provisioning is only read when the config's URL wins; doctor then printed it as it was,
    so a hand-edited `https://user:password@host` went into the output pasted into tickets."""
    _, state = provisioned
    (state / "identity" / "verifier.url").write_text("https://admin:s3cret@127.0.0.1:9\n")
    report = run_doctor(config_for(state))
    said = [(check.detail, check.fix) for check in report.checks]
    assert not any("s3cret" in (text or "") for pair in said for text in pair), said
    assert "no valid verifier URL" in by_name(report)["config"].detail


def test_a_kept_verifier_url_without_its_port_is_the_verifier_in_use_not_another(provisioned) -> None:
    """A kept ``https://host`` (by hand, or written before URLs got the default port) is the verifier the config
    spells ``https://host:8443``: doctor compared the texts and said the device "was provisioned with" the very
    URL it uses, and appended to a failed live call's fix that the verifier had moved."""
    _, state = provisioned
    (state / "identity" / "verifier.url").write_text("https://127.0.0.1\n")
    report = run_doctor(config_for(state, "https://127.0.0.1:8443"))
    assert "provisioned with" not in by_name(report)["config"].detail
    assert not any("provisioned with" in (check.fix or "") for check in report.checks)


def test_a_kept_verifier_url_that_is_a_fifo_is_a_failed_line_not_a_hang(provisioned) -> None:
    """The config's URL wins, so doctor reads the kept one only to compare: a FIFO there blocked it for good."""
    _, state = provisioned
    kept = state / "identity" / "verifier.url"
    os.mkfifo(kept, 0o600)
    report = run_doctor(config_for(state))
    line = by_name(report)["provisioned verifier URL"]
    assert line.ok is False and "is a FIFO (named pipe), not a regular file" in line.detail
    assert f"rm -r {kept}" in line.fix and report.ok is False


# -- the local API socket's folder, as the daemon meets it when it starts serving


def api_config(tmp_path, socket, devices=True):
    """A config with a camera (a file: the daemon then serves the local API) and ``[api] socket``."""
    source = tmp_path / "face.jpg"
    source.write_bytes(b"")
    data = {"agent": {"state_dir": str(tmp_path / "state")}, "api": {"socket": str(socket)},
            "keyring": {"backend": "file-insecure-dev"}}
    if devices:
        data["device"] = [{"kind": "camera", "source": str(source)}]
    return parse_config(data)


def api_line(tmp_path, socket, devices=True):
    return by_name(run_doctor(api_config(tmp_path, socket, devices)))["local API socket"]


def test_the_api_socket_folder_is_not_judged_when_no_device_makes_the_daemon_serve_it(tmp_path) -> None:
    line = api_line(tmp_path, tmp_path / "no-such" / "api.sock", devices=False)
    assert line.ok is None and "no device configured" in line.detail


def test_an_api_socket_folder_of_this_user_passes(tmp_path) -> None:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o751)
    line = api_line(tmp_path, folder / "api.sock")
    assert line.ok is True and f"its folder {folder} (751, owned by" in line.detail, line
    assert api_line(tmp_path, tmp_path / "made-at-start" / "api.sock").ok is True  # a folder the daemon makes
    with socket.socket(socket.AF_UNIX) as bound:  # a socket there already (the daemon's own, or a stale one)
        bound.bind(str(folder / "api.sock"))
        assert api_line(tmp_path, folder / "api.sock").ok is True


def test_an_api_socket_folder_anyone_may_write_is_a_failed_line_naming_the_fix(tmp_path) -> None:
    """Without the sticky bit any user may unlink the socket and bind their own: the kiosk app talks to them."""
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    line = api_line(tmp_path, folder / "api.sock")
    assert line.ok is False and "has mode 777: any user may write it" in line.detail, line
    assert f"chmod o-w {folder}" in line.fix
    folder.chmod(0o1777)  # /tmp's way: others may write, but not remove what is not theirs
    assert api_line(tmp_path, folder / "api.sock").ok is True


def test_an_api_socket_folder_that_is_a_file_is_a_failed_line(tmp_path) -> None:
    (tmp_path / "run").write_text("a file\n")
    for where in (tmp_path / "run" / "api.sock", tmp_path / "run" / "deeper" / "api.sock"):
        line = api_line(tmp_path, where)
        assert line.ok is False and "is a file, not a folder" in line.detail, line
        assert "point [api] socket into a folder" in line.fix


def test_an_api_socket_path_that_is_no_socket_is_a_failed_line(tmp_path) -> None:
    """The daemon refuses it at start and leaves it alone: doctor says so before."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "api.sock").write_text("not a socket\n")
    line = api_line(tmp_path, folder / "api.sock")
    assert line.ok is False and "exists and is not a socket" in line.detail, line


def test_an_api_socket_path_too_long_for_a_unix_socket_is_a_failed_line(tmp_path) -> None:
    line = api_line(tmp_path, tmp_path / ("x" * 120) / "api.sock")
    assert line.ok is False and "a unix socket's path is at most 107" in line.detail, line


def test_an_api_socket_folder_another_user_owns_is_a_failed_line(tmp_path) -> None:
    if os.getuid() != 0:
        pytest.skip("giving a folder to another user (chown) needs root")
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o755)
    os.chown(folder, AGENT_UID, AGENT_UID)
    line = api_line(tmp_path, folder / "api.sock")
    assert line.ok is False and f"belongs to nobody (uid {AGENT_UID}) but doctor runs as root" in line.detail, line
    assert "-p User=capture-agent" in line.fix


def test_doctor_says_when_the_state_directory_has_no_room_for_the_audit_outbox(
    tmp_path, small_filesystem, make_test_ca
) -> None:
    """A full disk stops every session (no attempt the audit trail cannot record): the installer hears it first."""
    ca = make_test_ca("device-ca")
    config = config_for(small_filesystem / "state")  # 4 MiB, under the outbox's default bound of 16 MiB
    kek = load_kek(config, create=True)
    IdentityStore(config.agent.state_dir).write(
        *ca.issue_key_and_cert(["kiosk-1"], client=True), [ca.cert], kek.encode()
    )
    check = by_name(run_doctor(config))["free space"]
    assert check.ok is False and "under the audit outbox's bound (16 MiB" in check.detail
    assert f"df -h {config.agent.state_dir}" in check.fix and "outbox_max_bytes" in check.fix
    # as an SD card remounts after I/O errors
    subprocess.run([shutil.which("mount") or "mount", "-o", "remount,ro", str(small_filesystem)], check=True)
    check = by_name(run_doctor(config))["free space"]
    assert check.ok is False and "is read-only" in check.detail and "dmesg" in check.fix
    roomy = by_name(run_doctor(config_for(tmp_path / "empty")))
    assert "free space" not in roomy, "no state directory yet: the state directory check alone speaks"


def test_doctor_passes_free_space_with_room_for_the_outbox(provisioned) -> None:
    _, state = provisioned
    check = by_name(run_doctor(config_for(state)))["free space"]
    assert check.ok is True and "MiB free (the outbox is bounded at 16 MiB)" in check.detail


def test_doctor_says_libfprint_is_missing_for_a_configured_usb_reader(tmp_path) -> None:
    """The daemon starts without such a reader (it cannot be set up) and only /health said why: doctor was green.
    Python without PyGObject stands for the missing library (as tests/test_fprint.py does)."""
    code = (
        "import sys; sys.modules['gi'] = None\n"
        "from agent.config import parse_config\n"
        "from agent.doctor import run_doctor\n"
        f"config = parse_config({{'agent': {{'state_dir': {str(tmp_path / 'state')!r}}}, "
        "'keyring': {'backend': 'file-insecure-dev'}, 'device': [{'name': 'usb', 'kind': 'fprint'}]})\n"
        "check = next(c for c in run_doctor(config).checks if c.name == 'device usb')\n"
        "print(check.ok, check.detail, '|', check.fix)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    ok, _, fix = out.splitlines()[-1].partition("|")  # after the keyring's log lines
    assert ok.startswith("False fprint: PyGObject is not installed"), out
    assert "apt-get install libfprint-2-2 gir1.2-fprint-2.0" in fix
    here = by_name(run_doctor(parse_config({"agent": {"state_dir": str(tmp_path / "state")},
                                            "keyring": {"backend": "file-insecure-dev"},
                                            "device": [{"name": "usb", "kind": "fprint"}]})))
    assert here["device usb"].ok is True, "with libfprint installed (make test installs it), the same check passes"


def test_doctor_shows_each_check_before_the_live_call_answers(provisioned, tmp_path) -> None:
    """`capture-agent doctor` printed its whole report at the end: a verifier that took the connection and never
    answered kept the terminal blank for all of [network] call_deadline_s (20 s), with no word of what it
    waited for. Now each check is printed once final, and stderr names the call being waited on."""
    import fcntl

    _, state = provisioned
    with socket.create_server(("127.0.0.1", 0)) as listener:  # takes the connection, never speaks TLS
        url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        config_file = tmp_path / "agent.toml"
        config_file.write_text(
            f'[agent]\nstate_dir = "{state}"\n[verifier]\nurl = "{url}"\n'
            '[keyring]\nbackend = "file-insecure-dev"\n[network]\nretries = 0\ncall_deadline_s = 120.0\n'
            'connect_timeout_s = 120.0\n[logging]\nlevel = "error"\n'
        )
        doctor = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "doctor", "--config", str(config_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            connection, _ = listener.accept()  # the live call has begun: every check before it is final
            with connection:
                fcntl.fcntl(doctor.stdout.fileno(), fcntl.F_SETFL, os.O_NONBLOCK)
                shown = doctor.stdout.read() or b""  # what is on the pipe now, while the call waits
                assert doctor.poll() is None, "the call is still waiting"
        finally:
            done_out, done_err = doctor.communicate(timeout=60)  # the connection closed: the call fails at once
    assert b"[ok  ] state directory:" in shown and b"[ok  ] device identity:" in shown, shown
    assert b"verifier (live mTLS call)" not in shown, "the live call's line comes when it has answered"
    assert b"[FAIL] verifier (live mTLS call)" in done_out, done_out
    assert f"calling the verifier at {url}".encode() in done_err, done_err
    assert doctor.returncode == 1
