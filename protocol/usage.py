"""How both command lines take a usage mistake: a typed error naming the command's own ``--help`` as its fix.

argparse's own report is its usage block and ``PROG: error: ...``, printed and
exited from inside the parser: no fix, and unlike everything else an installer
or an operator reads from ``capture-agent`` and ``capture-verifier`` (README:
every error names its fix). Here the parser raises :class:`UsageMistake`
instead, and each CLI prints it as it prints its other errors (exit code 2, as
argparse's). One rule for both, so the two cannot drift; here because the agent
and the verifier may not import each other (DESIGN.md). Pure: it prints nothing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Sequence
from typing import Any, NoReturn


class UsageMistake(Exception):
    """A command line argparse refused: ``message`` is argparse's, ``fix`` names the help that shows it right."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


class _DescribedSubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands whose own ``--help`` says what they do: their ``help`` line, when no description is given.

    Why: `capture-verifier device allow --help` (and most of the verifier's) showed its usage and options only;
    what the command does was in the parent's list alone, which `COMMAND --help` does not print.
    """

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if kwargs.get("help") and not kwargs.get("description"):
            kwargs["description"] = kwargs["help"][:1].upper() + kwargs["help"][1:] + "."
        return super().add_parser(name, **kwargs)


class UsageParser(argparse.ArgumentParser):
    """argparse, raising :class:`UsageMistake` for a usage error instead of printing its usage block and exiting.

    ``add_parser`` makes subparsers of the parser's own class, so every command's
    mistakes come here, and the fix names that command's ``--help``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _DescribedSubParsers)
        self.set_defaults(command_prog=self.prog)  # the deepest command given wins: see parse_arguments

    def error(self, message: str) -> NoReturn:
        raise mistake(self.prog, message, lists_commands=self._subparsers is not None)


def mistake(prog: str, message: str, *, lists_commands: bool = False) -> UsageMistake:
    """The usage error of command ``prog``, its fix the help that shows it right."""
    shows = "lists its commands" if lists_commands else "shows its options and arguments"
    return UsageMistake(message, f"`{prog} --help` {shows}")


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line parsed; words no command takes are a usage error of the command that was given.

    argparse reports them from the top parser (``unrecognized arguments``), whose
    help does not show the command's options: the fix names the command's own
    ``--help`` (its parser left its prog in the namespace).
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        raise mistake(getattr(args, "command_prog", parser.prog), f"unrecognized arguments: {' '.join(extra)}")
    return args


DISTRIBUTION = "capture-agent"  # pyproject.toml's [project] name: all three commands ship in it


def installed_version() -> str:
    """The installed distribution's version, or a word saying there is none (run from a source tree)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown: not installed, run from a source tree)"


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: what a bug report, an upgrade or a check of what systemd runs asks first.

    Why: `capture-agent --version` was "error: the following arguments are required: COMMAND", which
    says nothing of the option typed; the same on capture-verifier and capture-simulator.
    """
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}",
                        help="print the installed version and exit")
