"""`capture-agent health`: one live mTLS call to the verifier, with the TLS facts."""

from __future__ import annotations

import argparse
import asyncio
import json

from agent.runtime import add_common_arguments, config_from_args, open_client


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "health",
        help="call the verifier's /v1/health over mutual TLS",
        description="One live call to the verifier's /v1/health with the device certificate, over HTTP/2; "
        "prints the verifier's answer and the TLS facts (version, cipher, ALPN) as JSON.",
    )
    add_common_arguments(parser)
    parser.set_defaults(run=run)


async def _health(args: argparse.Namespace) -> dict:
    config = config_from_args(args)
    async with open_client(config) as client:
        answer = await client.call("GET", "/v1/health")
        return {"verifier": answer, "tls": client.last_tls}


def run(args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(_health(args)), indent=2))
    return 0
