"""`capture-agent provision`: first identity for a device (installer)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from agent.errors import ProvisioningError
from agent.runtime import add_common_arguments, config_from_args


def _fingerprint(text: str) -> str:
    """An argparse type: 64 hex digits once colons and spaces are taken out (as select_ca reads it).

    Why at parsing: the shape was checked after the identity already there (so "use --force" came first)
    and after the verifier's CA had been fetched (so a stopped verifier was named first): a typo took
    up to three runs to be told.
    """
    from agent.identity import fingerprint_shape_fault

    fault = fingerprint_shape_fault(text)
    if fault is not None:
        raise argparse.ArgumentTypeError(f"{fault}: copy the 64 hex digits `capture-verifier pki init` or "
                                         "`token new` printed")
    return text


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "provision",
        help="generate the device key and get its certificate with a one-time token",
        description="Fetch the verifier's CA (checked against --ca-fingerprint), generate an EC P-256 "
        "key on this device, enroll it with EST using the one-time token, and store key and "
        "certificate in the state directory.",
    )
    add_common_arguments(parser)
    parser.add_argument("--token", required=True, help="one-time bootstrap token; '-' reads it from stdin")
    parser.add_argument(
        "--ca-fingerprint",
        required=True,
        type=_fingerprint,
        help="SHA-256 fingerprint of the verifier's CA, as printed by `capture-verifier pki init`",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an identity this device already has (it is named before anything is done)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from agent.provision import provision

    config = config_from_args(args)
    token = sys.stdin.readline().strip() if args.token == "-" else args.token  # noqa: S105
    if not token and args.token == "-":  # noqa: S105
        raise ProvisioningError(
            "--token - reads the token from standard input, and it gave none (an empty line, or nothing piped)",
            fix="pipe it in: `printf '%s\\n' TOKEN | capture-agent provision ... --token -`, with the TOKEN "
            "`capture-verifier token new` printed (it prints this line)",
        )
    if not token:
        raise ProvisioningError("the token is empty", fix="pass the token printed by `capture-verifier token new`")
    if args.token != "-":  # noqa: S105
        _warn_token_in_command_line()
    result = asyncio.run(provision(config, token, args.ca_fingerprint, force=args.force))
    ident = result.identity
    print(f"provisioned device {ident.device_id}")
    if result.replaced:
        print(f"  replaced           {result.replaced}")
    print(f"  certificate serial {ident.serial_hex}, valid until {ident.not_after:%Y-%m-%d %H:%M} UTC")
    print(f"  CA fingerprint     {result.ca_fingerprint}")
    print(f"  state directory    {config.agent.state_dir}")
    if result.clock_warning is not None:
        print(f"warning: {result.clock_warning.message}", file=sys.stderr)
        print(f"fix: {result.clock_warning.fix}", file=sys.stderr)
    return 0


def _warn_token_in_command_line() -> None:
    """Say that a token typed as an argument could be read; provisioning goes on (the token is single-use).

    Why: the README's recipes keep it on standard input, since a command line is readable by every
    local user (/proc/PID/cmdline) while it runs and ``systemd-run`` writes it to the journal; a token
    typed as an argument was taken without a word, so the installer never learnt the habit.
    """
    print(
        "warning: the token is in this command line, which every local user can read while it runs "
        "(/proc/PID/cmdline; under systemd-run, the journal too): next time give it on standard input, "
        "`printf '%s\\n' TOKEN | capture-agent provision ... --token -` (printf is built into the shell)",
        file=sys.stderr,
    )
