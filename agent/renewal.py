"""Certificate renewal: a new key and EST simplereenroll before the old one expires.

When: at about two thirds of the certificate's lifetime, with jitter so that a
fleet provisioned on the same day does not renew in the same minute.
How: a new key pair is generated, the CSR goes over the current mTLS connection,
the new identity is written atomically, and the client switches to it while the
requests already running finish on the old connection.
"""

from __future__ import annotations

import datetime as dt
import random

import structlog

from agent.client import VerifierClient
from agent.config import AgentConfig
from agent.est import simple_reenroll
from agent.identity import DeviceIdentity, IdentityStore, build_csr, generate_key

log = structlog.get_logger()


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
