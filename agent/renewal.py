"""Certificate renewal: a new key and EST simplereenroll before the old one expires.

When: at about two thirds of the certificate's lifetime, with jitter so that a
fleet provisioned on the same day does not renew in the same minute.
How: a new key pair is generated, the CSR goes over the current mTLS connection,
the new identity is written atomically, and the client switches to it while the
requests already running finish on the old connection.

What comes back is checked before anything is replaced (:func:`check_renewed`):
writing the new identity deletes the old one, so a certificate the device could
not use (from another CA, for another device id, not valid now: a verifier
with a wrong clock, or one answering garbage) would otherwise leave a device
that worked unable to connect until someone brought a new token.
"""

from __future__ import annotations

import datetime as dt
import random

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from agent.client import VerifierClient
from agent.config import AgentConfig
from agent.errors import VerifierError
from agent.est import simple_reenroll
from agent.identity import DeviceIdentity, IdentityStore, build_csr, common_name, generate_key

log = structlog.get_logger()

# How far ahead of the device's clock a renewed certificate may start: the verifier stamps
# not_before with its own clock, and a minute or two between two NTP-synchronised hosts is normal.
CLOCK_SKEW = dt.timedelta(minutes=5)
KEPT = "the current certificate is kept and the renewal is retried later"


def check_renewed(certificate: x509.Certificate, old: DeviceIdentity, now: dt.datetime | None = None) -> None:
    """Refuse a renewed certificate the device could not use, before it replaces the one that works.

    It must name the same device, be signed by a CA the device already trusts,
    and be valid now (give or take :data:`CLOCK_SKEW`).
    """
    if common_name(certificate) != old.device_id:
        raise VerifierError(
            f"the verifier renewed the certificate for another device id ({common_name(certificate)[:64]!r}, "
            f"not {old.device_id!r}); {KEPT}",
            fix="the verifier is misconfigured or is not this device's verifier: check [verifier] url and its log",
        )
    if not any(_issued_by(certificate, ca) for ca in old.ca_certificates):
        raise VerifierError(
            f"the renewed certificate is not signed by the device's CA; {KEPT}",
            fix="the verifier signs with another CA than the one the device was provisioned with: check "
            "[verifier] url and the verifier's CA files",
        )
    current = now or dt.datetime.now(dt.UTC)
    starts, ends = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if starts > current + CLOCK_SKEW or ends <= current:
        raise VerifierError(
            f"the renewed certificate is valid from {starts.isoformat()} to {ends.isoformat()}, not now "
            f"({current.isoformat()} by the device's clock); {KEPT}",
            fix="check the clocks of the device and of the verifier (`timedatectl`: NTP synchronised?)",
        )


def _issued_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def renewal_time(
    identity: DeviceIdentity, at_fraction: float, jitter_fraction: float, rng: random.Random | None = None
) -> dt.datetime:
    """When to renew: ``not_before + lifetime * (at_fraction ± jitter)``."""
    lifetime = identity.not_after - identity.not_before
    jitter = (rng or random).uniform(-jitter_fraction, jitter_fraction)
    return identity.not_before + lifetime * (at_fraction + jitter)


def seconds_until_renewal(identity: DeviceIdentity, config: AgentConfig, now: dt.datetime | None = None) -> float:
    when = renewal_time(identity, config.renewal.at_fraction, config.renewal.jitter_fraction)
    current = now or dt.datetime.now(dt.UTC)
    return max(0.0, (when - current).total_seconds())


async def renew(config: AgentConfig, client: VerifierClient) -> DeviceIdentity:
    """Renew now: new key, simplereenroll, atomic write, hot swap of the client.

    Under the identity lock, and from the identity the state directory holds now:
    if another process renewed meanwhile, this renews *that* certificate rather
    than re-enrolling with a superseded one.
    """
    store = IdentityStore(config.agent.state_dir)
    async with store.writing():
        await client.follow_identity()
        old = client.identity
        key = generate_key()
        certificate = await simple_reenroll(client, build_csr(key, old.device_id))
        check_renewed(certificate, old)
        new = store.write(key, certificate, old.ca_certificates, old.passphrase)
        await client.replace_identity(new)
    log.info(
        "certificate_renewed",
        audit=True,
        device_id=new.device_id,
        old_serial=old.serial_hex,
        serial=new.serial_hex,
        not_after=new.not_after.isoformat(),
    )
    return new
