"""A site's own PKI (certs/README.md, "Plugging in your own CA"), end to end with real processes.

The verifier signs device certificates with a subordinate CA (``ca.pem`` holds it,
then the site root; ``ca.key`` is the subordinate's). Its server certificate comes
either from that subordinate (sent with its chain) or straight from the root. The
installer types the fingerprint of one certificate that ``cacerts`` answers with.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from structlog.testing import capture_logs

from agent.client import VerifierClient
from agent.devstack import LocalVerifier, device_config
from agent.doctor import run_doctor
from agent.errors import ProvisioningError
from agent.identity import certificate_fingerprint, trusted_under
from agent.provision import provision
from agent.renewal import renew
from tests.conftest import TestCA
from verifier.pki import CertificateAuthority


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class SitePKI:
    """A root, a subordinate that signs devices, and the verifier's server certificate from one of them."""

    def __init__(self, folder: Path, server_from: str) -> None:
        self.root_ca = TestCA("Site Root CA", folder.parent / "site-cas")
        self.sub_ca = TestCA("capture-verifier devices (site)", folder.parent / "site-cas", issuer=self.root_ca)
        self.root, self.sub = self.root_ca.cert, self.sub_ca.cert
        server_key, server = (self.sub_ca if server_from == "subordinate" else self.root_ca).issue_key_and_cert(
            ["127.0.0.1"]
        )
        self.verifier = LocalVerifier(folder)
        self.verifier.init_pki()  # the rest of the state (keys of the stores), then the site's certificates
        (folder / "ca.pem").write_bytes(_pem(self.sub, self.root))
        (folder / "ca.key").write_bytes(_key_pem(self.sub_ca.key))
        (folder / "server.pem").write_bytes(_pem(server, *([self.sub] if server_from == "subordinate" else [])))
        (folder / "server.key").write_bytes(_key_pem(server_key))


@pytest.fixture
def site_pki(tmp_path: Path, request: pytest.FixtureRequest):
    pki = SitePKI(tmp_path / "pki", request.param)
    with pki.verifier:
        pki.verifier.start()
        yield pki


def _provision(pki: SitePKI, folder: Path, device_id: str, anchor: x509.Certificate):
    config = device_config(folder, pki.verifier.url)
    token = pki.verifier.new_token(device_id)
    return config, asyncio.run(provision(config, token, certificate_fingerprint(anchor)))


@pytest.mark.parametrize(
    ("site_pki", "confirmed"),
    [("subordinate", "sub"), ("subordinate", "root"), ("root", "root")],
    ids=["server-from-subordinate-confirm-subordinate", "server-from-subordinate-confirm-root", "server-from-root"],
    indirect=["site_pki"],
)
def test_a_device_provisions_renews_and_passes_doctor_under_a_site_pki(site_pki, confirmed, tmp_path) -> None:
    anchor = getattr(site_pki, confirmed)
    config, result = _provision(site_pki, tmp_path / "device", "kiosk-1", anchor)
    assert result.identity.device_id == "kiosk-1"
    assert result.identity.certificate.issuer == site_pki.sub.subject
    # The confirmed CA, and the subordinate below it when the root was confirmed: never more.
    assert [c.subject for c in result.identity.ca_certificates] == [
        c.subject for c in ([site_pki.root, site_pki.sub] if confirmed == "root" else [site_pki.sub])
    ]

    async def renew_then_call():
        async with VerifierClient(config, result.identity) as client:
            renewed = await renew(config, client)
            return renewed, (await client.call("GET", "/v1/health"))["device_id"]

    renewed, seen_as = asyncio.run(renew_then_call())
    assert renewed.serial_hex != result.identity.serial_hex and seen_as == "kiosk-1"
    report = run_doctor(config)
    assert report.ok, [(c.name, c.detail, c.fix) for c in report.checks if c.ok is False]


