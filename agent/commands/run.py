"""`capture-agent run`: the daemon (systemd Type=notify)."""

from __future__ import annotations

import argparse
import asyncio

from agent.runtime import add_common_arguments, config_from_args, resolve_config


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run",
        help="run the agent daemon (systemd Type=notify)",
        description="The daemon: delivers the audit trail, renews the certificate on schedule, drives the "
        "configured reader and serves the local API for kiosk apps. Under systemd it sends READY=1 once up "
        "and watchdog pings; SIGHUP reloads the config, SIGTERM drains and stops. One daemon per state "
        "directory: a second one is refused and told which process holds it.",
    )
    add_common_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import resource

    from agent.daemon import AgentDaemon
    from agent.statelock import hold_state_dir

    # No core file, whatever the shell's `ulimit -c`: a native crash would write frames, templates and the
    # decrypted device key to disk. The unit sets LimitCORE=0; this covers a daemon started another way.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    config = config_from_args(args)
    with hold_state_dir(config.agent.state_dir):  # one daemon per state directory
        asyncio.run(AgentDaemon(config, args.config, loader=lambda: resolve_config(args)).run())
    return 0
