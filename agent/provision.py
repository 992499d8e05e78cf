"""`capture-agent provision`: give the device its identity, with no blind trust.

1. EST cacerts over an unverified TLS connection; the CA certificate that comes
   back must have the SHA-256 fingerprint the installer typed (out of band), or
   provisioning stops before anything secret is sent.
2. A new EC P-256 key is generated here; a CSR goes to EST simpleenroll with the
   one-time token, over TLS now verified against that CA and host name.
3. Key (encrypted PKCS#8 under the KEK from the keyring), certificate and CA are
   written atomically into the state directory. "CA" is the confirmed certificate
   and any CA of the answer it signed (a site root and the verifier's subordinate:
   :func:`agent.identity.trusted_under`); each is a trust anchor of its own.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from agent.client import CLOCK_FIX
from agent.config import AgentConfig
from agent.errors import IdentityError, ProvisioningError
from agent.est import fetch_ca_certificates, simple_enroll
from agent.identity import (
    DeviceIdentity,
    IdentityStore,
    build_csr,
    certificate_fingerprint,
    fingerprint_shape_fault,
    generate_key,
    normalise_fingerprint,
    trusted_under,
)
from agent.keystore import load_kek

log = structlog.get_logger()


@dataclass(frozen=True)
class ProvisionResult:
    identity: DeviceIdentity
    ca_fingerprint: str
    replaced: str = ""  # what a forced re-provisioning replaced, in words; "" for a first identity
    clock_warning: ProvisioningError | None = None  # the new certificate is not valid by this device's clock


def validity_by_local_clock(identity: DeviceIdentity, now: dt.datetime | None = None) -> ProvisioningError | None:
    """Why the certificate just issued is not valid by this device's clock, or None.

    Why warn at once: the verifier judged the dates by its clock when it issued the
    certificate; if this device's clock disagrees, every later call fails with errors
    that look like a broken identity, and the installer would spend another token.
    """
    now = now or dt.datetime.now(dt.UTC)
    if identity.not_before <= now < identity.not_after:
        return None
    verdict = "not valid yet" if now < identity.not_before else "already expired"
    return ProvisioningError(
        f"the certificate the verifier issued is {verdict} by this device's clock: valid from "
        f"{identity.not_before:%Y-%m-%d %H:%M:%S} to {identity.not_after:%Y-%m-%d %H:%M:%S} UTC, "
        f"the clock says {now:%Y-%m-%d %H:%M:%S} UTC",
        fix=f"{CLOCK_FIX}, then run `capture-agent doctor`; do not re-provision: the identity is stored, "
        "and a new token would get the same dates (if the clock is right, check the verifier's clock and cert_days)",
    )


def describe_existing(store: IdentityStore) -> str:
    """The identity already in the state directory, in words ("" if none): what --force would replace."""
    if not store.exists():
        return ""
    try:
        cert = store.load_certificate()
    except PermissionError as exc:  # root's files, read by the agent's user: a chown, not a replacement
        raise store.access_error(exc, "read the device certificate") from None
    except (OSError, IdentityError):  # a defect, or no regular file (a FIFO, a link): what --force replaces
        return "an unreadable identity"
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    device_id = str(names[0].value) if names else "?"
    return (
        f"device {device_id}, certificate serial {cert.serial_number:x}, "
        f"valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    )


def _expired_on(store: IdentityStore) -> dt.datetime | None:
    """When the stored certificate expired, by this clock; None when it has not (or cannot be read)."""
    try:
        not_after = store.load_certificate().not_valid_after_utc
    except (OSError, IdentityError):
        return None
    return not_after if dt.datetime.now(dt.UTC) >= not_after else None


def refuse_silent_replacement(store: IdentityStore, force: bool) -> str:
    """Re-provisioning replaces the device's identity: only when asked, and saying what goes."""
    existing = describe_existing(store)
    if existing and not force:
        expired_on = _expired_on(store)
        if expired_on is not None:
            # `renew` needs a valid certificate (simplereenroll runs over mutual TLS with it):
            # an expired one can only be replaced, with a new token.
            raise ProvisioningError(
                f"this device already has an identity in {store.state_dir} ({existing}), but it expired on "
                f"{expired_on:%Y-%m-%d %H:%M} UTC; provisioning again would replace it",
                fix="an expired certificate cannot be renewed: run the same command with --force and a new token "
                "(`capture-verifier token new --device ID`); first check the clock (`timedatectl`), since one "
                "that runs ahead makes a valid certificate look expired",
            )
        raise ProvisioningError(
            f"this device already has an identity in {store.state_dir} ({existing}); provisioning again "
            "would replace it",
            fix="to replace it, run the same command with --force (a running daemon switches to the new identity); "
            "to keep it, do nothing: `capture-agent doctor` checks it, `capture-agent renew` renews it",
        )
    return existing


