"""Device identity end to end, against the reference verifier running as a process."""

from __future__ import annotations

import asyncio
import shutil
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from structlog.testing import capture_logs

from agent.client import VerifierClient
from agent.devstack import LocalVerifier, device_config
from agent.doctor import run_doctor
from agent.errors import ProvisioningError, TLSPolicyError, VerifierError
from agent.est import simple_reenroll
from agent.handshake import DeviceCertificateRefused
from agent.identity import IdentityStore, build_csr
from agent.keystore import load_kek
from agent.provision import provision
from agent.renewal import renew
from verifier.pki import CertificateAuthority


def test_provisioning_end_to_end(provisioned, verifier) -> None:
    config, identity = provisioned
    assert identity.device_id == "kiosk-1"
    assert identity.ca_certificates[0].fingerprint  # the CA the installer confirmed
    assert stat.S_IMODE(config.agent.state_dir.stat().st_mode) == 0o700
    assert b"ENCRYPTED PRIVATE KEY" in identity.key_path.read_bytes()
    report = run_doctor(config)
    assert report.ok, [(c.name, c.detail, c.fix) for c in report.checks if c.ok is False]
    assert report.facts["tls"]["tls_version"] == "TLSv1.3"
    assert report.facts["tls"]["alpn"] == "h2"


def test_a_bootstrap_token_works_once(verifier, tmp_path) -> None:
    token = verifier.new_token("kiosk-2")
    first = asyncio.run(provision(device_config(tmp_path / "a", verifier.url), token, verifier.ca_fingerprint))
    assert first.identity.device_id == "kiosk-2"
    with pytest.raises(ProvisioningError) as info:
        asyncio.run(provision(device_config(tmp_path / "b", verifier.url), token, verifier.ca_fingerprint))
    assert "already used" in str(info.value)
    assert "token new" in info.value.fix
    # A token this verifier never printed (mistyped, or another verifier's): the fix names the verifier asked.
    with pytest.raises(ProvisioningError, match="unknown bootstrap token") as info:
        asyncio.run(provision(device_config(tmp_path / "c", verifier.url), "x" * 43, verifier.ca_fingerprint))
    assert f"only on the verifier that printed it: check --verifier ({verifier.url})" in info.value.fix


def test_a_wrong_ca_fingerprint_stops_before_the_token_is_sent(verifier, tmp_path) -> None:
    token = verifier.new_token("kiosk-3")
    with pytest.raises(ProvisioningError, match="does not have the fingerprint"):
        asyncio.run(provision(device_config(tmp_path / "a", verifier.url), token, "ab" * 32))
    # The token was never used, so the right fingerprint still works with it.
    result = asyncio.run(provision(device_config(tmp_path / "b", verifier.url), token, verifier.ca_fingerprint))
    assert result.identity.device_id == "kiosk-3"


def test_a_mistyped_url_port_or_fingerprint_leaves_nothing_behind(verifier, plain_http_port, tmp_path) -> None:
    """An installer's typo used to leave a state directory and an INSECURE-dev-keyring.json for a device that
    had no identity: the next look at the folder suggested a half-done provisioning."""
    token = verifier.new_token("kiosk-typo")
    mistakes = {
        "port": (f"https://127.0.0.1:{plain_http_port}", verifier.ca_fingerprint),
        "fingerprint": (verifier.url, "ab" * 32),
    }
    for name, (url, fingerprint) in mistakes.items():
        state = tmp_path / name
        with pytest.raises(ProvisioningError):
            asyncio.run(provision(device_config(state, url), token, fingerprint))
        assert not state.exists(), f"a wrong {name} left {sorted(p.name for p in state.iterdir())}"
    result = asyncio.run(provision(device_config(tmp_path / "right", verifier.url), token, verifier.ca_fingerprint))
    assert result.identity.device_id == "kiosk-typo", "the token was not spent by the mistakes"
    # The token, now used, is refused after the CA was confirmed: the folder made for it goes again.
    with pytest.raises(ProvisioningError, match="already used"):
        asyncio.run(provision(device_config(tmp_path / "again", verifier.url), token, verifier.ca_fingerprint))
    assert not (tmp_path / "again").exists()
    # A state directory that was there before (made by tmpfiles, say) is never removed.
    (tmp_path / "kept").mkdir(mode=0o700)
    with pytest.raises(ProvisioningError, match="already used"):
        asyncio.run(provision(device_config(tmp_path / "kept", verifier.url), token, verifier.ca_fingerprint))
    assert (tmp_path / "kept").is_dir()


