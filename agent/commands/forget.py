"""`capture-agent forget`: erase a subject's prints on this device's match-on-sensor readers, through the daemon.

Through the running daemon's local API (``DELETE /prints/{subject}``), as sessions are: the daemon owns the
readers, and a second process opening one would fight it for the USB interface. When no daemon runs (nothing
listens at the socket, and no process holds the state directory), the command erases them itself, as the daemon
would (:mod:`agent.forget_here`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.commands.sessions import _id_of, _unreachable_fix
from agent.errors import AgentError
from agent.options import add_common_arguments


class ForgetStillRunning(AgentError):
    """The daemon took the request but gave no answer within the wait: it may still be erasing.

    Why its own error: a read timeout was said "cannot reach the agent" (start the daemon...) of a daemon that
    had the request and carried on deleting, reader after reader; the person then ran it again, or gave up,
    without knowing what was erased. What it did is in the audit trail and the journal.
    """

    def __init__(self, subject: str, waited_s: float, reader: str = "") -> None:
        what = f"clearing of {reader}" if not subject else f"forget of {subject}"
        again = f"--everyone --reader {reader}" if not subject else f"--subject {subject}"
        super().__init__(
            f"the agent took the {what} but gave no answer within {waited_s:g} s: it may still be "
            "erasing (a reader slow to delete)",
            "look at what it did: `journalctl -u capture-agent` (prints_forgotten, one per reader) or the audit "
            f"trail's prints_forgotten events; then run `capture-agent forget {again}` again, which "
            "finishes whatever is left (or says nothing to forget)",
        )


DESCRIPTION = (
    "Erase a subject's prints from this device: the sealed print the agent keeps for each match-on-sensor reader "
    "(or the one --reader names) and, on a reader with its own storage, the print on the sensor. Through the "
    "running daemon. Exit 0 when all is erased, 1 when no reader holds a print of the subject, 2 when a part "
    "could not be erased (a reader unplugged, failing, or unable to delete a print: its sensor copy is left; the "
    "lines say how to finish), the request failed, or no answer came within the wait (the daemon may still be "
    "erasing: its journal says). With --everyone and --reader R: the reader is cleared, every print on its sensor "
    "(everyone's) and every print the agent keeps for it. With no daemon running, the command erases by itself. "
    "The verifier's side: capture-verifier subject remove."
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
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--subject", type=_id_of("subject id"), help="the subject's id (as enrolled: case-sensitive)")
    who.add_argument("--everyone", action="store_true",
                     help="clear the reader --reader names: every print on its sensor (everyone's, those other "
                          "software enrolled included) and every print the agent keeps for it")
    parser.add_argument("--reader", help="only this [[device]] (default: every reader; --everyone needs one)")
    add_common_arguments(parser)
    parser.add_argument("--socket", help="the daemon's local API socket (default: [api] socket)")
    parser.add_argument("--wait-s", type=_positive_seconds, default=None,
                        help="how long to wait for the daemon's answer (default: past its worst case, from the "
                             "config: each libfprint reader's deletes, one after another)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import httpx

    from agent.errors import TransportError
    from agent.forget import CLEAR_TIMEOUT_S, forget_wait_s
    from agent.runtime import config_from_args

    config = config_from_args(args)
    if args.everyone and not args.reader:  # refused before the daemon is asked, naming this device's readers
        from agent.devices.supervisor import configured_devices
        from agent.forget import NoReaderNamed

        raise NoReaderNamed([name for name, section in configured_devices(config) if section.kind == "fprint"])
    socket_path = args.socket or str(config.api.socket)
    params = {"reader": args.reader} if args.reader else {}
    wait_s = args.wait_s or forget_wait_s(config) + (CLEAR_TIMEOUT_S if args.everyone else 0.0)
    try:
        # Each delete on a sensor is bounded by the reader's own timeout, reader after reader: the wait covers them.
        with httpx.Client(transport=httpx.HTTPTransport(uds=socket_path), base_url="http://agent",
                          timeout=httpx.Timeout(10.0, read=wait_s)) as api:
            answer = api.delete("/prints" if args.everyone else f"/prints/{args.subject}", params=params)
    except httpx.ReadTimeout:
        raise ForgetStillRunning(args.subject or "", wait_s, args.reader or "") from None
    except httpx.TransportError as exc:
        if _nobody_listens(str(socket_path)):
            return _forget_without_the_daemon(config, args.subject or "", args.reader or "", str(socket_path))
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
    if "cleared" in body:
        print(body["cleared"]["message"])
    for line in body["forgotten"]:
        print(line["message"])
    return 0 if body["complete"] else 2


def _nobody_listens(socket_path: str) -> bool:
    """No socket at the path, or one nobody accepts on (a daemon that died): a daemon that may be running is
    only unreachable to this user (the socket's group) and is never worked around."""
    import errno
    import os
    import socket

    if not os.path.exists(socket_path):
        return True
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(socket_path)
        except OSError as exc:
            return exc.errno == errno.ECONNREFUSED
    return False  # it accepts now: a daemon started meanwhile, which the next try reaches


class ForgetWithoutDaemonFailed(AgentError):
    """No daemon answered, and the erasure without it could not start (this user may not open the state
    directory or read the agent's key): said with both ways out."""

    def __init__(self, socket_path: str, cause: AgentError) -> None:
        super().__init__(
            f"no agent answers at {socket_path}, and forgetting without it failed: {cause.message}",
            f"{cause.fix + '; or ' if cause.fix else ''}start the agent (systemctl start capture-agent) and run the "
            "same forget again",
        )


def _forget_without_the_daemon(config: Any, subject: str, reader: str, socket_path: str) -> int:
    """Erase here, as the daemon would (agent.forget_here); the exit codes and lines are the daemon path's.
    ``subject`` empty: a clearing of ``reader`` (--everyone)."""
    import asyncio

    from agent.devices.prints import PrintStoreError
    from agent.forget import ForgetNotAudited, NoSuchReader, NothingToForget
    from agent.forget_here import DaemonNotAnswering, clear_here, forget_here
    from agent.statelock import FORGET, StateDirLocked

    print("the agent is not running: erasing here, without it (its audit trail delivers the events at its next "
          "start)", file=sys.stderr)
    try:
        if subject:
            done = asyncio.run(forget_here(config, subject, reader))
        else:
            cleared, done = asyncio.run(clear_here(config, reader))
            print(cleared.message())
            for forgotten in done:
                print(forgotten.message())
            return 0 if cleared.complete and all(f.complete for f in done) else 2
    except StateDirLocked as exc:  # a daemon holds the state directory but does not answer there
        if exc.holder == FORGET:  # another forget erasing without the daemon: no daemon to reach or restart
            raise AgentError(f"nothing was erased: {exc.message}",
                             "wait for it to end, then run the same forget again") from None
        raise DaemonNotAnswering(socket_path, exc) from None
    except NothingToForget as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        print(f"fix: {exc.fix}", file=sys.stderr)
        return 1
    except (NoSuchReader, ForgetNotAudited, PrintStoreError):  # what the daemon would answer too: said as it is
        raise  # (a store that does not decrypt: starting the agent would not help, so it is not offered)
    except AgentError as exc:
        raise ForgetWithoutDaemonFailed(socket_path, exc) from None
    for forgotten in done:
        print(forgotten.message())
    return 0 if all(f.complete for f in done) else 2