def select_ca(certs: list, expected_fingerprint: str):  # type: ignore[type-arg]
    """The CA certificate whose fingerprint the installer typed, or a clear refusal."""
    wanted = normalise_fingerprint(expected_fingerprint)
    fault = fingerprint_shape_fault(expected_fingerprint)
    if fault is not None:
        raise ProvisioningError(f"--ca-fingerprint is {fault}",
                                fix="copy the 64 hex digits printed by `capture-verifier pki init` or `token new`")
    for cert in certs:
        if certificate_fingerprint(cert) == wanted:
            return cert
    seen = ", ".join(certificate_fingerprint(c) for c in certs)
    raise ProvisioningError(
        f"the verifier's CA does not have the fingerprint you gave (it sent {seen})",
        fix="check --verifier points to your verifier and the fingerprint was copied right; "
        "if both are right, someone may be intercepting the connection: do not continue",
    )


PASTE_FIX = (
    "paste the token exactly as `capture-verifier token new` printed it, without quotes or spaces "
    "(or give --token - and paste it on standard input)"
)


def check_token_text(token: str) -> None:
    """Refuse a token an HTTP header cannot carry (visible ASCII only), naming the character, never the token.

    Why here: a token pasted with typographic quotes or a space otherwise ends as
    an encoder's traceback deep in the HTTP client, after the CA was fetched.
    """
    if not token:
        raise ProvisioningError("the token is empty", fix=PASTE_FIX)
    for position, char in enumerate(token, start=1):
        if not "!" <= char <= "~":
            raise ProvisioningError(
                f"the token has a character no token has: U+{ord(char):04X} at position {position} of {len(token)} "
                "(quotes or a space picked up when it was copied?)",
                fix=PASTE_FIX,
            )


async def provision(config: AgentConfig, token: str, ca_fingerprint: str, *, force: bool = False) -> ProvisionResult:
    """Provision; an identity already there is replaced only with ``force`` (checked before the token is sent)."""
    check_token_text(token)
    url = config.verifier.url
    store = IdentityStore(config.agent.state_dir)
    replaced = refuse_silent_replacement(store, force)
    if config.keyring.backend == "systemd-credentials":
        load_kek(config, create=True)  # only reads: a missing credential is said before any network call
    log.info("provision_started", verifier=url)
    answered = await fetch_ca_certificates(url, config.network.connect_timeout_s)
    ca = select_ca(answered, ca_fingerprint)
    # Only now, with the verifier reached and its CA confirmed, is anything written: a mistyped URL, port or
    # fingerprint leaves no state directory and no key-encryption key behind. Still before the token is sent,
    # so a state directory or keyring that fails here spends no token. A state directory this run made is
    # removed again if it ends without an identity (a refused token): nothing half-written is left.
    fresh = not store.state_dir.exists() and not store.state_dir.is_symlink()
    store.ensure_state_dir()
    try:
        kek = load_kek(config, create=True)
        trusted = trusted_under(ca, answered)
        ca_pem = "".join(cert.public_bytes(serialization.Encoding.PEM).decode("ascii") for cert in trusted)
        log.info("ca_fingerprint_confirmed", fingerprint=certificate_fingerprint(ca), trusted_cas=len(trusted))
        key = generate_key()
        certificate = await simple_enroll(url, ca_pem, build_csr(key), token, config.network.read_timeout_s)
        async with store.writing():  # never half-way through a renewal by the daemon
            identity = store.write(key, certificate, trusted, kek.encode(), verifier_url=url)
    except BaseException:
        if fresh:
            shutil.rmtree(store.state_dir, ignore_errors=True)
        raise
    log.info(
        "certificate_issued",
        audit=True,
        device_id=identity.device_id,
        serial=identity.serial_hex,
        not_after=identity.not_after.isoformat(),
    )
    if replaced:
        log.info("identity_replaced", audit=True, replaced=replaced, device_id=identity.device_id)
    clock_warning = validity_by_local_clock(identity)
    if clock_warning is not None:
        log.warning("certificate_invalid_by_local_clock", error=clock_warning.message, fix=clock_warning.fix)
    return ProvisionResult(identity, certificate_fingerprint(ca), replaced, clock_warning)