def test_renewal_gives_a_new_key_and_serial(provisioned) -> None:
    config, identity = provisioned
    old_key = identity.private_key().public_key().public_numbers()

    async def go():
        async with VerifierClient(config, identity) as client:
            new = await renew(config, client)
            health = await client.call("GET", "/v1/health")
            return new, health

    new, health = asyncio.run(go())
    assert new.serial_hex != identity.serial_hex
    assert new.private_key().public_key().public_numbers() != old_key
    assert not identity.directory.exists(), "the superseded key is deleted from the device"
    assert health["device_id"] == "kiosk-1"
    assert new.device_id == identity.device_id


def test_renewal_with_the_same_key_is_refused(provisioned) -> None:
    config, identity = provisioned

    async def go() -> None:
        async with VerifierClient(config, identity) as client:
            await simple_reenroll(client, build_csr(identity.private_key(), "kiosk-1"))

    with pytest.raises(VerifierError) as info:
        asyncio.run(go())
    assert info.value.status == 400 and "new EC P-256 key" in info.value.fix


def test_a_revoked_device_is_refused_on_its_next_request(provisioned, verifier) -> None:
    config, identity = provisioned

    async def go() -> None:
        async with VerifierClient(config, identity) as client:
            await client.call("GET", "/v1/health")  # fine, connection open
            verifier.revoke("kiosk-1")
            await client.call("GET", "/v1/health")  # same connection, next request

    with pytest.raises(VerifierError) as info:
        asyncio.run(go())
    assert info.value.status == 403 and "revoked" in str(info.value)


@pytest.mark.parametrize(
    ("pasted", "named"),
    [("\u201c{token}\u201d", "U+201C at position 1"), ("{token} ", "U+0020 at position 44"), ("", "empty")],
    ids=["typographic-quotes", "trailing-space", "empty"],
)
def test_a_token_pasted_with_quotes_or_spaces_is_refused_naming_the_character_not_the_token(
    verifier, tmp_path, pasted, named
) -> None:
    token = verifier.new_token("kiosk-4")
    with pytest.raises(ProvisioningError) as info:
        asyncio.run(provision(device_config(tmp_path / "a", verifier.url), pasted.format(token=token),
                              verifier.ca_fingerprint))
    assert token not in info.value.message and token not in info.value.fix
    assert "without quotes or spaces" in info.value.fix
    assert named in info.value.message
    # Refused before anything was sent: the token still provisions the device.
    result = asyncio.run(provision(device_config(tmp_path / "b", verifier.url), token, verifier.ca_fingerprint))
    assert result.identity.device_id == "kiosk-4"


