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
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from agent.errors import AgentError
from agent.options import add_common_arguments

# Modules under agent.commands, each with `register(subparsers)`.
COMMAND_MODULES: tuple[str, ...] = (
    "agent.commands.provision",
    "agent.commands.doctor",
    "agent.commands.renew",
    "agent.commands.health",
    "agent.commands.run",
    "agent.commands.devices",
    "agent.commands.sessions",
    "agent.commands.simulate",
)


class AgentParser(argparse.ArgumentParser):
    """argparse, with a usage error printed as every other error of this CLI: an `error:` line and a `fix:` line.

    argparse's own report is its usage block and `capture-agent ...: error: ...`,
    which names no fix and reads unlike everything else an installer sees (README:
    every error names its fix). ``add_parser`` makes subparsers of the parser's
    own class, so every command's mistakes come here and the fix names that
    command's `--help`. Exit code 2, as argparse's. (The verifier has its own
    copy: agent/ and verifier/ may not import each other, and protocol/ is the
    wire protocol's, not a place for command lines.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(command_prog=self.prog)  # the deepest command given wins: see parse_arguments

    def error(self, message: str) -> NoReturn:
        usage_error(self.prog, message, lists_commands=self._subparsers is not None)


def usage_error(prog: str, message: str, *, lists_commands: bool = False) -> NoReturn:
    """Print a command line's mistake and the help that shows it right; exit 2."""
    shows = "shows its options and commands" if lists_commands else "shows its options and arguments"
    print(f"error: {message}", file=sys.stderr)
    print(f"fix: `{prog} --help` {shows}", file=sys.stderr)
    raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = AgentParser(
        prog="capture-agent",
        description="Edge capture agent: biometric templates made on the device, "
        "sent to the verifier over mutual-TLS HTTP/2.",
    )
    add_common_arguments(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line parsed; words no command takes are a usage error of the command that was given.

    argparse reports them from the top parser (`capture-agent: error:
    unrecognized arguments`), whose help does not show the command's options: the
    fix names the command's own `--help` (its parser left its prog in the namespace).
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        usage_error(getattr(args, "command_prog", parser.prog), f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(build_parser(), argv)
    try:
        return int(args.run(args) or 0)
    except AgentError as exc:
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
