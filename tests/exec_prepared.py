"""Prepare this process as a test's command needs it, then become that command (exec).

``python tests/exec_prepared.py STEP ... -- COMMAND ...``. What a ``preexec_fn`` did, without one. Why: a
``preexec_fn`` runs Python in the forked copy of the test process before its exec, which Python's documentation
warns may deadlock when that process has other threads (a worker of the suite has: servers and device owners of
its earlier tests), and it makes subprocess fork the whole process rather than vfork it. Here the steps run in a
fresh interpreter that has no other thread, and its exec keeps what they set.

Steps:
  sigint-default   SIGINT at its default, as at a terminal. A suite run as a background job (``make test &``, a CI
                   runner's) inherits it ignored, and Python then installs no KeyboardInterrupt handler, so the
                   command never sees the Ctrl-C a test sends.
  terminal         a session of its own whose controlling terminal is standard input (a pseudo-terminal), with
                   SIGHUP at its default (not ignored, under nohup), as a login shell starts it.
  core-unlimited   core files allowed up to the hard limit (``ulimit -c unlimited``).
"""

from __future__ import annotations

import fcntl
import os
import resource
import signal
import sys
import termios
from pathlib import Path

HERE = Path(__file__)


def prepared(*steps: str) -> list[str]:
    """The argv prefix that runs a command after ``steps`` (see the module docstring)."""
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise ValueError(f"no step {sorted(unknown)} (one of {', '.join(STEPS)})")
    return [sys.executable, str(HERE), *steps, "--"]


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _terminal() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _core_unlimited() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


STEPS = {"sigint-default": _sigint_default, "terminal": _terminal, "core-unlimited": _core_unlimited}


def main(argv: list[str]) -> None:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        raise SystemExit("exec_prepared: give the steps, then -- and the command")
    split = argv.index("--")
    for step in argv[:split]:
        STEPS[step]()
    command = argv[split + 1 :]
    os.execvp(command[0], command)  # noqa: S606 (becoming the command, its argv as the test gave it)


if __name__ == "__main__":
    main(sys.argv[1:])
