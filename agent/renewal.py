"""Certificate renewal: a new key and EST simplereenroll before the old one expires.

When: at about two thirds of the certificate's lifetime, with jitter so that a
fleet provisioned on the same day does not renew in the same minute.
How: a new key pair is generated, the CSR goes over the current mTLS connection,
the new identity is written atomically, and the client switches to it while the
requests already running finish on the old connection.

What comes back is checked before anything is replaced (:func:`check_renewed`).
A certificate from another CA or for another device id is refused and the
working one kept: writing it would delete the only identity this verifier's
CA ever vouched for. Refusing does not save the old certificate for long,
though: the verifier registered the new one when it issued it, so the old one
may no longer renew and lives only the verifier's grace period (``grace_s``,
10 minutes by default); the error says so, and that the device then needs a
new token. Dates are another matter: the verifier judged them by its own
clock, and it is the verifier that checks them on every connection, so a
certificate outside this device's clock is written all the same, with a
warning naming the clock (:func:`validity_warning`), as provisioning does.
"""

from __future__ import annotations

import datetime as dt
import random

import structlog
from cryptography import x509

from agent.client import VerifierClient
from agent.config import AgentConfig
from agent.errors import VerifierError
from agent.est import simple_reenroll
from agent.identity import DeviceIdentity, IdentityStore, build_csr, common_name, generate_key, issued_by

log = structlog.get_logger()

# How far ahead of the device's clock a renewed certificate may start: the verifier stamps
# not_before with its own clock, and a minute or two between two NTP-synchronised hosts is normal.
CLOCK_SKEW = dt.timedelta(minutes=5)
KEPT = "the current certificate is kept"
SUPERSEDED = (
    "the verifier has registered the refused certificate, so the current one stops working when its grace "
    "period ends (grace_s); then provision again with a new token (`capture-agent provision --force`)"
)


def check_renewed(certificate: x509.Certificate, old: DeviceIdentity) -> None:
    """Refuse a renewed certificate that is not this device's, before it replaces the one that works.

    It must name the same device and be signed by a CA the device already trusts.
    """
    if common_name(certificate) != old.device_id:
        raise VerifierError(
            f"the verifier renewed the certificate for another device id ({common_name(certificate)[:64]!r}, "
            f"not {old.device_id!r}); {KEPT}",
            fix=f"the verifier is misconfigured or is not this device's verifier: check [verifier] url and its "
            f"log; {SUPERSEDED}",
        )
    if not any(issued_by(certificate, ca) for ca in old.ca_certificates):
        raise VerifierError(
            f"the renewed certificate is not signed by the device's CA; {KEPT}",
            fix="the verifier signs with another CA than the one the device was provisioned with: check "
            f"[verifier] url and the verifier's CA files; {SUPERSEDED}",
        )


def validity_warning(certificate: x509.Certificate, now: dt.datetime | None = None) -> str | None:
    """Why a renewed certificate is outside this device's clock (give or take :data:`CLOCK_SKEW`), or None."""
    current = now or dt.datetime.now(dt.UTC)
    starts, ends = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if starts <= current + CLOCK_SKEW and current < ends:
        return None
    return (
        f"the renewed certificate is valid from {starts.isoformat()} to {ends.isoformat()}, not now "
        f"({current.isoformat()} by the device's clock): check the clocks of the device and of the verifier "
        "(`timedatectl`: NTP synchronised?)"
    )


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
        clock = validity_warning(certificate)
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
    if clock is not None:
        log.warning("renewed_certificate_outside_local_clock", audit=True, warning=clock)
    return new
