"""`capture-agent`: the command line for installers, end users and test rigs.

Each subcommand lives in its own module under ``agent.commands`` and registers
itself with :func:`register`, so adding a command never means editing a long
``if`` chain here, and heavy imports (OpenCV, numpy, httpx) load only when the
command that needs them runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import shlex
import sys
from collections.abc import Sequence

from agent.errors import AgentError, NoIdentityError
from agent.options import add_common_arguments
from protocol.usage import UsageMistake, UsageParser, add_version, parse_arguments

# Modules under agent.commands, each with `register(subparsers)`.
COMMAND_MODULES: tuple[str, ...] = (
    "agent.commands.provision",
    "agent.commands.doctor",
    "agent.commands.renew",
    "agent.commands.health",
    "agent.commands.run",
    "agent.commands.devices",
    "agent.commands.sessions",
    "agent.commands.forget",
    "agent.commands.simulate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="capture-agent",
        description="Edge capture agent: biometric templates made on the device, "
        "sent to the verifier over mutual-TLS HTTP/2.",
    )
    add_version(parser)
    add_common_arguments(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args: argparse.Namespace | None = None
    try:
        args = parse_arguments(build_parser(), argv)
        return int(args.run(args) or 0)
    except (AgentError, UsageMistake) as exc:  # a usage mistake is said as every other error: message and fix
        if isinstance(exc, NoIdentityError) and args is not None:
            exc = exc.typed_with(_location_options(args))
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.fix:
            print(f"fix: {exc.fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        if not _stdout_gone():  # a socket's or a child's pipe: a real failure, not `| head`
            raise
        # `capture-agent doctor | head`: the reader left, which is no error of ours. Python would print a
        # second traceback flushing stdout at exit: point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell pipeline expects


def _location_options(args: argparse.Namespace) -> str:
    """The ``--config`` and ``--state-dir`` typed, for a line to type next that must look at the same place."""
    typed = [(flag, getattr(args, name, None)) for flag, name in (("--config", "config"), ("--state-dir", "state_dir"))]
    return "".join(f" {flag} {shlex.quote(str(value))}" for flag, value in typed if value)


def _stdout_gone() -> bool:
    """Whether standard output is a pipe or socket whose reader has left (poll reports an error on it)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


if __name__ == "__main__":
    sys.exit(main())
