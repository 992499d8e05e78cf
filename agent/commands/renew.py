"""`capture-agent renew`: renew the device certificate now (the daemon does it on schedule)."""

from __future__ import annotations

import argparse
import asyncio

from agent.runtime import add_common_arguments, config_from_args, open_client


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "renew",
        help="renew the device certificate now, with a new key",
        description="Generate a new key on this device and renew its certificate with EST simplereenroll "
        "over the current mutual-TLS connection; the new identity replaces the old one atomically. A running "
        "daemon picks it up before its next request (it follows the state directory's `identity` link), so "
        "it needs no restart. The daemon also renews on its own at about two thirds of the lifetime.",
    )
    add_common_arguments(parser)
    parser.set_defaults(run=run)


async def _renew(args: argparse.Namespace) -> tuple[str, str, str]:
    from agent.renewal import renew

    config = config_from_args(args)
    async with open_client(config) as client:
        old = client.identity.serial_hex
        new = await renew(config, client)
        await client.call("GET", "/v1/health")  # the new certificate works
        return old, new.serial_hex, f"{new.not_after:%Y-%m-%d %H:%M}"


def run(args: argparse.Namespace) -> int:
    old, new, until = asyncio.run(_renew(args))
    print(f"renewed: serial {old} -> {new}, valid until {until} UTC")
    return 0
