"""Command-line options shared by every `capture-agent` command (kept light: no heavy imports)."""

from __future__ import annotations

import argparse


def add_common_arguments(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    """The options every command takes, before or after the subcommand.

    Why twice: an installer types ``capture-agent doctor --config FILE`` as often
    as ``capture-agent --config FILE doctor``. The top-level parser holds the
    defaults (None); each subcommand's copy uses ``SUPPRESS``, so it sets the
    value only when typed and never hides one given before the subcommand.
    """
    default = None if top_level else argparse.SUPPRESS
    parser.add_argument(
        "--config",
        "-c",
        default=default,
        help="TOML configuration file (default: $CAPTURE_AGENT_CONFIG or "
        "/etc/capture-agent/agent.toml when it exists, else built-in defaults)",
    )
    parser.add_argument("--state-dir", default=default, help="override [agent] state_dir")
    parser.add_argument(
        "--verifier",
        default=default,
        help="override [verifier] url, e.g. https://HOST:8443 (no port: 8443)",
    )
