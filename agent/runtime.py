"""What every command needs first: the config, the logs, the identity, a client."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from agent.client import VerifierClient
from agent.config import PROVISIONED_ORIGIN, AgentConfig, load_config
from agent.errors import ConfigError
from agent.identity import VERIFIER_FILE, DeviceIdentity, IdentityStore, provisioned_verifier
from agent.keystore import load_kek
from agent.logs import configure_logging
from agent.options import add_common_arguments

__all__ = [
    "add_common_arguments",
    "config_from_args",
    "load_identity",
    "open_client",
    "resolve_config",
    "with_provisioned_verifier",
]


def resolve_config(args: argparse.Namespace) -> AgentConfig:
    """The config file, the CLI overrides (validated like the file), then the provisioned verifier URL.

    Also what the daemon's SIGHUP reload runs, so a reload keeps ``--state-dir`` and ``--verifier``.
    """
    config = load_config(args.config)
    # A bad value typed on the command line is named as typed (--verifier), not as a key of a file.
    if getattr(args, "state_dir", None):
        config = config.with_overrides({"agent.state_dir": "--state-dir"}, agent={"state_dir": args.state_dir})
    if getattr(args, "verifier", None):
        config = config.with_overrides({"verifier.url": "--verifier"}, verifier={"url": args.verifier})
        config = replace(config, verifier_url_origin="--verifier")
    return with_provisioned_verifier(config)


def with_provisioned_verifier(config: AgentConfig) -> AgentConfig:
    """``config`` with the verifier URL the device was provisioned with, when neither file nor CLI names one.

    Why: the README's recipe provisions with ``--verifier URL`` on the command line and then
    starts the daemon, whose config may have no ``[verifier] url``; without this the daemon
    would call the built-in default (127.0.0.1:8443) and never reach the verifier that issued
    its certificate. A URL in the file or on the command line still wins (a verifier that moved).
    """
    if config.verifier_url_origin != AgentConfig.verifier_url_origin:
        return config
    try:
        kept = provisioned_verifier(config)
    except ConfigError as exc:
        stored = IdentityStore(config.agent.state_dir).current / VERIFIER_FILE
        raise ConfigError(
            f"the verifier URL kept at provisioning is refused: {exc.message}",
            fix=f"set [verifier] url in the config file (it wins over {stored}), or re-provision with --force",
        ) from None
    if kept is None:
        return config
    return replace(kept.config, verifier_url_origin=f"{PROVISIONED_ORIGIN}, kept in {kept.kept_in}")


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """Load the config (:func:`resolve_config`) and set up logs."""
    config = resolve_config(args)
    configure_logging(config.logging.level, config.logging.format)
    return config


def load_identity(config: AgentConfig) -> DeviceIdentity:
    store = IdentityStore(config.agent.state_dir)
    try:
        os.lstat(config.agent.state_dir)
    except FileNotFoundError:
        # Said before the keyring is asked: a mistyped --state-dir (or a device never provisioned) read "no
        # key-encryption key ... in the file-insecure-dev keyring", as if the keyring were what was wrong.
        raise store.no_identity("the folder does not exist") from None
    except NotADirectoryError as exc:  # a part of the path is a file: named as `run` names it, not "not there"
        raise store.access_error(exc, "read the device identity") from None
    except OSError:
        pass  # there but not reachable (a folder above it this user may not enter): the loads below name why
    kek = load_kek(config)
    return store.load(kek.encode())


def open_client(config: AgentConfig) -> VerifierClient:
    return VerifierClient(config, load_identity(config))