def test_a_device_certificate_the_verifier_refuses_in_the_handshake_is_audited(provisioned, verifier, tmp_path) -> None:
    """The verifier's device CA was replaced (its server certificate kept): it closes this device's connections.

    The client's probe names the device certificate as the cause; that is a TLS handshake
    failure like any other (invariant 5): audited, and the daemon's hook told.
    """
    config, identity = provisioned
    verifier.stop()
    rotated_pki = tmp_path / "rotated"
    rotated_pki.mkdir(mode=0o700)
    rotated = CertificateAuthority.create("rotated device CA")
    (rotated_pki / "ca.pem").write_bytes(rotated.cert.public_bytes(serialization.Encoding.PEM))
    (rotated_pki / "ca.key").write_bytes(rotated.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (rotated_pki / "ca.key").chmod(0o600)  # the verifier refuses a CA key others may read
    for name in ("server.pem", "server.key"):
        shutil.copy(verifier.pki_dir / name, rotated_pki / name)
    told: list[str] = []
    with LocalVerifier(rotated_pki) as moved:
        moved.start()
        local = config.with_overrides(verifier={"url": moved.url}, network={"retries": 1, "backoff_base_s": 0.05})

        async def call() -> None:
            async with VerifierClient(local, identity, on_tls_failure=told.append) as client:
                await client.call("GET", "/v1/health")

        with capture_logs() as logs, pytest.raises(TLSPolicyError) as info:
            asyncio.run(call())
    assert isinstance(info.value, DeviceCertificateRefused)
    assert told == [info.value.message]
    audited = [e for e in logs if e["event"] == "tls_handshake_failed"]
    assert audited and audited[0]["audit"] is True and audited[0]["reason"] == info.value.message


@pytest.mark.parametrize("kept", ["fifo", "not https"])
def test_a_device_on_its_provisioned_url_keeps_it_when_the_new_kept_url_is_refused(verifier, tmp_path, kept) -> None:
    """The identity is switched under the running client and its kept verifier.url is a FIFO or no verifier
    URL: the client keeps the URL that works and logs why, naming the file (not "[verifier] url", a key of a
    config file the person never wrote), instead of failing the request (or hanging on the FIFO)."""
    import os

    from agent.config import parse_config
    from agent.identity import VERIFIER_FILE
    from agent.runtime import with_provisioned_verifier

    bare = {"agent": {"state_dir": str(tmp_path / "state")}, "keyring": {"backend": "file-insecure-dev"}}
    asyncio.run(provision(parse_config({**bare, "verifier": {"url": verifier.url}}), verifier.new_token("k-kept"),
                          verifier.ca_fingerprint))
    config = with_provisioned_verifier(parse_config(bare))
    store = IdentityStore(config.agent.state_dir)

    async def scenario() -> str:
        identity = store.load(load_kek(config).encode())
        async with VerifierClient(config, identity) as client:
            await provision(parse_config({**bare, "verifier": {"url": verifier.url}}),
                            verifier.new_token("k-kept"), verifier.ca_fingerprint, force=True)
            path = store.current / VERIFIER_FILE
            path.unlink()
            if kept == "fifo":
                os.mkfifo(path, 0o600)
            else:
                path.write_text("ftp://elsewhere\n")
            assert (await client.request("GET", "/v1/health")).status_code == 200
            return client.config.verifier.url

    with capture_logs() as logs:
        assert asyncio.run(scenario()) == verifier.url
    refused = [e for e in logs if e["event"] == "provisioned_verifier_url_refused"]
    assert refused, logs
    path = store.current / VERIFIER_FILE
    said = "is a FIFO (named pipe)" if kept == "fifo" else f"bad value {path} = 'ftp://elsewhere'"
    assert said in refused[0]["error"] and "[verifier] url" not in refused[0]["error"], refused


def test_a_device_on_its_provisioned_url_follows_a_reprovisioning_to_another_url(verifier, tmp_path) -> None:
    """The verifier moved (another name): `provision --force --verifier NEW` while the daemon runs switches the
    identity, and a daemon whose URL is the provisioned one must call NEW from then on, not the old name."""
    from agent.config import parse_config
    from agent.runtime import with_provisioned_verifier

    port = verifier.url.rsplit(":", 1)[1]
    old_url, new_url = f"https://127.0.0.1:{port}", f"https://localhost:{port}"
    bare = {"agent": {"state_dir": str(tmp_path / "state")}, "keyring": {"backend": "file-insecure-dev"}}
    asyncio.run(provision(parse_config({**bare, "verifier": {"url": old_url}}), verifier.new_token("k-moved"),
                          verifier.ca_fingerprint))
    config = with_provisioned_verifier(parse_config(bare))
    assert config.verifier.url == old_url and config.verifier_url_origin.startswith("as provisioned")

    async def scenario() -> tuple[str, str]:
        identity = IdentityStore(config.agent.state_dir).load(load_kek(config).encode())
        async with VerifierClient(config, identity) as client:
            assert (await client.request("GET", "/v1/health")).status_code == 200
            await provision(parse_config({**bare, "verifier": {"url": new_url}}), verifier.new_token("k-moved"),
                            verifier.ca_fingerprint, force=True)
            answer = await client.request("GET", "/v1/health")
            return client.config.verifier.url, str(answer.url)

    followed, called = asyncio.run(scenario())
    assert followed == new_url and called.startswith(new_url)


def test_a_verifier_port_that_takes_the_connection_and_never_answers_says_no_answer_within(tmp_path) -> None:
    """Such a port (a firewall or proxy that holds the connection, a service that waits for its client to speak)
    was said as "cannot reach the verifier at URL: ConnectTimeout: ", the exception's empty text."""
    import socket

    from agent.est import fetch_ca_certificates

    with socket.create_server(("127.0.0.1", 0)) as listener:  # the kernel completes the connection; nobody talks
        url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(ProvisioningError) as refused:
            asyncio.run(fetch_ca_certificates(url, 0.3))
    message = refused.value.message
    assert message.startswith(f"cannot reach the verifier at {url}: no answer within 0.3 s"), message
    assert not message.rstrip().endswith(":"), message
    assert "retry with the same one" in refused.value.fix
