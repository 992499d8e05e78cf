"""What every command needs first: the config, the logs, the identity, a client."""

from __future__ import annotations

import argparse
from typing import Any

from agent.client import VerifierClient
from agent.config import AgentConfig, load_config
from agent.identity import DeviceIdentity, IdentityStore
from agent.keystore import load_kek
from agent.logs import configure_logging
from agent.options import add_common_arguments

__all__ = ["add_common_arguments", "config_from_args", "load_identity", "open_client"]


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """Load the config, apply CLI overrides (validated like the file), set up logs."""
    config = load_config(args.config)
    overrides: dict[str, dict[str, Any]] = {}
    if getattr(args, "state_dir", None):
        overrides["agent"] = {"state_dir": args.state_dir}
    if getattr(args, "verifier", None):
        overrides["verifier"] = {"url": args.verifier}
    if overrides:
        config = config.with_overrides(**overrides)
    configure_logging(config.logging.level, config.logging.format)
    return config


def load_identity(config: AgentConfig) -> DeviceIdentity:
    kek = load_kek(config)
    return IdentityStore(config.agent.state_dir).load(kek.encode())


def open_client(config: AgentConfig) -> VerifierClient:
    return VerifierClient(config, load_identity(config))
