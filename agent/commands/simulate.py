"""`capture-agent simulate zfm --model r307`: run a simulated reader for a test rig.

The agent may import drivers but not simulators (DESIGN.md layering), so this
command does not load the simulator into the agent: it replaces this process
with ``python -m simulators.cli`` (the ``capture-simulator`` console script)
and passes every argument on. Ctrl-C and SIGTERM then reach the simulator
directly, and it prints its port as one JSON line exactly as that script does.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from agent.errors import AgentError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "simulate",
        help="run a simulated reader (e.g. `simulate zfm --model r307`); prints its port as JSON",
        description="Same arguments as `capture-simulator`; see `capture-agent simulate zfm --help`.",
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for capture-simulator")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("simulators") is None:
        raise AgentError(
            "the simulators package is not installed here",
            fix="install the project with its simulators (pip install -e . from the source tree) on the test rig",
        )
    argv = [sys.executable, "-m", "simulators.cli", *args.args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # noqa: S606 - a fixed interpreter and module, arguments as a list
    return 0  # not reached