@pytest.mark.parametrize("site_pki", ["root"], indirect=True)
def test_confirming_the_subordinate_when_the_server_certificate_comes_from_the_root_names_the_root(
    site_pki, tmp_path
) -> None:
    with capture_logs() as logs, pytest.raises(ProvisioningError) as info:
        _provision(site_pki, tmp_path / "device", "kiosk-1", site_pki.sub)
    assert "fingerprint of the root" in info.value.fix
    refused = [e for e in logs if e["event"] == "tls_handshake_failed"]
    assert refused and refused[0]["audit"] is True and refused[0]["est"] == "simpleenroll"
    # The token was not spent: confirming the root instead works with the same device id's next token.
    _config, result = _provision(site_pki, tmp_path / "device-2", "kiosk-1", site_pki.root)
    assert result.identity.device_id == "kiosk-1"


@pytest.mark.parametrize("site_pki", ["subordinate"], indirect=True)
def test_a_client_certificate_from_the_site_root_is_not_a_device_certificate(site_pki, tmp_path) -> None:
    """The verifier's TLS layer anchors on the subordinate alone: the root in ca.pem vouches for no client."""
    cert_file, key_file = site_pki.root_ca.issue("kiosk-9", ["kiosk-9"], client=True)
    ctx = ssl.create_default_context(cadata=_pem(site_pki.sub, site_pki.root).decode())
    ctx.load_cert_chain(cert_file, key_file)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # the verdict on the client certificate comes in the handshake
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((site_pki.verifier.host, site_pki.verifier.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),  # an alert, or the connection closed: never an HTTP/2 preface
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.recv(1)


def test_only_the_cas_the_confirmed_one_signed_are_kept_from_the_cacerts_answer(tmp_path) -> None:
    """Whoever answers cacerts (unverified TLS) cannot add a CA of its own beside the real one."""
    root_ca = TestCA("Site Root CA", tmp_path / "site")
    rogue_ca = TestCA("Site Root CA", tmp_path / "rogue")  # the same name, another key
    root, sub = root_ca.cert, TestCA("devices", tmp_path / "site", issuer=root_ca).cert
    rogue, rogue_sub = rogue_ca.cert, TestCA("devices", tmp_path / "rogue", issuer=rogue_ca).cert
    _, leaf = root_ca.issue_key_and_cert(["kiosk-1"], client=True)
    answer = [rogue_sub, sub, rogue, leaf, root]
    assert trusted_under(root, answer) == [root, sub]
    assert trusted_under(sub, answer) == [sub]


def test_a_chain_listed_backwards_is_found_whole_with_each_signature_checked_once(tmp_path, monkeypatch) -> None:
    """A chain of CAs in any order, repeats included: every link found, at most n x n signature checks."""
    from agent import identity

    chain = [TestCA("Site Root CA", tmp_path / "site")]
    for depth in range(7):
        chain.append(TestCA(f"tier {depth}", tmp_path / "site", issuer=chain[-1]))
    stranger = TestCA("tier 3", tmp_path / "rogue").cert  # a name in the chain, another key
    answer = [ca.cert for ca in reversed(chain)] + [stranger, chain[4].cert]
    checks: list[int] = []
    real = identity.issued_by
    monkeypatch.setattr(identity, "issued_by", lambda cert, ca: checks.append(1) or real(cert, ca))
    assert trusted_under(chain[0].cert, answer) == [ca.cert for ca in chain]
    distinct = len(answer) - 1  # the repeat counts once
    assert len(checks) <= distinct * distinct, len(checks)


def test_a_ca_key_that_is_not_the_first_certificates_is_refused_naming_the_order(tmp_path) -> None:
    pki = SitePKI(tmp_path / "pki", "subordinate")
    (tmp_path / "pki" / "ca.pem").write_bytes(_pem(pki.root, pki.sub))  # root first: ca.key is the subordinate's
    with pytest.raises(ValueError, match="first certificate"):
        CertificateAuthority.load(tmp_path / "pki")
    (tmp_path / "pki" / "ca.pem").write_bytes(_pem(pki.sub, pki.root))
    loaded = CertificateAuthority.load(tmp_path / "pki")
    assert loaded.cert == pki.sub and loaded.chain == (pki.root,)
