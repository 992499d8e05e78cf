"""`capture-agent forget`: erase a subject's prints on this device's match-on-sensor readers, through the daemon.

Through the running daemon's local API (``DELETE /prints/{subject}``), as sessions are: the daemon owns the
readers, and a second process opening one would fight it for the USB interface.
"""

from __future__ import annotations

import argparse
import sys

from agent.commands.sessions import _id_of, _unreachable_fix
from agent.errors import AgentError
from agent.options import add_common_arguments


class ForgetStillRunning(AgentError):
    """The daemon took the request but gave no answer within the wait: it may still be erasing.

    Why its own error: a read timeout was said "cannot reach the agent" (start the daemon...) of a daemon that
    had the request and carried on deleting, reader after reader; the person then ran it again, or gave up,
    without knowing what was erased. What it did is in the audit trail and the journal.
    """

    def __init__(self, subject: str, waited_s: float) -> None:
        super().__init__(
            f"the agent took the forget of {subject} but gave no answer within {waited_s:g} s: it may still be "
            "erasing (a reader slow to delete)",
            "look at what it did: `journalctl -u capture-agent` (prints_forgotten, one per reader) or the audit "
            f"trail's prints_forgotten events; then run `capture-agent forget --subject {subject}` again, which "
            "finishes whatever is left (or says nothing to forget)",
        )


DESCRIPTION = (
    "Erase a subject's prints from this device: the sealed print the agent keeps for each match-on-sensor reader "
    "(or the one --reader names) and, on a reader with its own storage, the print on the sensor. Through the "
    "running daemon. Exit 0 when all is erased, 1 when no reader holds a print of the subject, 2 when a part "
    "could not be erased (a reader unplugged, failing, or unable to delete a print: its sensor copy is left; the "
    "lines say how to finish), the request failed, or no answer came within the wait (the daemon may still be "
    "erasing: its journal says). The verifier's side: capture-verifier subject remove."
)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0, at most 3600 (e.g. 120)")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("forget", help="erase a subject's prints on this device (through the running daemon)",
                            description=DESCRIPTION)
    parser.add_argument("--subject", required=True, type=_id_of("subject id"),
                        help="the subject's id (as enrolled: case-sensitive)")
    parser.add_argument("--reader", help="only this [[device]] (default: every reader)")
    add_common_arguments(parser)
    parser.add_argument("--socket", help="the daemon's local API socket (default: [api] socket)")
    parser.add_argument("--wait-s", type=_positive_seconds, default=None,
                        help="how long to wait for the daemon's answer (default: past its worst case, from the "
                             "config: each libfprint reader's deletes, one after another)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import httpx

    from agent.errors import TransportError
    from agent.forget import forget_wait_s
    from agent.runtime import config_from_args

    config = config_from_args(args)
    socket_path = args.socket or str(config.api.socket)
    params = {"reader": args.reader} if args.reader else {}
    wait_s = args.wait_s or forget_wait_s(config)
    try:
        # Each delete on a sensor is bounded by the reader's own timeout, reader after reader: the wait covers them.
        with httpx.Client(transport=httpx.HTTPTransport(uds=socket_path), base_url="http://agent",
                          timeout=httpx.Timeout(10.0, read=wait_s)) as api:
            answer = api.delete(f"/prints/{args.subject}", params=params)
    except httpx.ReadTimeout:
        raise ForgetStillRunning(args.subject, wait_s) from None
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
