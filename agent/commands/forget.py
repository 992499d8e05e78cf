"""`capture-agent forget`: erase a subject's prints on this device's match-on-sensor readers, through the daemon.

Through the running daemon's local API (``DELETE /prints/{subject}``), as sessions are: the daemon owns the
readers, and a second process opening one would fight it for the USB interface.
"""

from __future__ import annotations

import argparse
import sys

from agent.commands.sessions import _id_of, _unreachable_fix
from agent.options import add_common_arguments

DESCRIPTION = (
    "Erase a subject's prints from this device: the sealed print the agent keeps for each match-on-sensor reader "
    "(or the one --reader names) and, on a reader with its own storage, the print on the sensor. Through the "
    "running daemon. Exit 0 when all is erased, 1 when no reader holds a print of the subject, 2 when a part "
    "could not be erased (a reader unplugged: its sensor copy is left; the lines say how to finish) or the "
    "request failed. The verifier's side: capture-verifier subject remove."
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("forget", help="erase a subject's prints on this device (through the running daemon)",
                            description=DESCRIPTION)
    parser.add_argument("--subject", required=True, type=_id_of("subject id"),
                        help="the subject's id (as enrolled: case-sensitive)")
    parser.add_argument("--reader", help="only this [[device]] (default: every reader)")
    add_common_arguments(parser)
    parser.add_argument("--socket", help="the daemon's local API socket (default: [api] socket)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import httpx

    from agent.errors import TransportError
    from agent.runtime import config_from_args

    config = config_from_args(args)
    socket_path = args.socket or str(config.api.socket)
    params = {"reader": args.reader} if args.reader else {}
    try:
        # A delete on the sensor is bounded by the reader's own timeout (10 s); the rest is files.
        with httpx.Client(transport=httpx.HTTPTransport(uds=socket_path), base_url="http://agent",
                          timeout=httpx.Timeout(10.0, read=60.0)) as api:
            answer = api.delete(f"/prints/{args.subject}", params=params)
    except httpx.TransportError as exc:
        raise TransportError(
            f"cannot reach the agent's local API at {socket_path} ({type(exc).__name__}: {exc})",
            fix=_unreachable_fix(str(socket_path)),
        ) from None
    body = answer.json()
    if answer.status_code != 200:
        print(f"error: {body.get('error')}", file=sys.stderr)
        if body.get("fix"):
            print(f"fix: {body['fix']}", file=sys.stderr)
        # 1 only for "nothing to forget": a daemon older than this route says 404 too ("no route"), which is no
        # answer about the subject.
        nothing = answer.status_code == 404 and str(body.get("error", "")).startswith("nothing to forget")
        return 1 if nothing else 2
    for line in body["forgotten"]:
        print(line["message"])
    return 0 if body["complete"] else 2
